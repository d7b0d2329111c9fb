import type { Logger } from 'pino'
import { KdlError } from '../common/errors.js'
import { afterCall } from '../common/modes.js'
import type { Metrics } from '../common/metrics.js'
import type { StartKind } from '../common/types.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, RouteSpec } from '../executor/client.js'

/** One instance the router holds for a function, and the calls it carries now. */
export class Slot {
  readonly lease: Lease
  inflight = 0
  /** Calls ended on this instance (recycle mode retires it at `maxInvocations`). */
  calls = 0
  /** May take new calls (false after an ephemeral call, when retiring). */
  usable = true
  retiring = false
  /** Why the instance goes once its calls are done, when `retiring`. */
  retireAs: ReleaseOutcome = 'retire'
  removed = false
  lastUsed = Date.now()

  constructor(lease: Lease) {
    this.lease = lease
  }
}

export interface Granted {
  entry: RouteEntry
  slot: Slot
  kind: StartKind
}

interface Waiter {
  resolve: (g: Granted) => void
  reject: (err: unknown) => void
  timer: NodeJS.Timeout
  since: number
}

/** The router's view of one function version: its slots, its bounded queue, its pending acquisitions. */
export class RouteEntry {
  readonly spec: RouteSpec
  readonly slots: Slot[] = []
  readonly waiters: Waiter[] = []
  pending = 0
  stale = false
  readonly #metrics: Metrics
  /** Metric children bound to this function once, so a call does no label hashing. */
  readonly #byStatus = new Map<number, { inc(): void }>()
  readonly #duration: { observe(v: number): void }

  constructor(spec: RouteSpec, metrics: Metrics) {
    this.spec = spec
    this.#metrics = metrics
    this.#duration = metrics.invocationDuration.labels(spec.name)
  }

  countStatus(status: number): void {
    let c = this.#byStatus.get(status)
    if (c === undefined) {
      c = this.#metrics.invocations.labels(this.spec.name, String(status))
      this.#byStatus.set(status, c)
    }
    c.inc()
  }

  observeDuration(seconds: number): void {
    this.#duration.observe(seconds)
  }

  /** A slot with a free call, or undefined. The warm path: no allocation, no await. */
  pick(): Slot | undefined {
    const max = this.spec.concurrency
    for (const s of this.slots) if (s.usable && s.inflight < max) return s
    return undefined
  }
}

export interface InstanceTableOptions {
  executor: ExecutorClient
  log: Logger
  metrics: Metrics
  /** Calls a function may have waiting at once before 429 without waiting. @default 1000 */
  maxQueue?: number
  /** How often idle instances are looked for. @default 1000 */
  sweepMs?: number
}

/**
 * The router-local table of instances per function. A warm call is `get` + `pick` here and never
 * reaches the executor; the executor is asked only for a new instance or told when one is done with.
 */
export class InstanceTable {
  readonly #executor: ExecutorClient
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #maxQueue: number
  readonly #entries = new Map<string, RouteEntry>()
  readonly #resolving = new Map<string, Promise<RouteEntry>>()
  readonly #byInstance = new Map<string, { entry: RouteEntry; slot: Slot }>()
  readonly #unsubscribe: () => void
  readonly #sweeper: NodeJS.Timeout
  /** Calls in flight over all functions, and who waits for that to reach zero (shutdown). */
  #inflight = 0
  #idleWaiters: Array<() => void> = []

  constructor(opts: InstanceTableOptions) {
    this.#executor = opts.executor
    this.#log = opts.log
    this.#metrics = opts.metrics
    this.#maxQueue = opts.maxQueue ?? 1000
    this.#unsubscribe = opts.executor.subscribe((e) => this.#onExecutorEvent(e))
    this.#sweeper = setInterval(() => this.#sweepIdle(), opts.sweepMs ?? 1000)
    this.#sweeper.unref()
  }

  /** The warm path: a slot with a free call on an already-known function, synchronously. */
  tryWarm(name: string): Granted | undefined {
    const entry = this.#entries.get(name)
    return entry === undefined ? undefined : this.#takeFree(entry)
  }

