import type { Logger } from 'pino'
import { splitQualifier } from '../common/aliases.js'
import { KdlError } from '../common/errors.js'
import { afterCall } from '../common/modes.js'
import type { Metrics } from '../common/metrics.js'
import type { StartKind } from '../common/types.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, ResolvedRoute, RouteSpec } from '../executor/client.js'

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
  /** What the call named and its sticky key: where it is routed again if its version stops being routed. */
  key: string
  routeKey: string | undefined
}

/** How long a router whose controller is away waits before asking it for an instance again. */
const CONTROLLER_RETRY_MS = 500

/** The router's view of one function version: its slots, its bounded queue, its pending acquisitions. */
export class RouteEntry {
  spec: RouteSpec
  readonly slots: Slot[] = []
  readonly waiters: Waiter[] = []
  pending = 0
  stale = false
  /** Issue 13: the controller was unreachable; no acquisition is tried before this (performance.now ms). */
  acquireAfter = 0
  readonly #metrics: Metrics
  /** Metric children bound to this function once, so a call does no label hashing. */
  readonly #byStatus = new Map<number, { inc(): void }>()
  readonly #duration: { observe(v: number): void }
  /** `x-kindling-version` of its answers. */
  readonly versionText: string

  constructor(spec: RouteSpec, metrics: Metrics) {
    this.spec = spec
    this.versionText = String(spec.version)
    this.#metrics = metrics
    this.#duration = metrics.invocationDuration.labels(spec.name, this.versionText)
  }

