/**
 * The controllers' work queue (issue 10): keys (`namespace/name`) added by store watches are coalesced — a key
 * added ten times before it is handled is handled once — and handled one at a time, after the write that added
 * them has returned (a watch callback runs inside the store's write). A handler that throws is retried with a
 * per-key back-off (a 409 Conflict from a stale read is retried at once, anything else after 50 ms doubling
 * to 2 s); a later add of the key runs it sooner.
 */
import type { Logger } from 'pino'
import type { ObjectStore, ResourceType, WatchEvent } from '../types.js'
import type { Kinds } from './shared.js'

export interface WorkQueueOptions {
  /** Told of a handler's failure (not of conflicts, which are retried quietly). */
  onError?: (key: string, err: unknown) => void
  /** First retry delay after a failure. @default 50 */
  retryBaseMs?: number
  /** Longest retry delay. @default 2000 */
  retryMaxMs?: number
}

export class WorkQueue {
  readonly #handler: (key: string) => void | Promise<void>
  readonly #opts: WorkQueueOptions
  readonly #pending = new Set<string>()
  readonly #failures = new Map<string, number>()
  readonly #timers = new Map<string, NodeJS.Timeout>()
  #scheduled = false
  #running = false
  #stopped = false

  constructor(handler: (key: string) => void | Promise<void>, opts: WorkQueueOptions = {}) {
    this.#handler = handler
    this.#opts = opts
  }

  add(key: string): void {
    if (this.#stopped) return
    this.#pending.add(key)
    this.#schedule()
  }

  /** Adds the key after `ms` (a timed re-check); an earlier add still runs it at once. */
  addAfter(key: string, ms: number): void {
    if (this.#stopped || this.#timers.has(key)) return
    const timer = setTimeout(() => {
      this.#timers.delete(key)
      this.add(key)
    }, ms)
    timer.unref()
    this.#timers.set(key, timer)
  }

  /** Whether nothing is pending or running. */
  get idle(): boolean {
    return this.#pending.size === 0 && !this.#running
  }

  stop(): void {
    this.#stopped = true
    this.#pending.clear()
    for (const t of this.#timers.values()) clearTimeout(t)
    this.#timers.clear()
  }

  #schedule(): void {
    if (this.#scheduled || this.#running) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      void this.#drain()
    })
  }

  async #drain(): Promise<void> {
    if (this.#running) return
    this.#running = true
    try {
      while (!this.#stopped && this.#pending.size > 0) {
        const key = this.#pending.values().next().value as string
        this.#pending.delete(key)
        try {
          await this.#handler(key)
          this.#failures.delete(key)
        } catch (err) {
          this.#retry(key, err)
        }
      }
    } finally {
      this.#running = false
    }
    if (!this.#stopped && this.#pending.size > 0) this.#schedule()
  }

  #retry(key: string, err: unknown): void {
    if (this.#stopped) return
    const n = (this.#failures.get(key) ?? 0) + 1
    this.#failures.set(key, n)
    const conflict = (err as { code?: unknown }).code === 409
    if (!conflict) this.#opts.onError?.(key, err)
    if (conflict && n <= 5) {
      this.add(key)
      return
    }
    const base = this.#opts.retryBaseMs ?? 50
    this.addAfter(key, Math.min(this.#opts.retryMaxMs ?? 2000, base * 2 ** Math.min(n - 1, 10)))
  }
}

/** What a controller is given: the store it reads and writes in-process, its kinds, a log. */
export interface ControllerOptions {
  store: ObjectStore
  kinds: Kinds
  log?: Logger | undefined
}

/**
 * The shape every queue-driven controller of the stand-in shares: store watches feed keys into one coalescing work
 * queue whose handler is `sync(key)`; `stop()` ends the watches and the queue. A subclass says what it watches in
 * `start()` (through `watch`) and what a key means in `sync`.
 */
export abstract class QueueController {
  protected readonly store: ObjectStore
  protected readonly kinds: Kinds
  protected readonly queue: WorkQueue
  readonly #stops: Array<() => void> = []

  constructor(opts: ControllerOptions, what: string) {
    this.store = opts.store
    this.kinds = opts.kinds
    this.queue = new WorkQueue((key) => this.sync(key), {
      onError: (key, err) => opts.log?.warn({ key, err }, `${what} failed`),
    })
  }

  abstract start(): void
  abstract sync(key: string): void | Promise<void>

  /** Follows every object of `kind` for as long as the controller runs. */
  protected watch(kind: ResourceType, onEvent: (ev: WatchEvent) => void): void {
    this.#stops.push(this.store.watch(kind, {}, onEvent))
  }

  stop(): void {
    for (const s of this.#stops.splice(0)) s()
    this.queue.stop()
  }
}
