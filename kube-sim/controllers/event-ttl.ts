/**
 * Events expire (issue 10), as the real API server's (etcd lease, `--event-ttl`, 1 h by default): without it a
 * long-running stand-in — a bench creating thousands of pods — would keep every Scheduled/Started/Killing
 * event forever. Events older than `ttlMs` are deleted by a sweep once a minute, and the oldest go first when
 * more than `maxEvents` are kept.
 */
import type { ObjectStore } from '../types.js'
import type { ControllerOptions } from './queue.js'
import { type Kinds, isApiError, splitKey } from './shared.js'

export interface EventTtlOptions extends ControllerOptions {
  /** @default 3_600_000 (1 h) */
  ttlMs?: number
  /** @default 10_000 */
  maxEvents?: number
}

export class EventTtl {
  readonly #store: ObjectStore
  readonly #kinds: Kinds
  readonly #ttlMs: number
  readonly #max: number
  /** Keys in creation order with when each was seen. */
  readonly #seen = new Map<string, number>()
  #stopWatch: (() => void) | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(opts: EventTtlOptions) {
    this.#store = opts.store
    this.#kinds = opts.kinds
    this.#ttlMs = opts.ttlMs ?? 3_600_000
    this.#max = opts.maxEvents ?? 10_000
  }

  start(): void {
    this.#stopWatch = this.#store.watch(this.#kinds.event, {}, (ev) => {
      const key = `${String(ev.object.metadata.namespace)}/${String(ev.object.metadata.name)}`
      if (ev.type === 'DELETED') this.#seen.delete(key)
      else if (ev.type === 'ADDED') {
        this.#seen.set(key, Date.now())
        if (this.#seen.size > this.#max) setImmediate(() => this.sweep())
      }
    })
    this.#timer = setInterval(() => this.sweep(), Math.min(60_000, this.#ttlMs))
    this.#timer.unref()
  }

  stop(): void {
    this.#stopWatch?.()
    if (this.#timer !== undefined) clearInterval(this.#timer)
  }

  sweep(now = Date.now()): void {
    for (const [key, at] of this.#seen) {
      if (at > now - this.#ttlMs && this.#seen.size <= this.#max) break
      this.#seen.delete(key)
      const { namespace, name } = splitKey(key)
      try {
        this.#store.delete(this.#kinds.event, namespace, name)
      } catch (err) {
        if (!isApiError(err, 404)) throw err
      }
    }
  }
}