  countStatus(status: number): void {
    let c = this.#byStatus.get(status)
    if (c === undefined) {
      c = this.#metrics.invocations.labels(this.spec.name, this.versionText, String(status))
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

/**
 * Where one route key (`name`, `name@alias`, `name@7`) sends its calls: one version's entry, or several by
 * weight. Immutable: a change of the function's routes makes a new one.
 */
export class AliasRoute {
  readonly key: string
  readonly entries: readonly RouteEntry[]
  /** Running totals of the entries' weights, and their sum. */
  readonly #bounds: number[]
  readonly #total: number

  constructor(key: string, targets: ReadonlyArray<{ entry: RouteEntry; weight: number }>) {
    this.key = key
    this.entries = targets.map((t) => t.entry)
    let sum = 0
    this.#bounds = targets.map((t) => (sum += t.weight))
    this.#total = sum
  }

  /**
   * The entry a call goes to: uniform over the total weight, or — when the caller names a key
   * (`x-kindling-route-key`) — always the same entry for the same key while the weights stay.
   */
  pick(routeKey: string | undefined): RouteEntry {
    const entries = this.entries
    if (entries.length === 1) return entries[0] as RouteEntry
    const x = routeKey === undefined ? Math.random() * this.#total : stickyPoint(routeKey, this.#total)
    const bounds = this.#bounds
    for (let i = 0; i < bounds.length; i++) if (x < (bounds[i] as number)) return entries[i] as RouteEntry
    return entries[entries.length - 1] as RouteEntry
  }
}

/** A key's point in [0, total): FNV-1a of its UTF-16 units, scaled (the same key lands on the same point). */
function stickyPoint(key: string, total: number): number {
  let h = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return ((h >>> 0) / 0x1_0000_0000) * total
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
  /** Entries by function, then version: a version keeps its entry (and its instances) while it is routed. */
  readonly #entries = new Map<string, Map<number, RouteEntry>>()
  /** Routes by the key calls name them by; dropped when their function's routes change. */
  readonly #routes = new Map<string, AliasRoute>()
  readonly #routeKeys = new Map<string, Set<string>>()
  /** Changes seen per function: a lookup that raced a change looks again. */
  readonly #generation = new Map<string, number>()
  readonly #resolving = new Map<string, Promise<AliasRoute>>()
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

  /** The entry a call to an already-known route key goes to (weights and sticky key applied), synchronously. */
  pick(key: string, routeKey: string | undefined): RouteEntry | undefined {
    return this.#routes.get(key)?.pick(routeKey)
  }

  /** The warm path: a slot with a free call on the entry, synchronously. */
  tryWarm(entry: RouteEntry): Granted | undefined {
    return this.#takeFree(entry)
  }

  /**
   * Waits (bounded) for a slot: a freed one, a recycled one, or a newly acquired instance. The call goes to
   * `entry` when it was picked already (its weighted pick stands), else to the route's pick. `again`: the
   * call already had its turn and lost its instance before reaching it — it keeps its place, ahead of the
   * calls that queued after it (a free slot is its own, and it waits at the head of the queue).
   */
  async acquire(key: string, routeKey: string | undefined, again = false, entry?: RouteEntry): Promise<Granted> {
    if (entry === undefined || entry.stale) {
      const route = this.#routes.get(key) ?? await this.#resolve(key)
      entry = route.pick(routeKey)
    }
    // Its version stopped being routed while this call looked the function up: a waiter on the old entry
    // would never be served (a stale entry acquires nothing) and be refused 429 at its queue timeout.
    if (entry.stale) return this.acquire(key, routeKey, again)
    const picked = entry
    const free = again ? this.#takeAny(picked) : this.#takeFree(picked)
    if (free !== undefined) return free
    if (picked.waiters.length >= this.#maxQueue) throw saturated(picked.spec, `function "${picked.spec.name}" has ${picked.waiters.length} calls waiting`)
    return new Promise<Granted>((resolve, reject) => {
      const onTimeout = (): void => {
        const i = picked.waiters.indexOf(waiter)
        if (i < 0) return
        // A call whose own instance is being started is not saturated, only cold: it waits on (the
        // acquisition itself is bounded by the start timeout). Only calls beyond the capacity that is
        // on its way are refused.
        if (i < picked.pending * picked.spec.concurrency) {
          waiter.timer = setTimeout(onTimeout, picked.spec.queueTimeoutMs)
          return
        }
        picked.waiters.splice(i, 1)
        reject(saturated(picked.spec, `function "${picked.spec.name}" is saturated: no instance was free within ${picked.spec.queueTimeoutMs} ms`))
      }
      const waiter: Waiter = { resolve, reject, since: performance.now(), timer: setTimeout(onTimeout, picked.spec.queueTimeoutMs), key, routeKey }
      if (again) picked.waiters.unshift(waiter)
      else picked.waiters.push(waiter)
      this.#scale(picked)
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
    return [...this.#allEntries()].map((e) => ({
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
    for (const entry of this.#allEntries()) {
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

  *#allEntries(): IterableIterator<RouteEntry> {
    for (const byVersion of this.#entries.values()) yield* byVersion.values()
  }

  /** Looks a route key up, once at a time per key; a lookup that raced a change of the function looks again. */
  #resolve(key: string): Promise<AliasRoute> {
    let p = this.#resolving.get(key)
    if (p === undefined) {
      p = this.#lookUp(key).finally(() => this.#resolving.delete(key))
      this.#resolving.set(key, p)
    }
    return p
  }

  async #lookUp(key: string): Promise<AliasRoute> {
    for (;;) {
      const { name } = splitQualifier(key)
      const gen = this.#generation.get(name) ?? 0
      const resolved = await this.#executor.resolve(key)
      if ((this.#generation.get(name) ?? 0) !== gen) continue
      return this.#install(resolved)
    }
  }

  /** A looked-up route, on the entries of its versions (made for the versions not seen yet). */
  #install(r: ResolvedRoute): AliasRoute {
    let byVersion = this.#entries.get(r.name)
    if (byVersion === undefined) { byVersion = new Map(); this.#entries.set(r.name, byVersion) }
    const targets = r.targets.map((t) => {
      let entry = byVersion.get(t.spec.version)
      if (entry === undefined) {
        entry = new RouteEntry(t.spec, this.#metrics)
        byVersion.set(t.spec.version, entry)
      } else {
        // A version's spec never changes, its share of maxInstances does (replicas joined or left, issue 11).
        entry.spec = t.spec
      }
      return { entry, weight: t.weight }
    })
    const route = new AliasRoute(r.key, targets)
    this.#routes.set(r.key, route)
    let keys = this.#routeKeys.get(r.name)
    if (keys === undefined) { keys = new Set(); this.#routeKeys.set(r.name, keys) }
    keys.add(r.key)
    return route
  }

  /**
   * Asks for as many new instances as the waiting calls need — never more than the capacity that is
   * already coming (pending acquisitions) covers, never beyond `maxInstances` (retiring slots do not count).
   */
  #scale(entry: RouteEntry): void {
    if (entry.stale || entry.acquireAfter > performance.now()) return
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
    const servable = entry.slots.length > 0 || entry.pending > 0
    // A cluster router whose controller is away (a leader failover): the function's live instances keep serving its
    // queue; new ones are asked for again after a pause, not on every call that ends meanwhile.
    if ((err as { code?: string }).code === 'KDL_ERR_CONTROLLER_UNAVAILABLE' && servable) {
      if (entry.acquireAfter <= performance.now()) this.#log.warn({ err, fn: entry.spec.name }, 'the controller is away: the function\'s instances serve its queue')
      entry.acquireAfter = performance.now() + CONTROLLER_RETRY_MS
      const timer = setTimeout(() => this.#scale(entry), CONTROLLER_RETRY_MS)
      timer.unref()
      return
    }
    this.#log.warn({ err, fn: entry.spec.name }, 'no instance for a waiting call')
    // Waiters nothing else will serve get the error now instead of a 429 later.
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
    if (e.type === 'instance-retire') {
      const hit = this.#byInstance.get(e.instanceId)
      if (hit !== undefined && !hit.slot.removed) this.retire(hit.entry, hit.slot, 'retire')
      return
    }
    if (e.type === 'instance-reclaim') {
      // Another router needs it (issue 13): given back if it is idle here and no call waits for it, else kept.
      const hit = this.#byInstance.get(e.instanceId)
      if (hit === undefined || hit.slot.removed || hit.slot.inflight > 0 || hit.slot.retiring || hit.entry.waiters.length > 0) return
      this.#remove(hit.entry, hit.slot, 'handover')
      return
    }
    // The function's routes changed: every key of it is looked up again at its next call. Versions still
    // routed keep their entries (a canary's weight step or a rollback moves calls, not instances).
    this.#generation.set(e.name, (this.#generation.get(e.name) ?? 0) + 1)
    for (const key of this.#routeKeys.get(e.name) ?? []) this.#routes.delete(key)
    this.#routeKeys.delete(e.name)
    const byVersion = this.#entries.get(e.name)
    if (byVersion === undefined) return
    const live = new Set(e.live)
    for (const [version, entry] of [...byVersion]) {
      if (live.has(version)) continue
      byVersion.delete(version)
      entry.stale = true
      for (const slot of [...entry.slots]) {
        slot.retiring = true
        slot.usable = false
        if (slot.inflight === 0) this.#remove(entry, slot, 'retire')
      }
      // Calls still waiting are routed again (to what the function routes to now, or its 404).
      for (const w of entry.waiters.splice(0)) {
        clearTimeout(w.timer)
        this.acquire(w.key, w.routeKey).then(w.resolve, w.reject)
      }
    }
    if (byVersion.size === 0) this.#entries.delete(e.name)
  }

  #sweepIdle(): void {
    const now = Date.now()
    for (const entry of this.#allEntries()) {
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
