import type { Logger } from 'pino'
import { lostToKill } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import { NAME_PATTERN } from '../common/spec.js'
import type { EventLog } from '../common/events.js'
import type { Metrics } from '../common/metrics.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord } from '../common/types.js'
import type { Instance } from '../poolmgr/instance.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, RouteSpec } from './client.js'

const NAME_RE = new RegExp(NAME_PATTERN)
/** Instances one acquisition may lose for reasons that may repeat on the next one (see #retrying). */
const ACQUIRE_ATTEMPTS = 5

export interface ExecutorOptions {
  store: Store
  pools: PoolManager
  /** Host directory of a content-addressed code hash. */
  codeDirOf: (hash: string) => string
  log: Logger
  metrics: Metrics
  events: EventLog
}

/**
 * The control plane of invocations: turns a function into a loaded instance (prewarmed → specialized →
 * cold) and applies the persistence mode when the router gives the instance back.
 */
export class Executor implements ExecutorClient {
  readonly #o: ExecutorOptions
  readonly #records = new Map<string, FunctionRecord>()
  readonly #leased = new Map<string, Instance>()
  readonly #listeners = new Set<(e: ExecutorEvent) => void>()
  readonly #reported = new Set<string>()

  constructor(opts: ExecutorOptions) {
    this.#o = opts
    opts.pools.onInstanceGone((inst, exit) => {
      this.#leased.delete(inst.id)
      if (inst.fn !== undefined) {
        this.#reportExit(inst.fn, inst.id, exit.reason, { code: exit.code, signal: exit.signal })
        this.#emit({ type: 'instance-gone', name: inst.fn, instanceId: inst.id, reason: exit.reason })
      }
    })
  }

  /** Start-up: prewarm pools of every stored function. */
  async restore(): Promise<void> {
    for (const record of await this.#o.store.listFunctions()) {
      this.#records.set(record.name, record)
      if (record.prewarm > 0 && this.#o.pools.runtime(record.runtime) !== undefined) {
        this.#o.pools.setPrewarm(record, this.#o.codeDirOf(record.codeHash))
      }
    }
  }

  async resolve(name: string): Promise<RouteSpec> {
    const r = await this.#record(name)
    return {
      name: r.name, version: r.version, mode: r.mode, concurrency: r.concurrency, maxInstances: r.maxInstances,
      queueTimeoutMs: r.queueTimeoutMs, timeoutMs: r.timeoutMs, idleTimeoutMs: r.idleTimeoutMs,
      maxInvocations: r.maxInvocations, maxAgeMs: r.maxAgeMs,
    }
  }

  async acquire(name: string, version: number): Promise<Lease> {
    const record = await this.#record(name)
    if (record.version !== version) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" version ${version} is no longer deployed`)
    return this.#retrying(record, () => this.#acquireOnce(record, version))
  }

