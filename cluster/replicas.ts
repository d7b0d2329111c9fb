import type { Redis } from 'ioredis'
import type { Logger } from 'pino'

export interface ReplicasOptions {
  redis: Redis
  prefix: string
  /** This replica's id. */
  id: string
  log: Logger
  /** How often this replica says it is alive. @default 2000 */
  heartbeatMs?: number
  /** A replica not heard from for this long is no longer counted. @default 10000 */
  ttlMs?: number
  /** The live replicas changed (one joined, stopped or went silent). */
  onChange?: (ids: readonly string[]) => void
}

/**
 * Which replicas of one Redis are alive (issue 11): each writes its heartbeat into the sorted set
 * `<prefix>replicas` (score: the time) and drops the entries older than the ttl, so a killed replica stops
 * counting within `ttlMs`. The list is what a function's `maxInstances` is divided by (see share()).
 */
export class Replicas {
  readonly #o: ReplicasOptions
  #ids: readonly string[]
  #timer: NodeJS.Timeout | undefined

  constructor(o: ReplicasOptions) {
    this.#o = o
    this.#ids = [o.id]
  }

  /** Beats once (so the first count is known), then every heartbeatMs. */
  async start(): Promise<void> {
    await this.#beat()
    this.#timer = setInterval(() => { void this.#beat() }, this.#o.heartbeatMs ?? 2000)
    this.#timer.unref()
  }

  /** The live replicas' ids, sorted (this one always among them). */
  get ids(): readonly string[] {
    return this.#ids
  }

  /**
   * This replica's part of a cluster-wide cap: the cap split as evenly as whole numbers allow, the remainder
   * going to the first replicas in id order, so the parts add up to the cap; at least 1 (a cap below the
   * number of replicas lets each replica run one instance).
   */
  share(cap: number): number {
    const n = this.#ids.length
    const rank = Math.max(0, this.#ids.indexOf(this.#o.id))
    return Math.max(1, Math.floor(cap / n) + (rank < cap % n ? 1 : 0))
  }

  /** Leaves the set at once (a clean stop), so the others take over its share without waiting for the ttl. */
  async stop(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    await this.#o.redis.zrem(this.#key(), this.#o.id).catch(() => {})
  }

  #key(): string {
    return `${this.#o.prefix}replicas`
  }

  async #beat(): Promise<void> {
    const now = Date.now()
    const key = this.#key()
    try {
      const got = await this.#o.redis.multi()
        .zadd(key, now, this.#o.id)
        .zremrangebyscore(key, '-inf', now - (this.#o.ttlMs ?? 10_000))
        .zrange(key, '0', '-1')
        .exec()
      const ids = (got?.[2]?.[1] as string[] | undefined ?? [this.#o.id]).slice().sort()
      if (ids.join(',') !== this.#ids.join(',')) {
        this.#ids = ids
        this.#o.log.info({ replicas: ids.length }, 'replicas changed')
        this.#o.onChange?.(ids)
      }
    } catch {
      // Redis away: the last count stands until it answers again.
    }
  }
}
