import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { ContainerBackend, InstanceExit } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import type { FunctionRecord, RuntimeSpec } from '../common/types.js'
import { Instance } from './instance.js'
import { dispatcherFor, load, unload } from './runtime-client.js'

export interface PoolManagerOptions {
  backend: ContainerBackend
  log: Logger
  pidsLimit: number
  /** Retry delay after a failed background start, so a broken backend is not hammered. @default 1000 */
  retryMs?: number
}

/** The resources an instance is started with; generic instances only serve functions that ask for the same. */
export interface Resources {
  memoryMb: number
  cpu: number
}

interface GenericPool {
  spec: RuntimeSpec
  idle: Instance[]
  starting: number
  retryTimer: NodeJS.Timeout | undefined
}

interface PrewarmPool {
  record: FunctionRecord
  codeDir: string
  idle: Instance[]
  filling: number
  retryTimer: NodeJS.Timeout | undefined
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
  readonly #generic = new Map<string, GenericPool>()
  readonly #prewarm = new Map<string, PrewarmPool>()
  readonly #all = new Map<string, Instance>()
  readonly #goneListeners: InstanceGoneListener[] = []
  /** Functions the load guard quarantined: their new instances start in the quarantine group. */
  readonly #quarantined = new Set<string>()
  #closed = false