  /**
   * Runs `attempt` again while it fails for the platform's reasons (issue 8): KDL_ERR_BACKEND means an
   * instance died or never came up while being started or loaded — the call has reached no handler, so it
   * is served on another instance, within the function's `timeoutMs`. An instance killed from outside
   * while it started (lostToKill) says nothing about the next one: those retries are bounded by the
   * deadline alone. Any other loss (an instance that exits or never gets healthy by itself, one lost while
   * loading code) may repeat on every instance: at most ACQUIRE_ATTEMPTS of those. Every other failure is
   * final at once: the function's own (KDL_ERR_LOAD_FAILED: refused, crashed or timed out at load), or one
   * another instance would meet too (no capacity, shutting down).
   */
  async #retrying<T>(record: FunctionRecord, attempt: () => Promise<T>): Promise<T> {
    const t0 = performance.now()
    let mayRepeat = 0
    for (let n = 1; ; n++) {
      try {
        return await attempt()
      } catch (err) {
        if ((err as { code?: string }).code !== 'KDL_ERR_BACKEND' || performance.now() - t0 >= record.timeoutMs) throw err
        if (!lostToKill(err) && ++mayRepeat >= ACQUIRE_ATTEMPTS) throw err
        this.#o.log.warn({ err, fn: record.name, attempt: n }, 'instance lost before the call reached it: trying another')
        this.#o.metrics.retries.inc({ stage: 'acquire' })
      }
    }
  }

  async #acquireOnce(record: FunctionRecord, version: number): Promise<Lease> {
    const name = record.name
    const pools = this.#o.pools
    const m = this.#o.metrics
    let kind: Lease['kind'] = 'prewarmed'
    let startMs = 0
    let loadMs = 0
    let inst = pools.takePrewarmed(name, version)
    if (inst === undefined) {
      const got = await pools.takeOrStart(name, record.runtime, pools.resourcesOf(record))
      inst = got.inst
      kind = 'specialized'
      if (got.started) {
        kind = 'cold'
        pools.noteColdStart(record.runtime)
        startMs = inst.startMs
        m.coldStartPhase.observe({ phase: 'start' }, startMs / 1000)
      }
      loadMs = await pools.load(inst, record, this.#o.codeDirOf(record.codeHash))
      m.coldStartPhase.observe({ phase: 'load' }, loadMs / 1000)
    }
    m.coldStarts.inc({ kind })
    inst.state = 'leased'
    this.#leased.set(inst.id, inst)
    return { instanceId: inst.id, dispatcher: inst.dispatcher, fn: name, version, kind, startMs, loadMs, startedAt: inst.startedAt }
  }

  /**
   * The router is done with an instance. The router applies the persistence modes (common/modes.ts): what
   * it gives back with any outcome but `ok` is destroyed. Resolves true when the instance stays leased (an
   * `ok` on the current version), false once it is destroyed.
   */
  async release(lease: Lease, outcome: ReleaseOutcome): Promise<boolean> {
    const inst = this.#leased.get(lease.instanceId)
    if (inst === undefined) return false
    inst.lastUsed = Date.now()
    const record = this.#records.get(lease.fn)
    const retire = async (reason: string): Promise<false> => {
      this.#leased.delete(inst.id)
      this.#o.metrics.recycles.inc({ reason })
      await this.#o.pools.destroy(inst)
      return false
    }
    if (outcome !== 'ok') return retire(outcome)
    if (record === undefined || record.version !== lease.version) return retire('retire')
    return true
  }

  async diagnose(lease: Lease): Promise<'oom' | 'crashed'> {
    const reason = await this.#o.pools.backend.exitReason(lease.instanceId) === 'oom' ? 'oom' : 'crashed'
    this.#reportExit(lease.fn, lease.instanceId, reason, { during: 'call' })
    return reason
  }

  /** One event per lost instance, whichever noticed first: the backend's exit watch or a failed call. */
  #reportExit(fn: string, instance: string, reason: string, data: Record<string, unknown>): void {
    if (this.#reported.has(instance)) return
    this.#reported.add(instance)
    if (this.#reported.size > 1000) this.#reported.delete(this.#reported.values().next().value as string)
    this.#o.events.add({ type: reason === 'oom' ? 'instance-oom' : 'instance-crashed', function: fn, instance, message: `instance ${reason}`, data })
  }

  subscribe(listener: (e: ExecutorEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /**
   * Deploy-time trial: loads the candidate version into a fresh instance. Resolves with the loaded
   * instance (kept as the first prewarmed one when the function wants prewarm); a load failure throws
   * KDL_ERR_LOAD_FAILED with the runtime's message, and nothing is stored.
   */
  async trialLoad(record: FunctionRecord): Promise<Instance> {
    const pools = this.#o.pools
    if (pools.runtime(record.runtime) === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${record.runtime}" is not configured`)
    return this.#retrying(record, async () => {
      const { inst } = await pools.takeOrStart(record.name, record.runtime, pools.resourcesOf(record))
      await pools.load(inst, record, this.#o.codeDirOf(record.codeHash), record.prewarm > 0)
      return inst
    })
  }

  /** A new version is stored: route to it from now on; old instances drain and retire. */
  deployed(record: FunctionRecord, trial: Instance | undefined): void {
    this.#records.set(record.name, record)
    const pools = this.#o.pools
    if (record.prewarm > 0) {
      pools.setPrewarm(record, this.#o.codeDirOf(record.codeHash), trial)
    } else {
      pools.removePrewarm(record.name)
      if (trial !== undefined) void pools.destroy(trial)
    }
    this.#o.events.add({ type: 'deployed', function: record.name, message: `version ${record.version} deployed`, data: { version: record.version } })
    this.#emit({ type: 'function-changed', name: record.name })
  }

  /** The function was deleted: stop routing to it; in-flight calls finish, then their instances go. */
  removed(name: string): void {
    this.#records.delete(name)
    this.#o.pools.removePrewarm(name)
    this.#o.events.add({ type: 'deleted', function: name, message: 'function deleted' })
    this.#emit({ type: 'function-changed', name })
  }

  /** Instances by state for one function (GET /v1/functions/:name). */
  instancesOf(name: string): Record<string, number> {
    const out: Record<string, number> = {}
    for (const inst of this.#o.pools.instances()) {
      if (inst.fn !== name) continue
      out[inst.state] = (out[inst.state] ?? 0) + 1
    }
    return out
  }

  async #record(name: string): Promise<FunctionRecord> {
    const cached = this.#records.get(name)
    if (cached !== undefined) return cached
    if (!NAME_RE.test(name)) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name.slice(0, 80)}" is not deployed`)
    const stored = await this.#o.store.getFunction(name)
    if (stored === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
    this.#records.set(name, stored)
    return stored
  }

  #emit(e: ExecutorEvent): void {
    for (const l of this.#listeners) {
      try { l(e) } catch (err) { this.#o.log.error({ err }, 'executor listener failed') }
    }
  }
}
