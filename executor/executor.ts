import type { Logger } from 'pino'
import { aliasesOf, liveVersions, sharesOf, splitQualifier, targetsOf, versionQualifier } from '../common/aliases.js'
import { lostToKill } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import { NAME_PATTERN } from '../common/spec.js'
import type { EventLog } from '../common/events.js'
import type { Metrics } from '../common/metrics.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord } from '../common/types.js'
import type { Instance } from '../poolmgr/instance.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, ResolvedRoute, RouteSpec } from './client.js'

const NAME_RE = new RegExp(NAME_PATTERN)
/** How long a route to a version another replica deployed waits for this replica's preload of it (see adopt). */
const PRELOAD_WAIT_MS = 50
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
  /** Makes a code hash present in the local cache (several replicas: fetched from the shared store); none: always local. */
  ensureCode?: ((hash: string) => Promise<void>) | undefined
  /** This replica's part of a function's `maxInstances` (several replicas split it); none: all of it. */
  instanceShare?: ((cap: number) => number) | undefined
}

/**
 * The control plane of invocations: turns a function into a loaded instance (prewarmed → specialized →
 * cold) and applies the persistence mode when the router gives the instance back.
 */
export class Executor implements ExecutorClient {
  readonly #o: ExecutorOptions
  /** Each function's head: the version `latest` serves, with its aliases. */
  readonly #records = new Map<string, FunctionRecord>()
  /** Versions read so far, by function (immutable once stored: cached until pruned or deleted). */
  readonly #versions = new Map<string, Map<number, FunctionRecord>>()
  readonly #leased = new Map<string, Instance>()
  /** Instances a router handed over (`handover`), loaded and unleased, by `fn@version`: the next acquire takes one. */
  readonly #handedOver = new Map<string, Array<{ inst: Instance; timer: NodeJS.Timeout }>>()
  readonly #listeners = new Set<(e: ExecutorEvent) => void>()
  readonly #reported = new Set<string>()
  /**
   * Bumped at every change of a function's head (routed, removed): a store read that raced a change is not
   * cached over it (a call's read of the old head must not undo a deploy or a delete applied meanwhile).
   */
  readonly #epochs = new Map<string, number>()
  /** Code hashes known to be in the local cache (ensureCode done). */
  readonly #present = new Set<string>()

