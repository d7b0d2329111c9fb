/** One platform event (`GET /v1/events`): load-guard actions, recycles, crashes, deploys. */
export interface PlatformEvent {
  id: number
  at: string
  type: string
  function?: string | undefined
  instance?: string | undefined
  message: string
  /** The numbers behind the event (e.g. the cpu usage that triggered a throttle). */
  data?: Record<string, unknown> | undefined
  /** The replica it happened on (several replicas on one Redis, issue 11). */
  replica?: string | undefined
}

export interface EventLogOptions {
  /** Stamped on every event as `replica`. */
  replica?: string | undefined
  /** Told every event as it is added (the shared event stream). */
  sink?: ((e: PlatformEvent) => void) | undefined
}

/** A bounded in-memory ring of recent events; the oldest fall off. */
export class EventLog {
  readonly #capacity: number
  readonly #items: PlatformEvent[] = []
  readonly #o: EventLogOptions
  #next = 1

  constructor(capacity = 1000, options: EventLogOptions = {}) {
    this.#capacity = capacity
    this.#o = options
  }

  add(e: Omit<PlatformEvent, 'id' | 'at'>): PlatformEvent {
    const event: PlatformEvent = { id: this.#next++, at: new Date().toISOString(), ...e, ...(this.#o.replica === undefined ? {} : { replica: this.#o.replica }) }
    this.#items.push(event)
    if (this.#items.length > this.#capacity) this.#items.splice(0, this.#items.length - this.#capacity)
    this.#o.sink?.(event)
    return event
  }

  /** Newest last; `since` filters to ids above it; `fn` to one function. */
  list(opts: { since?: number; fn?: string; limit?: number } = {}): PlatformEvent[] {
    let out = this.#items
    if (opts.since !== undefined) out = out.filter((e) => e.id > (opts.since ?? 0))
    if (opts.fn !== undefined) out = out.filter((e) => e.function === opts.fn)
    return out.slice(-(opts.limit ?? 200))
  }
}