  /**
   * Waits (bounded) for a slot: a freed one, a recycled one, or a newly acquired instance. `again`: the
   * call already had its turn and lost its instance before reaching it — it keeps its place, ahead of
   * the calls that queued after it (a free slot is its own, and it waits at the head of the queue).
   */
  async acquire(name: string, again = false): Promise<Granted> {
    const entry = this.#entries.get(name) ?? await this.#resolve(name)
    // Redeployed while this call looked the function up: a waiter on the old entry would never be
    // served (a stale entry acquires nothing) and be refused 429 at its queue timeout.
    if (entry.stale) return this.acquire(name, again)
    const free = again ? this.#takeAny(entry) : this.#takeFree(entry)
    if (free !== undefined) return free
    if (entry.waiters.length >= this.#maxQueue) throw saturated(entry.spec, `function "${name}" has ${entry.waiters.length} calls waiting`)
    return new Promise<Granted>((resolve, reject) => {
      const onTimeout = (): void => {
        const i = entry.waiters.indexOf(waiter)
        if (i < 0) return
        // A call whose own instance is being started is not saturated, only cold: it waits on (the
        // acquisition itself is bounded by the start timeout). Only calls beyond the capacity that is
        // on its way are refused.
        if (i < entry.pending * entry.spec.concurrency) {
          waiter.timer = setTimeout(onTimeout, entry.spec.queueTimeoutMs)
          return
        }
        entry.waiters.splice(i, 1)
        reject(saturated(entry.spec, `function "${name}" is saturated: no instance was free within ${entry.spec.queueTimeoutMs} ms`))
      }
      const waiter: Waiter = { resolve, reject, since: performance.now(), timer: setTimeout(onTimeout, entry.spec.queueTimeoutMs) }
      if (again) entry.waiters.unshift(waiter)
      else entry.waiters.push(waiter)
      this.#scale(entry)
    })
  }

  /**
   * A call on `slot` ended; `outcome` says whether the instance can still be trusted. The table applies
   * the persistence mode's decision (`afterCall`, common/modes.ts): the slot takes the next call at once,
   * or retires.
   */
  done(entry: RouteEntry, slot: Slot, outcome: ReleaseOutcome): void {
    slot.inflight--
    slot.calls++
    if (--this.#inflight === 0 && this.#idleWaiters.length > 0) for (const w of this.#idleWaiters.splice(0)) w()
    const now = Date.now()
    slot.lastUsed = now
    if (slot.removed) return
    if (outcome !== 'ok') {
      this.#remove(entry, slot, outcome)
      this.#scale(entry)
      return
    }
    if (slot.retiring || entry.stale) {
      if (slot.inflight === 0) this.#remove(entry, slot, slot.retireAs)
      this.#scale(entry)
      return
    }
    const next = afterCall(entry.spec, slot.calls, now - slot.lease.startedAt)
    if (next === 'keep') this.#serveWaiters(entry, slot, 'warm')
    else this.retire(entry, slot, next)
  }

  /** Takes no new call on `slot`; the instance goes once its calls in flight are done. */
  retire(entry: RouteEntry, slot: Slot, why: ReleaseOutcome): void {
    slot.usable = false
    slot.retiring = true
    slot.retireAs = why
    if (slot.inflight === 0 && !slot.removed) this.#remove(entry, slot, why)
    this.#scale(entry)
  }

  /** Slots and waiters per function (for /v1/pools and tests). */
  snapshot(): Array<{ function: string; version: number; instances: number; busy: number; waiting: number; pending: number }> {
    return [...this.#entries.values()].map((e) => ({
      function: e.spec.name, version: e.spec.version, instances: e.slots.length,
      busy: e.slots.filter((s) => s.inflight > 0).length, waiting: e.waiters.length, pending: e.pending,
    }))
  }

