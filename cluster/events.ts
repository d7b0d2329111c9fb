import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { PlatformEvent } from '../common/events.js'

export interface SharedEventsOptions {
  redis: Redis
  prefix: string
  log: Logger
  /** Events kept in the stream (approximately: XADD MAXLEN ~). @default 10000 */
  maxLen?: number
}

type Entry = [id: string, fields: string[]]

/**
 * The platform's events across replicas (issue 11): every replica appends its events to the stream
 * `<prefix>events`, and `GET /v1/events` reads them from there, so a deploy on one replica and a crash on
 * another are one list. An event's id is its stream id as a number (`ms × 1000 + seq`): increasing across
 * replicas, so `?since=` works whichever replica is asked. An append Redis refuses is kept in the replica's
 * own ring only (what the API falls back to while Redis is away).
 */
export class SharedEvents {
  readonly #o: SharedEventsOptions
  readonly #key: string
  #warned = false

  constructor(o: SharedEventsOptions) {
    this.#o = o
    this.#key = `${o.prefix}events`
  }

  append(e: PlatformEvent): void {
    const { id: _local, ...rest } = e
    this.#o.redis.xadd(this.#key, 'MAXLEN', '~', String(this.#o.maxLen ?? 10_000), '*', 'e', JSON.stringify(rest)).then(() => { this.#warned = false }, (err: unknown) => {
      if (!this.#warned) this.#o.log.warn({ err }, 'an event could not be added to the shared stream (kept on this replica only)')
      this.#warned = true
    })
  }

  /** Newest last, as EventLog.list; throws when Redis does not answer. */
  async list(opts: { since?: number | undefined; fn?: string | undefined; limit?: number | undefined }): Promise<PlatformEvent[]> {
    const limit = opts.limit ?? 200
    const r = this.#o.redis
    let entries: Entry[]
    if (opts.since !== undefined) {
      // Oldest first from just after `since`: the ones a poller has not seen.
      entries = await r.xrange(this.#key, `(${streamId(opts.since)}`, '+', 'COUNT', String(opts.fn === undefined ? limit : this.#o.maxLen ?? 10_000)) as Entry[]
    } else {
      entries = (await r.xrevrange(this.#key, '+', '-', 'COUNT', String(opts.fn === undefined ? limit : this.#o.maxLen ?? 10_000)) as Entry[]).reverse()
    }
    let events = entries.map(toEvent).filter((e): e is PlatformEvent => e !== undefined)
    if (opts.fn !== undefined) events = events.filter((e) => e.function === opts.fn)
    return opts.since !== undefined ? events.slice(0, limit) : events.slice(-limit)
  }
}

/** A numeric event id back to the stream id it was made from. */
function streamId(id: number): string {
  if (!Number.isSafeInteger(id) || id < 0) return '0-0'
  return `${Math.floor(id / 1000)}-${id % 1000}`
}

function toEvent([id, fields]: Entry): PlatformEvent | undefined {
  const text = fields[fields.indexOf('e') + 1]
  const [ms, seq] = id.split('-').map(Number) as [number, number]
  if (text === undefined || seq >= 1000) return undefined
  try {
    return { ...JSON.parse(text) as Omit<PlatformEvent, 'id'>, id: ms * 1000 + seq }
  } catch {
    return undefined
  }
}
