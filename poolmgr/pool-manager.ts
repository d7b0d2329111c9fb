import { randomBytes } from 'node:crypto'
import { availableParallelism } from 'node:os'
import type { Logger } from 'pino'
import { lostToKill, type ContainerBackend, type InstanceExit } from '../common/backend.js'
import { isKdlError, KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import { neverRead } from '../common/transport.js'
import type { FunctionRecord, NetworkMode, RuntimeSpec } from '../common/types.js'
import { Instance } from './instance.js'
import { StartGate } from './start-gate.js'
import { dispatcherFor, load } from '../protocol/runtime-client.js'

/** How long a refill waits after the take that caused it (see #afterTake). */
const REFILL_DELAY_MS = 20
/** How long a load that lost its instance waits for the backend to say how it died. */
const EXIT_WAIT_MS = 2000
/** How long requests still on a retired instance's dispatcher may take to fail by themselves. */
const DISPATCHER_GRACE_MS = 1000

/**
 * Stops an instance's dispatcher taking requests. Closed, not destroyed (issue 8): a request already
 * queued on it then fails with its own transport error — refused, reset, closed — which tells the router
 * whether the instance ever read it, where a destroy would fail every one alike with "destroyed". The
 * instance is going (dead, or being stopped), so they fail soon; the grace bounds a hung handler.
 */
function retireDispatcher(inst: Instance): void {
  const d = inst.dispatcher
  const timer = setTimeout(() => { d.destroy().catch(() => {}) }, DISPATCHER_GRACE_MS)
  timer.unref()
  d.close().then(() => clearTimeout(timer), () => {})
}

export interface PoolManagerOptions {
  backend: ContainerBackend
  log: Logger
  pidsLimit: number
  /** Retry delay after a failed background start, so a broken backend is not hammered. @default 1000 */
  retryMs?: number
  /** Memory all instances together may use, MiB, as charged (see idleMemoryRatio). @default Infinity */
  memoryBudgetMb?: number
  /**
   * What an idle pooled instance (generic, or prewarmed and waiting) is charged, as a share of its limit; an
   * instance that serves, loads or is being started for a call is charged its whole limit. @default 1
   */
  idleMemoryRatio?: number
  /** The host's memory as it is now: no start is admitted that would leave less than `floorMb` available. */
  hostMemory?: { availableMb(): number; floorMb: number } | undefined
  /** Adaptive generic pools; omitted: pools stay at their configured size. */
  adaptive?: AdaptiveOptions | undefined
  /** How long a function's module may take to load (its top level, its imports), ms. @default 5000 */
  loadTimeoutMs?: number
  /** Instance starts that may run at once; more wait, calls' before refills (see StartGate). @default the backend's parallelStarts, else 2 × CPUs */
  maxStarting?: number
  /** Told which function each instance runs for, from the start of its load to its end (function logs, issue 14). */
  owners?: InstanceOwners | undefined
  /** Where a pool's unmet target is reported (`pool.unmet`, `pool.met`). */
  events?: EventLog | undefined
}

/** Who learns the function an instance is bound to: what it prints from its load on is that function's. */
export interface InstanceOwners {
  bind(instance: string, fn: string, version: number): void
  release(instance: string): void
}

/**
 * OpenWhisk's reactive prewarm rule: every `intervalMs`, a runtime that saw `cold` cold starts gets
 * `target = clamp(poolSize + ceil(cold / threshold) × increment, poolSize, maxPoolSize)`; a window without
 * cold starts shrinks the target one `increment` back toward `poolSize`.
 */
export interface AdaptiveOptions {
  intervalMs: number
  threshold: number
  increment: number
  maxPoolSize: number
}

/** The resources an instance is started with; generic instances only serve functions that ask for the same. */
export interface Resources {
  memoryMb: number
  cpu: number
  /** Generic instances have no network; a function asking for egress gets instances of its own. */
  network: NetworkMode
}

/**
 * A pool below its target because the memory budget is used up (issue 16): a state, not a fault. It is logged
 * and evented once when it begins and once when it ends; its refills wait for memory to come free (any
 * instance destroyed) or for a back-off that doubles up to UNMET_MAX_DELAY_MS, never retry in a loop.
 */
interface Unmet {
  /** `budget`: KINDLING_MEMORY_BUDGET_MB is used up; `host-memory`: the host is down to KINDLING_MEMORY_FLOOR_MB. */
  reason: 'budget' | 'host-memory'
  since: number
  /** Refills tried since it began. */
  retries: number
  /** The back-off before the next refill by timer, ms. */
  delayMs: number
}

/** The longest back-off of a pool short of budget. */
const UNMET_MAX_DELAY_MS = 30_000

interface Shortable {
  idle: Instance[]
  retryTimer: NodeJS.Timeout | undefined
  unmet: Unmet | undefined
}

interface GenericPool {
  spec: RuntimeSpec
  /** Current target: `spec.poolSize`, raised by cold starts when adaptive. */
  target: number
  coldStarts: number
  idle: Instance[]
  starting: number
  retryTimer: NodeJS.Timeout | undefined
  unmet: Unmet | undefined
  /** The backend's own pool being set (ownsGenericPools): one update at a time, in order. */
  pushed?: Promise<void> | undefined
}

interface PrewarmPool {
  record: FunctionRecord
  codeDir: string
  /** Instances kept: the version's share of its function's `prewarm` (issue 15: each routed version has its own). */
  target: number
  idle: Instance[]
  filling: number
  retryTimer: NodeJS.Timeout | undefined
  unmet: Unmet | undefined
}

export interface PoolSnapshot {
  pool: string
  kind: 'generic' | 'prewarm'
  runtime: string
  function?: string
  version?: number
  target: number
  idle: number
  starting: number
  /** Why the pool is below its target and not filling: `budget` (the memory budget is used up). */
  unmet?: 'budget' | 'host-memory' | undefined
  /** Since when, ISO. */
  unmetSince?: string | undefined
  /** Refills tried (backing off) since. */
  unmetRetries?: number | undefined
}

export type InstanceGoneListener = (inst: Instance, exit: InstanceExit) => void

/**
 * Owns every instance: the generic pool of each runtime (started, no code) and the code-loaded pool of
 * each function with `prewarm > 0`. Pools refill in the background; a refill never blocks a caller.
 */
export class PoolManager {
  readonly backend: ContainerBackend
  readonly #log: Logger
  readonly #pidsLimit: number
  readonly #retryMs: number
  readonly #budgetMb: number
  readonly #idleRatio: number
  readonly #host: { availableMb(): number; floorMb: number } | undefined
  readonly #adaptive: AdaptiveOptions | undefined
  readonly #adaptTimer: NodeJS.Timeout | undefined
  readonly #generic = new Map<string, GenericPool>()
  /** Code-loaded pools by `name@version` (prewarmKey). */
  readonly #prewarm = new Map<string, PrewarmPool>()
  readonly #all = new Map<string, Instance>()
  /** Memory of instances being started (not yet in #all), MiB. */
  #reserved = 0
  readonly #goneListeners: InstanceGoneListener[] = []
  readonly #retireListeners: Array<(inst: Instance) => void> = []
  /** Loads that lost their instance, waiting to learn how it died (see #loadFailure). */
  readonly #exitWaiters = new Map<string, Array<(exit: InstanceExit) => void>>()
  /** Functions the load guard quarantined: their new instances start in the quarantine group. */
  readonly #quarantined = new Set<string>()
  #closed = false
  #reapTimer: NodeJS.Timeout | undefined

  readonly #loadTimeoutMs: number
  readonly #gate: StartGate
  readonly #owners: InstanceOwners | undefined
  readonly #events: EventLog | undefined

  constructor(opts: PoolManagerOptions) {
    this.backend = opts.backend
    this.#log = opts.log
    this.#pidsLimit = opts.pidsLimit
    this.#retryMs = opts.retryMs ?? 1000
    this.#budgetMb = opts.memoryBudgetMb ?? Infinity
    this.#idleRatio = opts.idleMemoryRatio ?? 1
    this.#host = opts.hostMemory
    this.#adaptive = opts.adaptive
    this.#loadTimeoutMs = opts.loadTimeoutMs ?? 5000
    this.#owners = opts.owners
    this.#events = opts.events
    this.#gate = new StartGate(opts.maxStarting ?? opts.backend.parallelStarts ?? 2 * availableParallelism())
    this.backend.onExit((exit) => this.#onExit(exit))
    if (this.#adaptive !== undefined) {
      this.#adaptTimer = setInterval(() => this.adapt(), this.#adaptive.intervalMs)
      this.#adaptTimer.unref()
    }
  }

  /** A cold start happened on this runtime (feeds the adaptive pool size). */
  noteColdStart(runtime: string): void {
    const pool = this.#generic.get(runtime)
    if (pool !== undefined) pool.coldStarts++
  }

  /** One adaptive step for every runtime (runs on the timer; public for tests). */
  adapt(): void {
    const a = this.#adaptive
    // A backend that keeps the pools sizes them itself (their size is the runtime's poolSize).
    if (a === undefined || this.backend.ownsGenericPools === true) return
    for (const [runtime, pool] of this.#generic) {
      const base = pool.spec.poolSize
      const max = Math.max(base, a.maxPoolSize)
      const cold = pool.coldStarts
      pool.coldStarts = 0
      const before = pool.target
      if (cold > 0) pool.target = Math.max(pool.target, Math.min(max, base + Math.ceil(cold / a.threshold) * a.increment))
      else pool.target = Math.max(base, pool.target - a.increment)
      if (pool.target < before) for (const inst of pool.idle.splice(pool.target)) void this.destroy(inst)
      if (pool.target !== before) this.#log.info({ runtime, cold, from: before, to: pool.target }, 'generic pool resized')
      this.#fillGeneric(runtime)
    }
  }

  /** What the live instances are charged against the budget, MiB (idle pooled ones a share of their limit). */
  usedMemoryMb(): number {
    let mb = 0
    for (const inst of this.#all.values()) mb += this.#chargeOf(inst)
    return mb
  }

  /** The budget, what is charged against it, and what an idle instance is charged (GET /v1/pools). */
  memory(): { budgetMb: number | null; chargedMb: number; idleMemoryRatio: number; hostAvailableMb?: number; hostFloorMb?: number } {
    return {
      budgetMb: Number.isFinite(this.#budgetMb) ? this.#budgetMb : null, chargedMb: Math.round(this.usedMemoryMb() * 10) / 10, idleMemoryRatio: this.#idleRatio,
      ...(this.#host === undefined ? {} : { hostAvailableMb: Math.round(this.#host.availableMb()), hostFloorMb: this.#host.floorMb }),
    }
  }

  /** An idle pooled instance costs what a runtime at rest uses (a share of its limit); one at work its whole limit. */
  #chargeOf(inst: Instance): number {
    return inst.state === 'generic' || inst.state === 'loaded' ? inst.memoryMb * this.#idleRatio : inst.memoryMb
  }

  /** Stops instances an earlier run left behind (found by the backend's labels / run directory). */
  async reapOrphans(): Promise<number> {
    const found = (await this.backend.list()).filter((o) => !this.#all.has(o.id))
    await Promise.all(found.map((o) => this.backend.stop(o.id)))
    if (found.length > 0) this.#log.info({ count: found.length }, 'reaped orphan instances')
    return found.length
  }

  /**
   * Issue 13, a controller that took over from another: the instances the earlier leader handed to routers still
   * serve their warm calls, and the routers hand them over (`adopt`) once they reach this one. What is still
   * nobody's after `graceMs` is reaped as an orphan.
   */
  reapOrphansAfter(graceMs: number): void {
    clearTimeout(this.#reapTimer)
    this.#reapTimer = setTimeout(() => {
      this.#reapTimer = undefined
      if (this.#closed) return
      this.reapOrphans().catch((err: unknown) => this.#log.warn({ err }, 'cannot reap orphan instances'))
    }, graceMs)
    this.#reapTimer.unref()
  }

  /**
   * Issue 13: an instance an earlier controller of this platform loaded with `record` and handed to a router,
   * taken over as leased (ContainerBackend.adopt); undefined when it no longer runs or the backend cannot adopt.
   */
  async adopt(id: string, record: FunctionRecord): Promise<Instance | undefined> {
    if (this.#closed) return undefined
    const known = this.#all.get(id)
    if (known !== undefined) return known.state === 'dead' || known.fn !== record.name ? undefined : known
    const handle = await this.backend.adopt?.(id)
    if (handle === undefined) return undefined
    const raced = this.#all.get(id)
    if (raced !== undefined) return raced
    const inst = new Instance(handle, dispatcherFor(handle.address), 0, this.resourcesOf(record).memoryMb, this.isQuarantined(record.name))
    inst.fn = record.name
    inst.version = record.version
    inst.state = 'leased'
    this.#owners?.bind(id, record.name, record.version)
    this.#all.set(id, inst)
    return inst
  }

  /** Adds or reconfigures a runtime's generic pool and fills it to `poolSize` in the background. */
  setRuntime(spec: RuntimeSpec): void {
    if (this.backend.ownsGenericPools === true) {
      // The backend keeps the pool (issue 10): none of its instances are the pool manager's, so the target here is 0.
      const pool = this.#generic.get(spec.name)
      if (pool === undefined) this.#generic.set(spec.name, { spec, target: 0, coldStarts: 0, idle: [], starting: 0, retryTimer: undefined, unmet: undefined })
      else pool.spec = spec
      this.#pushGeneric(spec.name)
      return
    }
    const pool = this.#generic.get(spec.name)
    if (pool === undefined) {
      this.#generic.set(spec.name, { spec, target: spec.poolSize, coldStarts: 0, idle: [], starting: 0, retryTimer: undefined, unmet: undefined })
    } else {
      const resized = pool.spec.memoryMb !== spec.memoryMb || pool.spec.cpu !== spec.cpu || pool.spec.image !== spec.image
      pool.spec = spec
      pool.target = spec.poolSize
      const surplus = resized ? pool.idle.splice(0) : pool.idle.splice(spec.poolSize)
      for (const inst of surplus) void this.destroy(inst)
    }
    this.#fillGeneric(spec.name)
  }

  runtime(name: string): RuntimeSpec | undefined {
    return this.#generic.get(name)?.spec
  }

  resourcesOf(record: FunctionRecord): Resources {
    const rt = this.runtime(record.runtime)
    if (rt === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${record.runtime}" is not configured`)
    return { memoryMb: record.memoryMb ?? rt.memoryMb, cpu: record.cpu ?? rt.cpu, network: record.network }
  }

  /**
   * Quarantine (load guard): the function's next instances start in the isolated group, so generic
   * instances are no longer used for it and its idle prewarmed ones are replaced.
   */
  setQuarantined(fn: string, on: boolean): void {
    if (on === this.#quarantined.has(fn)) return
    if (on) this.#quarantined.add(fn)
    else this.#quarantined.delete(fn)
    for (const inst of this.#all.values()) {
      if (inst.fn !== fn) continue
      if (this.backend.setQuarantine !== undefined) {
        this.backend.setQuarantine(inst.id, on).catch((err: unknown) => this.#log.warn({ err, instance: inst.id }, 'cannot move an instance in or out of quarantine'))
      } else if (on && !inst.quarantined && inst.state === 'leased') {
        // The backend cannot move it (a pod stays on its node): its replacement starts in quarantine, and it goes
        // once the calls it serves end (the router drains it). Idle prewarmed ones are replaced just below.
        for (const l of this.#retireListeners) l(inst)
      }
    }
    for (const [key, pool] of this.#prewarm) {
      if (pool.record.name !== fn) continue
      for (const inst of pool.idle.splice(0)) void this.destroy(inst)
      this.#fillPrewarm(key)
    }
  }

  isQuarantined(fn: string): boolean {
    return this.#quarantined.has(fn)
  }

  /** An instance for `fn`: a generic one (unless `fn` is quarantined) or a newly started one. */
  async takeOrStart(fn: string, runtime: string, res: Resources, forCall = true, version?: number): Promise<{ inst: Instance; started: boolean }> {
    const quarantined = this.#quarantined.has(fn)
    const taken = quarantined ? undefined : this.takeGeneric(runtime, res)
    if (taken !== undefined) {
      if (forCall) this.#serving(taken)
      return { inst: taken, started: false }
    }
    const inst = await this.start(runtime, `fn:${fn}`, res, quarantined, forCall, version)
    // Claimed from the backend's own pool (ownsGenericPools): warm, as a take from a generic pool here would be.
    return { inst, started: inst.handle.pooled !== true }
  }

  /** Hands the runtime's pool spec to a backend that keeps the pool; a failure is logged and retried after `retryMs`. */
  #pushGeneric(runtime: string): void {
    const pool = this.#generic.get(runtime)
    const set = this.backend.setGenericPool?.bind(this.backend)
    if (pool === undefined || set === undefined || this.#closed) return
    clearTimeout(pool.retryTimer)
    pool.retryTimer = undefined
    pool.pushed = (pool.pushed ?? Promise.resolve()).then(async () => {
      if (this.#closed || this.#generic.get(runtime) !== pool) return
      const spec = pool.spec
      try {
        await set({ runtime, size: spec.poolSize, memoryMb: spec.memoryMb, cpu: spec.cpu, image: spec.image })
      } catch (err) {
        if (this.#closed || pool.spec !== spec) return
        this.#log.error({ err, runtime }, 'the backend did not take the generic pool; retrying')
        this.#retryLater(pool, () => this.#pushGeneric(runtime))
      }
    })
  }

  /** A started, code-less instance of the runtime with matching resources, or undefined (never waits). */
  takeGeneric(runtime: string, res: Resources): Instance | undefined {
    const pool = this.#generic.get(runtime)
    if (pool === undefined || pool.spec.memoryMb !== res.memoryMb || pool.spec.cpu !== res.cpu || res.network !== 'none') return undefined
    const inst = pool.idle.shift()
    if (inst !== undefined) this.#afterTake(() => this.#fillGeneric(runtime))
    return inst
  }

  /**
   * Starts a new generic instance. `forCall`: a call waits for it (the `cold` path) — over the memory
   * budget idle pooled instances are evicted least-recently-used first, and it runs at a full CPU share.
   * Otherwise it is a background refill: it never evicts, and runs at a small CPU share until handed out.
   * When the budget has no room: KDL_ERR_NO_CAPACITY. Either waits its turn at the start gate first.
   */
  async start(runtime: string, pool: string, res: Resources, quarantine = false, forCall = true, version?: number): Promise<Instance> {
    return this.#gate.run(forCall ? 'call' : 'background', () => this.#start(runtime, pool, res, quarantine, forCall, version))
  }

  /** Starts that run now, that wait for their turn, and how many may run at once (see StartGate). */
  starts(): { running: number; waiting: number; limit: number } {
    return this.#gate.stats()
  }

  async #start(runtime: string, pool: string, res: Resources, quarantine: boolean, forCall: boolean, version: number | undefined): Promise<Instance> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
    const spec = this.runtime(runtime)
    if (spec === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${runtime}" is not configured`)
    // Reserved once the start has its turn: a start waiting at the gate holds no memory, so a call's
    // start never evicts idle instances for refills that are only queued.
    // A call's instance works at once: its whole limit; a refill's waits idle in its pool: its share.
    const charge = forCall ? res.memoryMb : res.memoryMb * this.#idleRatio
    this.#reserve(charge, forCall)
    const id = `kdl-${randomBytes(6).toString('hex')}`
    const t0 = performance.now()
    let handle
    try {
      handle = await this.backend.start({
        id, runtime, pool, version, memoryMb: res.memoryMb, cpu: res.cpu, pidsLimit: this.#pidsLimit, network: res.network, quarantine, image: spec.image, background: !forCall,
        // A refill waits in its pool: its runtime warms its own request path meanwhile (PROTOCOL §2).
        ...(forCall ? {} : { env: { KINDLING_WARMUP: '1' } }),
      })
    } catch (err) {
      this.#reserved -= charge
      throw err
    }
    const inst = new Instance(handle, dispatcherFor(handle.address), performance.now() - t0, res.memoryMb, quarantine)
    this.#reserved -= charge
    this.#all.set(id, inst)
    if (this.#closed) {
      await this.destroy(inst)
      throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
    }
    return inst
  }

  /** Loads a function into a generic instance; on failure the instance is destroyed (it can't be trusted). */
  /**
   * Loads `record` into a generic instance. `ahead`: the instance waits in a pool for its calls (a prewarm
   * refill, a deploy's trial), so the runtime may prepare what its first calls would otherwise pay for.
   */
  async load(inst: Instance, record: FunctionRecord, codeDir: string, ahead = false): Promise<number> {
    inst.state = 'loading'
    // Bound before the load: the module's top level prints as the function, and so does a load that fails.
    this.#owners?.bind(inst.id, record.name, record.version)
    try {
      const inside = await this.backend.prepareCode(inst.id, codeDir)
      const t0 = performance.now()
      await load(inst.dispatcher, {
        codeDir: inside, entrypoint: record.entrypoint, function: record.name, version: record.version, env: record.env,
        recycle: record.mode === 'recycle', prepare: ahead,
      }, this.#loadTimeoutMs)
      inst.fn = record.name
      inst.version = record.version
      inst.state = 'loaded'
      return performance.now() - t0
    } catch (err) {
      const failure = isKdlError(err) ? err : await this.#loadFailure(inst, record, err)
      await this.destroy(inst)
      throw failure
    }
  }

  /**
   * What a load that got no answer from the runtime means (issue 8): the function's failure when its code
   * ended the instance (an exit of its own, or its memory limit) or never finished loading —
   * KDL_ERR_LOAD_FAILED, final; the platform's when the instance was killed from outside or was gone
   * before the load was sent — KDL_ERR_BACKEND, which a caller may retry on another instance.
   */
  async #loadFailure(inst: Instance, record: FunctionRecord, err: unknown): Promise<KdlError> {
    const fn = record.name
    const code = (err as { code?: string }).code
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new KdlError('KDL_ERR_LOAD_TIMEOUT', `function "${fn}" did not finish loading within ${this.#loadTimeoutMs} ms (a top-level loop, or an import that never settles?); its instance was destroyed`, {
        cause: err, details: { loadTimeoutMs: this.#loadTimeoutMs },
      })
    }
    const why = (err as Error).message
    // The instance never read the load: the function's code cannot have run, nothing to wait for.
    if (!neverRead(code)) {
      const exit = await this.#exitOf(inst, EXIT_WAIT_MS)
      if (exit?.reason === 'oom') {
        return new KdlError('KDL_ERR_LOAD_FAILED', `function "${fn}" ran out of memory while loading: its module needs more than its ${inst.memoryMb} MiB memory limit (memoryMb)`, {
          cause: err, details: { reason: 'oom', memoryMb: inst.memoryMb },
        })
      }
      if (exit !== undefined && (exit.signal ?? null) === null && typeof exit.code === 'number') {
        return new KdlError('KDL_ERR_LOAD_FAILED', `function "${fn}" ended its instance while loading (exit code ${exit.code}: process.exit() or a crash at its top level; \`kindling fn logs ${fn}\` shows its output)`, {
          cause: err, details: { reason: 'exited', exitCode: exit.code },
        })
      }
    }
    return new KdlError('KDL_ERR_BACKEND', `instance ${inst.id} was lost while loading function "${fn}" (${why})`, { cause: err })
  }

  /** The instance's exit as the backend reports it, waiting up to `ms` for the report; undefined when none came. */
  #exitOf(inst: Instance, ms: number): Promise<InstanceExit | undefined> {
    if (inst.exit !== undefined) return Promise.resolve(inst.exit)
    return new Promise((resolve) => {
      const waiters = this.#exitWaiters.get(inst.id) ?? []
      const timer = setTimeout(() => {
        const i = waiters.indexOf(done)
        if (i >= 0) waiters.splice(i, 1)
        if (waiters.length === 0) this.#exitWaiters.delete(inst.id)
        resolve(undefined)
      }, ms)
      timer.unref()
      const done = (exit: InstanceExit): void => { clearTimeout(timer); resolve(exit) }
      waiters.push(done)
      this.#exitWaiters.set(inst.id, waiters)
    })
  }

  /**
   * Keeps `target` (default `record.prewarm`) code-loaded instances of this version. Other versions of the
   * function keep their pools: `retainPrewarm` says which versions are still routed.
   */
  setPrewarm(record: FunctionRecord, codeDir: string, seed?: Instance, target = record.prewarm): void {
    const key = prewarmKey(record.name, record.version)
    let pool = this.#prewarm.get(key)
    if (pool === undefined) {
      pool = { record, codeDir, target, idle: [], filling: 0, retryTimer: undefined, unmet: undefined }
      this.#prewarm.set(key, pool)
    } else {
      pool.target = target
      for (const inst of pool.idle.splice(target)) void this.destroy(inst)
    }
    if (seed !== undefined) {
      if (pool.idle.length < target) pool.idle.push(seed)
      else void this.destroy(seed)
    }
    this.#fillPrewarm(key)
  }

  /** Drops the prewarm pools of the function's versions not in `keep`. */
  retainPrewarm(name: string, keep: ReadonlySet<number>): void {
    for (const [key, pool] of [...this.#prewarm]) {
      if (pool.record.name === name && !keep.has(pool.record.version)) this.#dropPrewarm(key, pool)
    }
  }

  /** Drops every prewarm pool of the function. */
  removePrewarm(name: string): void {
    this.retainPrewarm(name, new Set())
  }

  #dropPrewarm(key: string, pool: PrewarmPool): void {
    this.#prewarm.delete(key)
    clearTimeout(pool.retryTimer)
    this.#met(pool, `fn:${key}`, 'removed')
    for (const inst of pool.idle.splice(0)) void this.destroy(inst)
  }

  /** A code-loaded instance of exactly this version, or undefined (never waits). */
  takePrewarmed(name: string, version: number): Instance | undefined {
    const key = prewarmKey(name, version)
    const pool = this.#prewarm.get(key)
    if (pool === undefined) return undefined
    const inst = pool.idle.shift()
    if (inst !== undefined) {
      this.#serving(inst)
      this.#afterTake(() => this.#fillPrewarm(key))
    }
    return inst
  }

  async destroy(inst: Instance): Promise<void> {
    if (inst.state === 'dead') return
    inst.state = 'dead'
    this.#all.delete(inst.id)
    this.#dropFromPools(inst)
    retireDispatcher(inst)
    await this.backend.stop(inst.id).catch((err: unknown) => this.#log.error({ err, instance: inst.id }, 'stopping an instance failed'))
    this.#owners?.release(inst.id)
    // Memory came free: pools left short by the budget may fill now (their back-off is cut short).
    for (const [runtime, pool] of this.#generic) {
      if (pool.unmet !== undefined) { clearTimeout(pool.retryTimer); pool.retryTimer = undefined }
      this.#fillGeneric(runtime)
    }
    // The emptiest short pools first: room that comes free is shared out fairly, not in deploy order.
    const short = [...this.#prewarm].filter(([, p]) => p.unmet !== undefined).sort(([, a], [, b]) => a.idle.length / a.target - b.idle.length / b.target)
    for (const [key, pool] of short) {
      clearTimeout(pool.retryTimer)
      pool.retryTimer = undefined
      this.#fillPrewarm(key)
    }
  }

  onInstanceGone(listener: InstanceGoneListener): void {
    this.#goneListeners.push(listener)
  }

  /** Told of each in-use instance that must be replaced once its calls end (see setQuarantined). */
  onMustRetire(listener: (inst: Instance) => void): void {
    this.#retireListeners.push(listener)
  }

  instances(): IterableIterator<Instance> {
    return this.#all.values()
  }

  snapshot(): PoolSnapshot[] {
    const out: PoolSnapshot[] = []
    const owned = this.backend.ownsGenericPools === true
    for (const [runtime, p] of this.#generic) {
      // A pool the backend keeps: its size is the runtime's, its idle instances are the backend's.
      const target = owned ? p.spec.poolSize : p.target
      const idle = owned ? this.backend.genericPoolIdle?.(runtime) ?? 0 : p.idle.length
      out.push({ pool: `generic:${runtime}`, kind: 'generic', runtime, target, idle, starting: p.starting, ...unmetView(p) })
    }
    for (const [key, p] of this.#prewarm) {
      out.push({ pool: `fn:${key}`, kind: 'prewarm', runtime: p.record.runtime, function: p.record.name, version: p.record.version, target: p.target, idle: p.idle.length, starting: p.filling, ...unmetView(p) })
    }
    return out
  }

  /**
   * Stops every instance, then the backend. `keepLeased` (issue 13, a controller stepping down): the instances
   * routers hold keep serving their warm calls and are left to the next leader, which adopts them.
   */
  async close(opts: { keepLeased?: boolean } = {}): Promise<void> {
    this.#closed = true
    clearTimeout(this.#reapTimer)
    this.#gate.close()
    clearInterval(this.#adaptTimer)
    for (const p of this.#generic.values()) clearTimeout(p.retryTimer)
    for (const p of this.#prewarm.values()) clearTimeout(p.retryTimer)
    const keep = new Set<string>()
    for (const inst of this.#all.values()) if (opts.keepLeased === true && inst.state === 'leased') keep.add(inst.id)
    await Promise.all([...this.#all.values()].filter((inst) => !keep.has(inst.id)).map((inst) => this.destroy(inst)))
    await this.backend.close(keep.size > 0 ? keep : undefined)
  }

  #onExit(exit: InstanceExit): void {
    const waiters = this.#exitWaiters.get(exit.id)
    this.#exitWaiters.delete(exit.id)
    for (const w of waiters ?? []) w(exit)
    const inst = this.#all.get(exit.id)
    if (inst === undefined) return
    inst.exit = exit
    inst.state = 'dead'
    this.#owners?.release(inst.id)
    this.#all.delete(inst.id)
    this.#dropFromPools(inst)
    retireDispatcher(inst)
    for (const l of this.#goneListeners) l(inst, exit)
  }

  #dropFromPools(inst: Instance): void {
    const g = this.#generic.get(inst.runtime)
    if (g !== undefined) {
      const i = g.idle.indexOf(inst)
      if (i >= 0) { g.idle.splice(i, 1); this.#fillGeneric(inst.runtime) }
    }
    if (inst.fn !== undefined && inst.version !== undefined) {
      const key = prewarmKey(inst.fn, inst.version)
      const p = this.#prewarm.get(key)
      const i = p?.idle.indexOf(inst) ?? -1
      if (p !== undefined && i >= 0) { p.idle.splice(i, 1); this.#fillPrewarm(key) }
    }
  }

  #fillGeneric(runtime: string): void {
    const pool = this.#generic.get(runtime)
    if (pool === undefined || this.#closed) return
    if (pool.unmet !== undefined && pool.idle.length >= pool.target) this.#met(pool, `generic:${runtime}`, 'filled')
    if (pool.retryTimer !== undefined) return
    while (pool.idle.length + pool.starting < pool.target) {
      pool.starting++
      const spec = pool.spec
      this.start(runtime, `generic:${runtime}`, { memoryMb: spec.memoryMb, cpu: spec.cpu, network: 'none' }, false, false).then((inst) => {
        pool.starting--
        // The runtime may have been resized or removed while this one started.
        if (this.#generic.get(runtime) === pool && pool.spec === spec && pool.idle.length < pool.target) {
          pool.idle.push(inst)
          if (pool.idle.length >= pool.target) this.#met(pool, `generic:${runtime}`, 'filled')
        } else {
          void this.destroy(inst)
        }
      }, (err: unknown) => {
        pool.starting--
        if (this.#closed) return
        // A full budget is not a fault: the pool is short, and says so once.
        if ((err as { code?: string }).code === 'KDL_ERR_NO_CAPACITY') {
          this.#short(pool, `generic:${runtime}`, pool.target, () => this.#fillGeneric(runtime), { runtime }, reasonOf(err))
          return
        }
        this.#refillAfter(err, pool, () => this.#fillGeneric(runtime), { runtime }, 'generic instance failed to start')
      })
    }
  }

  #fillPrewarm(key: string): void {
    const pool = this.#prewarm.get(key)
    if (pool === undefined || this.#closed) return
    if (pool.unmet !== undefined && pool.idle.length >= pool.target) this.#met(pool, `fn:${key}`, 'filled')
    if (pool.retryTimer !== undefined) return
    while (pool.idle.length + pool.filling < pool.target) {
      pool.filling++
      const record = pool.record
      this.#prepareLoaded(record, pool.codeDir).then((inst) => {
        pool.filling--
        // Started before a quarantine changed (setQuarantined swept the pool meanwhile), on a backend that cannot move
        // it: it is in the wrong place (a pod on a runtime node) — replaced, not kept.
        const misplaced = this.backend.setQuarantine === undefined && inst.quarantined !== this.#quarantined.has(record.name)
        if (this.#prewarm.get(key) === pool && pool.idle.length < pool.target && !misplaced) {
          pool.idle.push(inst)
          if (pool.idle.length >= pool.target) this.#met(pool, `fn:${key}`, 'filled')
        } else {
          void this.destroy(inst)
          if (misplaced) this.#fillPrewarm(key)
        }
      }, (err: unknown) => {
        pool.filling--
        if (this.#closed) return
        if ((err as { code?: string }).code === 'KDL_ERR_NO_CAPACITY') {
          this.#short(pool, `fn:${key}`, pool.target, () => this.#fillPrewarm(key), { fn: record.name, version: record.version }, reasonOf(err))
          return
        }
        this.#refillAfter(err, pool, () => this.#fillPrewarm(key), { fn: record.name, version: record.version }, 'prewarm instance failed to load')
      })
    }
  }

  /** A generic instance (taken or started) with the function loaded: what a prewarm refill produces. */
  async #prepareLoaded(record: FunctionRecord, codeDir: string): Promise<Instance> {
    const { inst } = await this.takeOrStart(record.name, record.runtime, this.resourcesOf(record), false, record.version)
    await this.load(inst, record, codeDir, true)
    return inst
  }

  /**
   * Who goes first when a call needs room (issue 16): idle generic instances, least recently used first (any
   * function can use the next one); then prewarm pools shrink fairly — always the pool with the most idle
   * instances gives one up (its least recently used), so the pools shrink toward one size instead of the
   * oldest pool emptying first.
   */
  *#evictionOrder(): Generator<Instance> {
    const generic: Instance[] = []
    for (const p of this.#generic.values()) generic.push(...p.idle)
    generic.sort((a, b) => a.lastUsed - b.lastUsed)
    yield* generic
    const pools = [...this.#prewarm.values()].map((p) => [...p.idle].sort((a, b) => a.lastUsed - b.lastUsed)).filter((q) => q.length > 0)
    for (;;) {
      let largest: Instance[] | undefined
      for (const q of pools) if (q.length > 0 && (largest === undefined || q.length > largest.length)) largest = q
      const inst = largest?.shift()
      if (inst === undefined) return
      yield inst
    }
  }

  /**
   * Makes room for `mb` within the budget — and within the host's available memory above its floor — evicting
   * idle pooled instances least-recently-used first when allowed (a call's start; refills never evict).
   */
  #reserve(mb: number, evict: boolean): void {
    let free = this.#budgetMb - this.usedMemoryMb() - this.#reserved
    // The host's truth: what the kernel could still give (MemAvailable) above the floor kept for everything else.
    // An evicted instance gives back what it uses, about its idle charge.
    let hostFree = this.#host === undefined ? Infinity : this.#host.availableMb() - this.#host.floorMb - this.#reserved
    const victims: Instance[] = []
    if ((free < mb || hostFree < mb) && evict) {
      for (const inst of this.#evictionOrder()) {
        if (free >= mb && hostFree >= mb) break
        free += this.#chargeOf(inst)
        hostFree += inst.memoryMb * this.#idleRatio
        victims.push(inst)
      }
    }
    if (free < mb) {
      throw new KdlError('KDL_ERR_NO_CAPACITY', `the memory budget (${this.#budgetMb} MiB) is used up: ${Math.ceil(mb)} MiB more do not fit`, { details: { reason: 'budget' } })
    }
    if (hostFree < mb) {
      throw new KdlError('KDL_ERR_NO_CAPACITY', `the host is short of memory: ${Math.round(this.#host?.availableMb() ?? 0)} MiB available, ${this.#host?.floorMb ?? 0} MiB kept free (KINDLING_MEMORY_FLOOR_MB); ${Math.ceil(mb)} MiB more do not fit`, { details: { reason: 'host-memory' } })
    }
    // Reserved before the victims go: their pools refill at once, and must not take the room made here.
    this.#reserved += mb
    for (const inst of victims) {
      this.#log.info({ instance: inst.id, fn: inst.fn, runtime: inst.runtime }, 'evicted an idle instance for the memory budget')
      void this.destroy(inst)
    }
  }

  /**
   * A refill caused by a take starts a moment later: the call that took the instance is on the event
   * loop right now (its load, its first bytes), and a refill's own work — directories, cgroup files, the
   * spawn request — would interleave with it. A refill never blocks a call; now it does not slow one.
   */
  #afterTake(fill: () => void): void {
    setTimeout(fill, REFILL_DELAY_MS).unref()
  }

  /** The instance is about to serve a call: give it a full CPU share (it was started in the background). */
  #serving(inst: Instance): void {
    this.backend.setPriority?.(inst.id, 'serving').catch((err: unknown) => this.#log.warn({ err, instance: inst.id }, 'cannot raise the CPU share of an instance'))
  }

  /**
   * A refill failed. An instance killed from outside while it started (lostToKill) says nothing about the
   * backend: the pool refills at once. Any other failure may repeat: the pool waits `retryMs` first.
   */
  #refillAfter(err: unknown, pool: { retryTimer: NodeJS.Timeout | undefined }, again: () => void, fields: Record<string, string | number>, msg: string): void {
    if (lostToKill(err)) {
      this.#log.warn({ err, ...fields }, `${msg}: killed while it started`)
      again()
      return
    }
    this.#log.error({ err, ...fields }, msg)
    this.#retryLater(pool, again)
  }

  /** A refill found the budget used up: the pool's unmet state begins (said once) or goes on (backs off). */
  #short(pool: Shortable, label: string, target: number, again: () => void, fields: Record<string, string | number>, reason: Unmet['reason']): void {
    const u = pool.unmet
    if (u === undefined) {
      pool.unmet = { reason, since: Date.now(), retries: 0, delayMs: this.#retryMs }
      const why = reason === 'budget' ? 'the memory budget is used up' : 'the host is down to its memory floor'
      const data = { pool: label, reason, target, idle: pool.idle.length, ...this.memory() }
      this.#log.warn({ ...fields, ...data }, `pool below its target: ${why}; it fills when memory comes free`)
      this.#events?.add({ type: 'pool.unmet', function: typeof fields['fn'] === 'string' ? fields['fn'] : undefined, message: `${label} below its target (${pool.idle.length} of ${target}): ${why}`, data })
    } else {
      u.retries++
      u.delayMs = Math.min(UNMET_MAX_DELAY_MS, u.delayMs * 2)
    }
    if (this.#closed || pool.retryTimer !== undefined) return
    pool.retryTimer = setTimeout(() => { pool.retryTimer = undefined; again() }, pool.unmet?.delayMs ?? this.#retryMs)
    pool.retryTimer.unref()
  }

  /** A pool's unmet state ends: it reached its target, or it was removed. */
  #met(pool: Shortable, label: string, how: 'filled' | 'removed'): void {
    const u = pool.unmet
    if (u === undefined) return
    pool.unmet = undefined
    const data = { pool: label, reason: u.reason, how, unmetMs: Date.now() - u.since, retries: u.retries }
    this.#log.info(data, how === 'filled' ? 'pool reached its target again' : 'a pool below its target was removed')
    this.#events?.add({ type: 'pool.met', message: `${label} ${how === 'filled' ? 'reached its target' : 'was removed'} after ${data.unmetMs} ms below it`, data })
  }

  #retryLater(pool: { retryTimer: NodeJS.Timeout | undefined }, again: () => void): void {
    if (this.#closed || pool.retryTimer !== undefined) return
    pool.retryTimer = setTimeout(() => { pool.retryTimer = undefined; again() }, this.#retryMs)
    pool.retryTimer.unref()
  }
}

/** A prewarm pool's key: one per function version. */
function prewarmKey(name: string, version: number): string {
  return `${name}@${version}`
}

function reasonOf(err: unknown): Unmet['reason'] {
  return (err as { details?: { reason?: string } }).details?.reason === 'host-memory' ? 'host-memory' : 'budget'
}

function unmetView(p: Shortable): Pick<PoolSnapshot, 'unmet' | 'unmetSince' | 'unmetRetries'> {
  return p.unmet === undefined ? {} : { unmet: p.unmet.reason, unmetSince: new Date(p.unmet.since).toISOString(), unmetRetries: p.unmet.retries }
}