  /** Resolves once no call is in flight, or after `timeoutMs` (shutdown drains before it cuts). */
  whenIdle(timeoutMs: number): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs)
      this.#idleWaiters.push(() => { clearTimeout(timer); resolve() })
    })
  }

  close(): void {
    clearInterval(this.#sweeper)
    this.#unsubscribe()
    for (const entry of this.#entries.values()) {
      for (const w of entry.waiters.splice(0)) {
        clearTimeout(w.timer)
        w.reject(new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping'))
      }
    }
  }

  /** A free slot taken for a call, unless calls are already queued (they go first). */
  #takeFree(entry: RouteEntry): Granted | undefined {
    return entry.waiters.length > 0 ? undefined : this.#takeAny(entry)
  }

  /** A free slot taken for a call, queued calls or not. */
  #takeAny(entry: RouteEntry): Granted | undefined {
    const slot = entry.pick()
    if (slot === undefined) return undefined
    this.#use(entry, slot)
    return { entry, slot, kind: 'warm' }
  }

  #use(entry: RouteEntry, slot: Slot): void {
    slot.inflight++
    this.#inflight++
    if (entry.spec.mode === 'ephemeral') slot.usable = false
  }

  #resolve(name: string): Promise<RouteEntry> {
    let p = this.#resolving.get(name)
    if (p === undefined) {
      p = this.#executor.resolve(name).then((spec) => {
        const entry = this.#entries.get(name) ?? new RouteEntry(spec, this.#metrics)
        this.#entries.set(name, entry)
        return entry
      }).finally(() => this.#resolving.delete(name))
      this.#resolving.set(name, p)
    }
    return p
  }

  /**
   * Asks for as many new instances as the waiting calls need — never more than the capacity that is
   * already coming (pending acquisitions) covers, never beyond `maxInstances` (retiring slots do not count).
   */
  #scale(entry: RouteEntry): void {
    if (entry.stale) return
    const { concurrency, maxInstances } = entry.spec
    let live = 0
    for (const s of entry.slots) if (!s.retiring) live++
    while (entry.waiters.length > entry.pending * concurrency && live + entry.pending < maxInstances) {
      entry.pending++
      this.#executor.acquire(entry.spec.name, entry.spec.version).then(
        (lease) => this.#onLease(entry, lease),
        (err: unknown) => this.#onAcquireFailed(entry, err),
      )
    }
  }

  #onLease(entry: RouteEntry, lease: Lease): void {
    entry.pending--
    if (entry.stale) {
      this.#release(lease, 'retire')
      return
    }
    const slot = new Slot(lease)
    entry.slots.push(slot)
    this.#byInstance.set(lease.instanceId, { entry, slot })
    this.#serveWaiters(entry, slot, lease.kind)
    // Not needed by anyone now (the waiters timed out): keep it; the idle sweep returns it later.
  }

  #onAcquireFailed(entry: RouteEntry, err: unknown): void {
    entry.pending--
    this.#log.warn({ err, fn: entry.spec.name }, 'no instance for a waiting call')
    // Waiters nothing else will serve get the error now instead of a 429 later.
    const servable = entry.slots.length > 0 || entry.pending > 0
    const n = servable ? 1 : entry.waiters.length
    for (const w of entry.waiters.splice(0, n)) {
      clearTimeout(w.timer)
      w.reject(err)
    }
  }

  #serveWaiters(entry: RouteEntry, preferred: Slot, kind: StartKind): void {
    const max = entry.spec.concurrency
    while (entry.waiters.length > 0) {
      const slot = preferred.usable && preferred.inflight < max ? preferred : entry.pick()
      if (slot === undefined) return
      const w = entry.waiters.shift()
      if (w === undefined) return
      clearTimeout(w.timer)
      this.#metrics.coldStartPhase.observe({ phase: 'queue' }, (performance.now() - w.since) / 1000)
      this.#use(entry, slot)
      w.resolve({ entry, slot, kind: slot === preferred ? kind : 'warm' })
    }
  }

  #forget(entry: RouteEntry, slot: Slot): void {
    slot.removed = true
    slot.usable = false
    const i = entry.slots.indexOf(slot)
    if (i >= 0) entry.slots.splice(i, 1)
    this.#byInstance.delete(slot.lease.instanceId)
  }

  #remove(entry: RouteEntry, slot: Slot, outcome: ReleaseOutcome): void {
    this.#forget(entry, slot)
    this.#release(slot.lease, outcome)
  }

  /** Gives an instance back in the background; a failure is logged, never left to reject unhandled. */
  #release(lease: Lease, outcome: ReleaseOutcome): void {
    this.#executor.release(lease, outcome).catch((err: unknown) => this.#log.error({ err, fn: lease.fn, instance: lease.instanceId }, 'release failed'))
  }

  #onExecutorEvent(e: ExecutorEvent): void {
    if (e.type === 'instance-gone') {
      const hit = this.#byInstance.get(e.instanceId)
      if (hit === undefined) return
      this.#forget(hit.entry, hit.slot)
      this.#scale(hit.entry)
      return
    }
    const entry = this.#entries.get(e.name)
    if (entry === undefined) return
    this.#entries.delete(e.name)
    entry.stale = true
    for (const slot of [...entry.slots]) {
      slot.retiring = true
      slot.usable = false
      if (slot.inflight === 0) this.#remove(entry, slot, 'retire')
    }
    // Calls still waiting are routed to the new version (or get its 404).
    for (const w of entry.waiters.splice(0)) {
      clearTimeout(w.timer)
      this.acquire(e.name).then(w.resolve, w.reject)
    }
  }

  #sweepIdle(): void {
    const now = Date.now()
    for (const entry of this.#entries.values()) {
      for (const slot of [...entry.slots]) {
        if (slot.inflight === 0 && now - slot.lastUsed >= entry.spec.idleTimeoutMs) this.#remove(entry, slot, 'idle')
      }
    }
  }
}

function saturated(spec: RouteSpec, message: string): KdlError {
  const retryAfter = String(Math.max(1, Math.ceil(spec.queueTimeoutMs / 1000)))
  return new KdlError('KDL_ERR_SATURATED', message, { headers: { 'retry-after': retryAfter } })
}
