import type { Redis } from 'ioredis'

/** Takes the lease when free, extends it when ours; 1 when this replica holds it after the call. */
const HOLD = `local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`

export interface LeasesOptions {
  redis: Redis
  prefix: string
  /** This replica's id: the holder's name in Redis. */
  holder: string
}

/**
 * Work one replica at a time drives — a canary's steps (issue 11) — held with a renewable lease in Redis
 * (`<prefix>lease:<key>`, the holder's id, a ttl). The holder renews by asking again before the ttl runs out;
 * when it stops asking (stopped, killed, cut off from Redis) another replica gets it after the ttl.
 */
export class Leases {
  readonly #o: LeasesOptions

  constructor(o: LeasesOptions) {
    this.#o = o
  }

  /** Whether this replica holds `key` for the next `ttlMs` (taken or extended now); false when Redis does not answer. */
  async hold(key: string, ttlMs: number): Promise<boolean> {
    try {
      return await this.#o.redis.eval(HOLD, 1, `${this.#o.prefix}lease:${key}`, this.#o.holder, String(Math.max(1, Math.round(ttlMs)))) === 1
    } catch {
      return false
    }
  }

  async release(key: string): Promise<void> {
    await this.#o.redis.eval(RELEASE, 1, `${this.#o.prefix}lease:${key}`, this.#o.holder).catch(() => {})
  }
}