  constructor(opts: ExecutorOptions) {
    this.#o = opts
    opts.pools.onInstanceGone((inst, exit) => {
      this.#leased.delete(inst.id)
      if (inst.fn !== undefined) {
        this.#reportExit(inst.fn, inst.id, exit.reason, { code: exit.code, signal: exit.signal })
        this.#emit({ type: 'instance-gone', name: inst.fn, instanceId: inst.id, reason: exit.reason })
      }
    })
    // Quarantine on a backend that cannot move an instance: the router drains it and gives it back.
    opts.pools.onMustRetire((inst) => {
      if (inst.fn !== undefined && this.#leased.has(inst.id)) this.#emit({ type: 'instance-retire', name: inst.fn, instanceId: inst.id })
    })
  }

  /**
   * Start-up: prewarm pools of every stored function's routed versions, the most recently changed function
   * first (its refills queue first at the start gate, whose turns for refills are bounded: calls keep theirs).
   */
  async restore(): Promise<void> {
    const records = (await this.#o.store.listFunctions()).sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0))
    for (const record of records) {
      this.#records.set(record.name, record)
      if (this.#o.pools.runtime(record.runtime) !== undefined) await this.#applyPrewarm(record, undefined)
    }
  }

  async resolve(key: string): Promise<ResolvedRoute> {
    const { name, qualifier } = splitQualifier(key)
    const head = await this.#record(name)
    const asVersion = versionQualifier(qualifier)
    let pairs: Array<[number, number]>
    if (asVersion !== undefined) {
      pairs = [[asVersion, 1]]
    } else {
      const target = aliasesOf(head)[qualifier]
      if (target === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no alias "${qualifier.slice(0, 80)}"`)
      pairs = targetsOf(target)
    }
    const targets = []
    const share = this.#o.instanceShare
    for (const [v, weight] of pairs) {
      const spec = routeSpecOf(await this.version(name, v))
      targets.push({ spec: share === undefined ? spec : { ...spec, maxInstances: share(spec.maxInstances) }, weight })
    }
    return { key, name, qualifier, targets }
  }

  async acquire(name: string, version: number): Promise<Lease> {
    await this.#record(name)
    const record = await this.version(name, version)
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
    const handed = this.#takeHandedOver(name, version)
    if (handed !== undefined) {
      handed.state = 'leased'
      this.#leased.set(handed.id, handed)
      return { instanceId: handed.id, address: handed.handle.address, dispatcher: handed.dispatcher, fn: name, version, kind: 'prewarmed', startMs: 0, loadMs: 0, startedAt: handed.startedAt }
    }
    let inst = pools.takePrewarmed(name, version)
    if (inst === undefined) {
      const got = await pools.takeOrStart(name, record.runtime, pools.resourcesOf(record), true, record.version)
      inst = got.inst
      kind = 'specialized'
      if (got.started) {
        kind = 'cold'
        pools.noteColdStart(record.runtime)
        startMs = inst.startMs
        m.coldStartPhase.observe({ phase: 'start' }, startMs / 1000)
      }
      await this.#ensureCode(record.codeHash)
      loadMs = await pools.load(inst, record, this.#o.codeDirOf(record.codeHash))
      m.coldStartPhase.observe({ phase: 'load' }, loadMs / 1000)
    }
    m.coldStarts.inc({ kind })
    inst.state = 'leased'
    this.#leased.set(inst.id, inst)
    return { instanceId: inst.id, address: inst.handle.address, dispatcher: inst.dispatcher, fn: name, version, kind, startMs, loadMs, startedAt: inst.startedAt }
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
    const routed = record !== undefined && this.#versions.get(lease.fn)?.has(lease.version) === true
    if (outcome === 'handover' && routed) {
      this.#leased.delete(inst.id)
      this.#keepHandedOver(inst, lease.fn, lease.version)
      return false
    }
    if (outcome !== 'ok') return retire(outcome)
    if (!routed) return retire('retire')
    return true
  }

  /** Keeps a handed-over instance loaded for the next acquire of its version, for at most its `idleTimeoutMs`. */
  #keepHandedOver(inst: Instance, fn: string, version: number): void {
    const key = `${fn}@${version}`
    const list = this.#handedOver.get(key) ?? []
    const held = {
      inst,
      timer: setTimeout(() => {
        const i = list.indexOf(held)
        if (i < 0) return
        list.splice(i, 1)
        if (list.length === 0 && this.#handedOver.get(key) === list) this.#handedOver.delete(key)
        this.#o.metrics.recycles.inc({ reason: 'idle' })
        void this.#o.pools.destroy(inst).catch((err: unknown) => this.#o.log.warn({ err, instance: inst.id }, 'cannot stop a handed-over instance'))
      }, this.#versions.get(fn)?.get(version)?.idleTimeoutMs ?? 60_000),
    }
    held.timer.unref()
    list.push(held)
    this.#handedOver.set(key, list)
  }

  /** A live instance of this version a router handed over, if one waits. */
  #takeHandedOver(fn: string, version: number): Instance | undefined {
    const key = `${fn}@${version}`
    const list = this.#handedOver.get(key)
    while (list !== undefined && list.length > 0) {
      const { inst, timer } = list.shift()!
      clearTimeout(timer)
      if (list.length === 0) this.#handedOver.delete(key)
      if (inst.state !== 'dead') return inst
    }
    return undefined
  }

  /**
   * Issue 13, a leader failover: a router hands over an instance the previous controller leased to it. True when
   * the instance is leased here from now on (its release and diagnosis work as for one acquired here); false when
   * the version is no longer stored, or the backend no longer has the instance — the router drops its slot.
   */
  async adoptLease(lease: Pick<Lease, 'instanceId' | 'fn' | 'version'>): Promise<boolean> {
    if (this.#leased.has(lease.instanceId)) return true
    let record: FunctionRecord
    try {
      record = await this.version(lease.fn, lease.version)
    } catch {
      return false
    }
    const inst = await this.#o.pools.adopt(lease.instanceId, record)
    if (inst === undefined) return false
    inst.state = 'leased'
    this.#leased.set(inst.id, inst)
    return true
  }

  /** The versions each function's aliases route to now: what a router reconnecting after a gap compares its routes with. */
  routedVersions(): Record<string, number[]> {
    const out: Record<string, number[]> = {}
    for (const head of this.#records.values()) out[head.name] = [...liveVersions(head)]
    return out
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
      const { inst } = await pools.takeOrStart(record.name, record.runtime, pools.resourcesOf(record), true, record.version)
      await pools.load(inst, record, this.#o.codeDirOf(record.codeHash), record.prewarm > 0)
      return inst
    })
  }

  /**
   * A version was stored (`version`) and the function's head written (`head`): route by the head's aliases
   * from now on. The trial instance seeds the version's prewarm pool when it is routed and prewarmed.
   */
  async deployed(head: FunctionRecord, version: FunctionRecord, trial: Instance | undefined): Promise<void> {
    this.#cacheVersion(version)
    await this.routed(head, trial)
    this.#o.events.add({ type: 'deployed', function: head.name, message: `version ${version.version} deployed`, data: { version: version.version, serving: head.version } })
  }

  /**
   * The head changed (a deploy, an alias, a rollback, a canary step): calls route by it from now on; the
   * versions still routed keep their instances and get their prewarm share, the others drain and retire.
   */
  async routed(head: FunctionRecord, seed?: Instance): Promise<void> {
    this.#bump(head.name)
    this.#records.set(head.name, head)
    // Calls move first; the pools follow (reading a version record may wait for the store).
    this.#emit({ type: 'function-changed', name: head.name, live: [...liveVersions(head)] })
    await this.#applyPrewarm(head, seed)
  }

  /**
   * A head another replica wrote (issue 11). When it routes `latest` to a version this replica did not route,
   * that version is loaded into an instance first (its code fetched when it is not here), as the deploying
   * replica's trial load was, and seeds its prewarm pool, so the first call here is warm too — but the route
   * waits for that at most PRELOAD_WAIT_MS: a slower preload (no idle generic instance, a big archive) seeds
   * the pool when it is done, and the version is routed at once. The head is routed only while the store still
   * holds it: one that changed meanwhile is read again, so a preload never routes an older head over a newer
   * one (whatever the replicas' clocks say).
   */
  async adopt(head: FunctionRecord): Promise<void> {
    let current = head
    for (let tries = 0; ; tries++) {
      const preload = tries < 5 ? this.#preload(current) : Promise.resolve(undefined)
      let timer: NodeJS.Timeout | undefined
      const late = Symbol('late')
      const seed = await Promise.race([preload, new Promise<typeof late>((r) => { timer = setTimeout(() => r(late), PRELOAD_WAIT_MS) })])
      clearTimeout(timer)
      let now: FunctionRecord | undefined
      try {
        now = await this.#o.store.getFunction(current.name)
      } catch (err) {
        this.#dropPreload(preload, undefined)
        throw err
      }
      // Deleted meanwhile: the delete's own change removes it here.
      if (now === undefined) return this.#dropPreload(preload, undefined)
      if (tries >= 5 || (now.updatedAt === current.updatedAt && now.createdAt === current.createdAt && now.version === current.version)) {
        if (seed === late) {
          await this.routed(current)
          this.#dropPreload(preload, current)
        } else {
          await this.routed(current, seed)
        }
        return
      }
      this.#dropPreload(preload, undefined)
      current = now
    }
  }

  /** A preload that was not used as a seed: it joins `head`'s prewarm pool if that head is still routed, else it goes. */
  #dropPreload(preload: Promise<Instance | undefined>, head: FunctionRecord | undefined): void {
    void preload.then((inst) => {
      if (inst === undefined) return
      if (head !== undefined && this.#records.get(head.name) === head) void this.#applyPrewarm(head, inst)
      else void this.#o.pools.destroy(inst)
    })
  }

  /** An instance loaded with the version `head` serves, when this replica does not route that version yet. */
  async #preload(head: FunctionRecord): Promise<Instance | undefined> {
    const before = this.#records.get(head.name)
    if (before !== undefined && liveVersions(before).has(head.version)) return undefined
    try {
      // Read without #record: a head read for a preload must not become the routed one before routed() says so.
      const record = this.#versions.get(head.name)?.get(head.version) ?? await this.#o.store.getVersion(head.name, head.version) ?? (stripHead(head))
      if (record.prewarm === 0 || this.#o.pools.runtime(record.runtime) === undefined) return undefined
      await this.#ensureCode(record.codeHash)
      return await this.trialLoad(record)
    } catch (err) {
      this.#o.log.warn({ err, fn: head.name, version: head.version }, 'a version another replica deployed was not preloaded here')
      return undefined
    }
  }

  /** The function's head as routed now (no I/O), if it was read or deployed. */
  head(name: string): FunctionRecord | undefined {
    return this.#records.get(name)
  }

  /** Every function this executor routes or has read. */
  knownFunctions(): IterableIterator<string> {
    return this.#records.keys()
  }

  /** Versions of `name` another replica pruned are forgotten here too (their calls end; no new call reaches them). */
  retainVersions(name: string, versions: ReadonlySet<number>): void {
    for (const v of [...this.#versions.get(name)?.keys() ?? []]) if (!versions.has(v)) this.forgetVersion(name, v)
  }

  /** The replicas changed: every function's routes are looked up again (their share of maxInstances with them). */
  reshare(): void {
    for (const head of this.#records.values()) this.#emit({ type: 'function-changed', name: head.name, live: [...liveVersions(head)] })
  }

  async #ensureCode(hash: string): Promise<void> {
    if (this.#o.ensureCode === undefined || this.#present.has(hash)) return
    await this.#o.ensureCode(hash)
    this.#present.add(hash)
  }

  /** A pruned version: no call reaches it any more. */
  forgetVersion(name: string, version: number): void {
    this.#versions.get(name)?.delete(version)
  }

  /** The function was deleted: stop routing to it; in-flight calls finish, then their instances go. */
  removed(name: string): void {
    this.#bump(name)
    this.#records.delete(name)
    this.#versions.delete(name)
    this.#o.pools.removePrewarm(name)
    this.#o.events.add({ type: 'deleted', function: name, message: 'function deleted' })
    this.#emit({ type: 'function-changed', name, live: [] })
  }

  /** One stored version (cached); KDL_ERR_VERSION_NOT_FOUND when it was never deployed or was pruned. */
  async version(name: string, version: number): Promise<FunctionRecord> {
    const cached = this.#versions.get(name)?.get(version)
    if (cached !== undefined) return cached
    const head = await this.#record(name)
    const epoch = this.#epochs.get(name)
    // A function deployed before versions were kept has its head only.
    const stored = await this.#o.store.getVersion(name, version) ?? (head.version === version ? stripHead(head) : undefined)
    if (stored === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no version ${version} (never deployed, or pruned)`)
    // Deleted (and perhaps deployed again, its numbers starting over) while this was read: not cached.
    if (this.#epochs.get(name) === epoch) this.#cacheVersion(stored)
    return stored
  }

  #cacheVersion(record: FunctionRecord): void {
    let m = this.#versions.get(record.name)
    if (m === undefined) { m = new Map(); this.#versions.set(record.name, m) }
    m.set(record.version, record)
  }

  /**
   * Prewarm pools for the versions the head routes to: a version gets its share of its own `prewarm` — the
   * largest share of calls any alias gives it, rounded up, at least one — so a canary's first calls are not cold.
   */
  async #applyPrewarm(head: FunctionRecord, seed: Instance | undefined): Promise<void> {
    const pools = this.#o.pools
    const shares = new Map<number, number>()
    for (const target of Object.values(aliasesOf(head))) {
      for (const [v, share] of sharesOf(target)) shares.set(v, Math.max(shares.get(v) ?? 0, share))
    }
    const kept = new Set<number>()
    for (const [v, share] of shares) {
      let record: FunctionRecord
      try {
        record = await this.version(head.name, v)
      } catch (err) {
        this.#o.log.error({ err, fn: head.name, version: v }, 'an alias names a version that cannot be read: not prewarmed')
        continue
      }
      if (record.prewarm === 0) continue
      kept.add(v)
      try {
        await this.#ensureCode(record.codeHash)
      } catch (err) {
        this.#o.log.error({ err, fn: head.name, version: v }, 'the version\'s code is not available here: not prewarmed')
        continue
      }
      const target = Math.min(record.prewarm, Math.max(1, Math.ceil(record.prewarm * share - 1e-9)))
      pools.setPrewarm(record, this.#o.codeDirOf(record.codeHash), seed?.version === v ? seed : undefined, target)
      if (seed?.version === v) seed = undefined
    }
    pools.retainPrewarm(head.name, kept)
    if (seed !== undefined) void pools.destroy(seed)
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
    for (;;) {
      const epoch = this.#epochs.get(name)
      const stored = await this.#o.store.getFunction(name)
      // A change applied while the store was read wins over what was read: read again.
      if (this.#epochs.get(name) !== epoch) {
        const now = this.#records.get(name)
        if (now !== undefined) return now
        continue
      }
      if (stored === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
      this.#records.set(name, stored)
      return stored
    }
  }

  #bump(name: string): void {
    this.#epochs.set(name, (this.#epochs.get(name) ?? 0) + 1)
  }

  #emit(e: ExecutorEvent): void {
    for (const l of this.#listeners) {
      try { l(e) } catch (err) { this.#o.log.error({ err }, 'executor listener failed') }
    }
  }
}

function routeSpecOf(r: FunctionRecord): RouteSpec {
  return {
    name: r.name, version: r.version, mode: r.mode, concurrency: r.concurrency, maxInstances: r.maxInstances,
    queueTimeoutMs: r.queueTimeoutMs, timeoutMs: r.timeoutMs, idleTimeoutMs: r.idleTimeoutMs,
    maxInvocations: r.maxInvocations, maxAgeMs: r.maxAgeMs,
  }
}

/** A head without its head-only fields: the version record it was written from. */
export function stripHead(head: FunctionRecord): FunctionRecord {
  const { aliases: _a, lastVersion: _l, canary: _c, ...version } = head
  return version
}