  constructor(opts: PoolManagerOptions) {
    this.backend = opts.backend
    this.#log = opts.log
    this.#pidsLimit = opts.pidsLimit
    this.#retryMs = opts.retryMs ?? 1000
    this.backend.onExit((exit) => this.#onExit(exit))
  }

  /** Stops instances an earlier run left behind (found by the backend's labels / run directory). */
  async reapOrphans(): Promise<number> {
    const found = (await this.backend.list()).filter((o) => !this.#all.has(o.id))
    await Promise.all(found.map((o) => this.backend.stop(o.id)))
    if (found.length > 0) this.#log.info({ count: found.length }, 'reaped orphan instances')
    return found.length
  }

  /** Adds or reconfigures a runtime's generic pool and fills it to `poolSize` in the background. */
  setRuntime(spec: RuntimeSpec): void {
    const pool = this.#generic.get(spec.name)
    if (pool === undefined) {
      this.#generic.set(spec.name, { spec, idle: [], starting: 0, retryTimer: undefined })
    } else {
      const resized = pool.spec.memoryMb !== spec.memoryMb || pool.spec.cpu !== spec.cpu || pool.spec.image !== spec.image
      pool.spec = spec
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
    return { memoryMb: record.memoryMb ?? rt.memoryMb, cpu: record.cpu ?? rt.cpu }
  }

  /**
   * Quarantine (load guard): the function's next instances start in the isolated group, so generic
   * instances are no longer used for it and its idle prewarmed ones are replaced.
   */
  setQuarantined(fn: string, on: boolean): void {
    if (on === this.#quarantined.has(fn)) return
    if (on) this.#quarantined.add(fn)
    else this.#quarantined.delete(fn)
    const pool = this.#prewarm.get(fn)
    if (pool !== undefined) {
      for (const inst of pool.idle.splice(0)) void this.destroy(inst)
      this.#fillPrewarm(fn)
    }
  }

  isQuarantined(fn: string): boolean {
    return this.#quarantined.has(fn)
  }

  /** An instance for `fn`: a generic one (unless `fn` is quarantined) or a newly started one. */
  async takeOrStart(fn: string, runtime: string, res: Resources): Promise<{ inst: Instance; started: boolean }> {
    const quarantined = this.#quarantined.has(fn)
    const taken = quarantined ? undefined : this.takeGeneric(runtime, res)
    if (taken !== undefined) return { inst: taken, started: false }
    return { inst: await this.start(runtime, `fn:${fn}`, res, quarantined), started: true }
  }

  /** A started, code-less instance of the runtime with matching resources, or undefined (never waits). */
  takeGeneric(runtime: string, res: Resources): Instance | undefined {
    const pool = this.#generic.get(runtime)
    if (pool === undefined || pool.spec.memoryMb !== res.memoryMb || pool.spec.cpu !== res.cpu) return undefined
    const inst = pool.idle.shift()
    if (inst !== undefined) this.#fillGeneric(runtime)
    return inst
  }

  /** Starts a new generic instance (the `cold` path). */
  async start(runtime: string, pool: string, res: Resources, quarantine = false): Promise<Instance> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
    const spec = this.runtime(runtime)
    if (spec === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${runtime}" is not configured`)
    const id = `kdl-${randomBytes(6).toString('hex')}`
    const t0 = performance.now()
    const handle = await this.backend.start({
      id, runtime, pool, memoryMb: res.memoryMb, cpu: res.cpu, pidsLimit: this.#pidsLimit, network: 'none', quarantine, image: spec.image,
    })
    const inst = new Instance(handle, dispatcherFor(handle.address), performance.now() - t0, quarantine)
    this.#all.set(id, inst)
    if (this.#closed) {
      await this.destroy(inst)
      throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
    }
    return inst
  }

  /** Loads a function into a generic instance; on failure the instance is destroyed (it can't be trusted). */
  async load(inst: Instance, record: FunctionRecord, codeDir: string): Promise<number> {
    inst.state = 'loading'
    try {
      const inside = await this.backend.prepareCode(inst.id, codeDir)
      const t0 = performance.now()
      await load(inst.dispatcher, { codeDir: inside, entrypoint: record.entrypoint, function: record.name, version: record.version, env: record.env })
      inst.fn = record.name
      inst.version = record.version
      inst.state = 'loaded'
      return performance.now() - t0
    } catch (err) {
      await this.destroy(inst)
      throw err
    }
  }

  /** Recycle mode: unload, then load the same function afresh, off the request path. */
  async reload(inst: Instance, record: FunctionRecord, codeDir: string): Promise<void> {
    inst.state = 'recycling'
    try {
      await unload(inst.dispatcher)
    } catch (err) {
      await this.destroy(inst)
      throw err
    }
    await this.load(inst, record, codeDir)
  }

  /** Keeps `record.prewarm` code-loaded instances of this version; an earlier version's are destroyed. */
  setPrewarm(record: FunctionRecord, codeDir: string, seed?: Instance): void {
    const pool = this.#prewarm.get(record.name)
    if (pool !== undefined && pool.record.version !== record.version) this.removePrewarm(record.name)
    const current = this.#prewarm.get(record.name)
    if (current === undefined) {
      this.#prewarm.set(record.name, { record, codeDir, idle: [], filling: 0, retryTimer: undefined })
    } else {
      current.record = record
      for (const inst of current.idle.splice(record.prewarm)) void this.destroy(inst)
    }
    const p = this.#prewarm.get(record.name)
    if (seed !== undefined && p !== undefined) {
      if (p.idle.length < record.prewarm) p.idle.push(seed)
      else void this.destroy(seed)
    }
    this.#fillPrewarm(record.name)
  }

  removePrewarm(name: string): void {
    const pool = this.#prewarm.get(name)
    if (pool === undefined) return
    this.#prewarm.delete(name)
    clearTimeout(pool.retryTimer)
    for (const inst of pool.idle.splice(0)) void this.destroy(inst)
  }

  /** A code-loaded instance of exactly this version, or undefined (never waits). */
  takePrewarmed(name: string, version: number): Instance | undefined {
    const pool = this.#prewarm.get(name)
    if (pool === undefined || pool.record.version !== version) return undefined
    const inst = pool.idle.shift()
    if (inst !== undefined) this.#fillPrewarm(name)
    return inst
  }

  async destroy(inst: Instance): Promise<void> {
    if (inst.state === 'dead') return
    inst.state = 'dead'
    this.#all.delete(inst.id)
    this.#dropFromPools(inst)
    await inst.dispatcher.destroy().catch(() => {})
    await this.backend.stop(inst.id).catch((err: unknown) => this.#log.error({ err, instance: inst.id }, 'stopping an instance failed'))
  }

  onInstanceGone(listener: InstanceGoneListener): void {
    this.#goneListeners.push(listener)
  }

  instances(): IterableIterator<Instance> {
    return this.#all.values()
  }

  snapshot(): PoolSnapshot[] {
    const out: PoolSnapshot[] = []
    for (const [runtime, p] of this.#generic) {
      out.push({ pool: `generic:${runtime}`, kind: 'generic', runtime, target: p.spec.poolSize, idle: p.idle.length, starting: p.starting })
    }
    for (const [name, p] of this.#prewarm) {
      out.push({ pool: `fn:${name}`, kind: 'prewarm', runtime: p.record.runtime, function: name, version: p.record.version, target: p.record.prewarm, idle: p.idle.length, starting: p.filling })
    }
    return out
  }

  async close(): Promise<void> {
    this.#closed = true
    for (const p of this.#generic.values()) clearTimeout(p.retryTimer)
    for (const p of this.#prewarm.values()) clearTimeout(p.retryTimer)
    await Promise.all([...this.#all.values()].map((inst) => this.destroy(inst)))
    await this.backend.close()
  }

  #onExit(exit: InstanceExit): void {
    const inst = this.#all.get(exit.id)
    if (inst === undefined) return
    inst.state = 'dead'
    this.#all.delete(inst.id)
    this.#dropFromPools(inst)
    void inst.dispatcher.destroy().catch(() => {})
    for (const l of this.#goneListeners) l(inst, exit)
  }

  #dropFromPools(inst: Instance): void {
    const g = this.#generic.get(inst.runtime)
    if (g !== undefined) {
      const i = g.idle.indexOf(inst)
      if (i >= 0) { g.idle.splice(i, 1); this.#fillGeneric(inst.runtime) }
    }
    if (inst.fn !== undefined) {
      const p = this.#prewarm.get(inst.fn)
      const i = p?.idle.indexOf(inst) ?? -1
      if (p !== undefined && i >= 0) { p.idle.splice(i, 1); this.#fillPrewarm(inst.fn) }
    }
  }

  #fillGeneric(runtime: string): void {
    const pool = this.#generic.get(runtime)
    if (pool === undefined || this.#closed || pool.retryTimer !== undefined) return
    while (pool.idle.length + pool.starting < pool.spec.poolSize) {
      pool.starting++
      const spec = pool.spec
      this.start(runtime, `generic:${runtime}`, { memoryMb: spec.memoryMb, cpu: spec.cpu }).then((inst) => {
        pool.starting--
        // The runtime may have been resized or removed while this one started.
        if (this.#generic.get(runtime) === pool && pool.spec === spec && pool.idle.length < spec.poolSize) pool.idle.push(inst)
        else void this.destroy(inst)
      }, (err: unknown) => {
        pool.starting--
        if (this.#closed) return
        this.#log.error({ err, runtime }, 'generic instance failed to start')
        this.#retryLater(pool, () => this.#fillGeneric(runtime))
      })
    }
  }

  #fillPrewarm(name: string): void {
    const pool = this.#prewarm.get(name)
    if (pool === undefined || this.#closed || pool.retryTimer !== undefined) return
    while (pool.idle.length + pool.filling < pool.record.prewarm) {
      pool.filling++
      const record = pool.record
      this.#prepareLoaded(record, pool.codeDir).then((inst) => {
        pool.filling--
        if (this.#prewarm.get(name) === pool && pool.record.version === record.version && pool.idle.length < pool.record.prewarm) pool.idle.push(inst)
        else void this.destroy(inst)
      }, (err: unknown) => {
        pool.filling--
        if (this.#closed) return
        this.#log.error({ err, fn: name }, 'prewarm instance failed to load')
        this.#retryLater(pool, () => this.#fillPrewarm(name))
      })
    }
  }

  /** A generic instance (taken or started) with the function loaded: what a prewarm refill produces. */
  async #prepareLoaded(record: FunctionRecord, codeDir: string): Promise<Instance> {
    const { inst } = await this.takeOrStart(record.name, record.runtime, this.resourcesOf(record))
    await this.load(inst, record, codeDir)
    return inst
  }

  #retryLater(pool: { retryTimer: NodeJS.Timeout | undefined }, again: () => void): void {
    if (this.#closed || pool.retryTimer !== undefined) return
    pool.retryTimer = setTimeout(() => { pool.retryTimer = undefined; again() }, this.#retryMs)
    pool.retryTimer.unref()
  }
}
