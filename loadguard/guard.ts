import { performance } from 'node:perf_hooks'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { CgroupRef } from '../common/backend.js'
import type { EventLog } from '../common/events.js'
import { GuardMetrics, type GuardAction } from './metrics.js'
import { DEFAULT_POLICY, FunctionRange, judge, throttledQuota, type GuardPolicy, type Verdict } from './policy.js'
import type { CgroupReader, GroupLimits } from './reader.js'

/** What the guard needs of an instance (poolmgr's Instance has it). */
export interface GuardedInstance {
  readonly id: string
  readonly fn: string | undefined
  readonly version: number | undefined
  readonly state: string
  readonly quarantined: boolean
  readonly handle: { readonly cgroup?: CgroupRef | undefined }
}

/** What the guard needs of the pool manager. */
export interface GuardPools {
  instances(): Iterable<GuardedInstance>
  setQuarantined(fn: string, on: boolean): void
  isQuarantined(fn: string): boolean
  destroy(inst: GuardedInstance): Promise<void>
}

/** What the guard needs of the backend: the CPU quota knob (`cpu.cfs_quota_us` / `docker update`). */
export interface GuardBackend {
  readonly name: string
  setCpu?(id: string, cores: number): Promise<void>
}

export interface LoadGuardOptions {
  pools: GuardPools
  backend: GuardBackend
  reader: CgroupReader
  events: Pick<EventLog, 'add'>
  registry: Registry
  log: Logger
  policy?: Partial<GuardPolicy>
  /** Monotonic milliseconds; tests pass a fake. @default performance.now */
  clock?: { now(): number }
}

export type GuardLevel = 'normal' | 'throttled' | 'quarantined'

/** A function's guard state as `GET /v1/functions/:name` shows it. */
export interface FunctionGuardState {
  level: GuardLevel
  quarantined: boolean
  range: { learned: boolean; samples: number; cpuMean: number; cpuUpper: number; memoryMean: number; memoryUpper: number }
  instances: Array<{ id: string; cpuRatio: number; memoryBytes: number; pids: number; throttledToCores?: number; quarantined: boolean }>
  lastAction?: { action: GuardAction; at: string; instance?: string | undefined; reason?: string | undefined }
}

interface Watch {
  inst: GuardedInstance
  fn: string
  ref: CgroupRef
  limits: GroupLimits | undefined
  prev: { at: number; cpuNs: number; periods: number; throttled: number; demand: Map<number, number> } | undefined
  currentQuota: number
  throttled: boolean
  /** Consecutive outside samples since the instance's last step. */
  streak: number
  pidsStreak: number
  last: { cpuRatio: number; memoryBytes: number; pids: number } | undefined
  /** The instance's gauge children, bound once (label hashing per set costs as much as a file read). */
  gauges: { cpu: { set(v: number): void }; memory: { set(v: number): void } } | undefined
  /** Passes since it was last read while idle in its pool (see GuardPolicy.idleEvery). */
  idlePasses: number
}

interface FnWatch {
  range: FunctionRange
  level: GuardLevel
  lastOutsideAt: number | undefined
  lastAction: FunctionGuardState['lastAction']
}

/** The numbers of one sample, as events carry them. */
interface Reading {
  verdict: Verdict
  cpuCores: number
  demandCores: number
  throttledRatio: number
  memoryBytes: number
  pids: number
}

/**
 * The load guard (issue 5, DESIGN §5): samples each function instance's cgroup on an interval, keeps each
 * function's normal range, and steps on instances that stay outside it — throttle (lower the CPU quota),
 * quarantine (the function's next instances start in the quarantine group), kill (hard limits) — and
 * releases a function after a calm cool-down. Each action is an event and a metric. Policy: README.md.
 */
export class LoadGuard {
  readonly policy: Readonly<GuardPolicy>
  readonly #o: LoadGuardOptions
  readonly #metrics: GuardMetrics
  readonly #clock: { now(): number }
  readonly #watches = new Map<string, Watch>()
  readonly #fns = new Map<string, FnWatch>()
  #timer: NodeJS.Timeout | undefined
  #ticking: Promise<void> | undefined
  #running = false
  readonly #cost = { ticks: 0, samples: 0, ms: 0 }

  constructor(opts: LoadGuardOptions) {
    this.#o = opts
    this.policy = Object.freeze({ ...DEFAULT_POLICY, ...opts.policy })
    this.#metrics = new GuardMetrics(opts.registry)
    this.#clock = opts.clock ?? performance
  }

  start(): void {
    if (this.#running) return
    this.#running = true
    this.#schedule()
  }

  async stop(): Promise<void> {
    this.#running = false
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#ticking
  }

  /** One sampling pass over every instance (the interval timer calls it; tests call it directly). */
  tick(): Promise<void> {
    this.#ticking ??= this.#tick().finally(() => { this.#ticking = undefined })
    return this.#ticking
  }

  /** The guard state of one function. */
  state(fn: string): FunctionGuardState {
    const f = this.#fns.get(fn)
    const p = this.policy
    const range = f?.range
    const instances: FunctionGuardState['instances'] = []
    for (const w of this.#watches.values()) {
      if (w.fn !== fn || w.last === undefined) continue
      instances.push({
        id: w.inst.id, cpuRatio: round(w.last.cpuRatio), memoryBytes: w.last.memoryBytes, pids: w.last.pids,
        ...(w.throttled ? { throttledToCores: round(w.currentQuota) } : {}), quarantined: w.inst.quarantined,
      })
    }
    return {
      level: f?.level ?? 'normal',
      quarantined: this.#o.pools.isQuarantined(fn),
      range: {
        learned: range?.learned(p) ?? false,
        samples: range?.cpu.count ?? 0,
        cpuMean: round(range?.cpu.mean ?? 0),
        cpuUpper: round(range?.cpuUpper(p) ?? p.cpuCeiling),
        memoryMean: round(range?.memory.mean ?? 0),
        memoryUpper: round(range?.memoryUpper(p) ?? p.memoryCeiling),
      },
      instances,
      ...(f?.lastAction === undefined ? {} : { lastAction: f.lastAction }),
    }
  }

  /** What sampling has cost so far: mean wall time per instance sample (reads + judgement + gauges). */
  cost(): { ticks: number; samples: number; usPerSample: number } {
    const { ticks, samples, ms } = this.#cost
    return { ticks, samples, usPerSample: samples === 0 ? 0 : (ms * 1000) / samples }
  }

  #schedule(): void {
    if (!this.#running) return
    this.#timer = setTimeout(() => {
      this.tick().catch((err: unknown) => this.#o.log.error({ err }, 'load guard pass failed')).finally(() => this.#schedule())
    }, this.policy.intervalMs)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    const t0 = performance.now()
    let sampled = 0
    const seen = new Set<string>()
    // Which instances this pass reads, then (a remote reader) all of them fetched at once, then each judged.
    const due: Watch[] = []
    for (const inst of this.#o.pools.instances()) {
      const ref = inst.handle.cgroup
      // Generic instances run no user code; only instances serving a function are judged.
      if (inst.state === 'dead' || inst.fn === undefined || ref === undefined) continue
      seen.add(inst.id)
      let w = this.#watches.get(inst.id)
      if (w === undefined) {
        // Staggered: the idle instances of one pool are not all read on the same pass.
        w = { inst, fn: inst.fn, ref, limits: undefined, prev: undefined, currentQuota: 0, throttled: false, streak: 0, pidsStreak: 0, last: undefined, gauges: undefined, idlePasses: Math.floor(Math.random() * this.policy.idleEvery) }
        this.#watches.set(inst.id, w)
      }
      // Waiting in a prewarm pool, it serves no call: read every idleEvery-th pass (its first read always, for the baseline).
      if (inst.state === 'loaded' && w.prev !== undefined) {
        if (++w.idlePasses < this.policy.idleEvery) continue
        w.idlePasses = 0
      }
      due.push(w)
    }
    const reader = this.#o.reader
    // A remote reader (the kubernetes node agents) reads the pass in one batch; one that fails here fails each read of
    // this pass: those samples are skipped, the pass goes on.
    if (reader.prefetch !== undefined && due.length > 0) await reader.prefetch(due.map((w) => w.ref)).catch((err: unknown) => this.#o.log.warn({ err }, 'load guard prefetch failed'))
    for (let i = 0; i < due.length; i++) {
      if (await this.#sample(due[i] as Watch)) sampled++
      // The reads are synchronous (~0.1 ms an instance): let calls through between batches of a large pass.
      if ((i + 1) % YIELD_EVERY === 0) await yieldToLoop()
    }
    for (const [id, w] of this.#watches) {
      if (seen.has(id)) continue
      this.#watches.delete(id)
      this.#metrics.forget(w.fn, id)
    }
    await this.#releaseCalm()
    const ms = performance.now() - t0
    this.#metrics.tickSeconds.set(ms / 1000)
    this.#cost.ticks++
    this.#cost.samples += sampled
    this.#cost.ms += ms
  }

  /** Reads one instance and steps on it; false when it could not be read (gone, or starting). */
  async #sample(w: Watch): Promise<boolean> {
    const reader = this.#o.reader
    try {
      if (w.limits === undefined) {
        w.limits = await reader.limits(w.ref)
        w.currentQuota = w.limits.cpuCores
      }
      const s = await reader.stats(w.ref)
      const demand = reader.demand(w.ref)
      const now = this.#clock.now()
      const prev = w.prev
      w.prev = { at: now, cpuNs: s.cpuUsageNs, periods: s.nrPeriods, throttled: s.throttledPeriods, demand }
      if (prev === undefined || now <= prev.at) return true
      const ns = (now - prev.at) * 1e6
      const cpuCores = Math.max(0, s.cpuUsageNs - prev.cpuNs) / ns
      let demandNs = 0
      // A pid not seen last time was born since: all of its time falls in this interval.
      for (const [pid, total] of demand) demandNs += Math.max(0, total - (prev.demand.get(pid) ?? 0))
      const demandCores = demandNs / ns
      const periods = s.nrPeriods - prev.periods
      const throttledRatio = periods > 0 ? (s.throttledPeriods - prev.throttled) / periods : 0
      const f = this.#fn(w)
      const verdict = judge({
        cpuCores, demandCores, quotaCores: w.limits.cpuCores, currentQuotaCores: w.currentQuota,
        memoryBytes: s.memoryBytes, memoryLimitBytes: w.limits.memoryBytes, pids: s.pids, pidsLimit: w.limits.pids,
      }, f.range, this.policy)
      w.last = { cpuRatio: verdict.cpuRatio, memoryBytes: s.memoryBytes, pids: s.pids }
      w.gauges ??= this.#metrics.bind(w.fn, w.inst.id)
      w.gauges.cpu.set(verdict.cpuRatio)
      w.gauges.memory.set(s.memoryBytes)
      await this.#step(w, f, { verdict, cpuCores, demandCores, throttledRatio, memoryBytes: s.memoryBytes, pids: s.pids }, now)
      return true
    } catch (err) {
      // The group goes away with its instance between listing and reading; the next pass forgets it.
      this.#o.log.debug({ err, instance: w.inst.id }, 'load guard cannot read an instance cgroup')
      return false
    }
  }

  #fn(w: Watch): FnWatch {
    let f = this.#fns.get(w.fn)
    const version = w.inst.version ?? 0
    if (f === undefined) {
      f = { range: new FunctionRange(version), level: 'normal', lastOutsideAt: undefined, lastAction: undefined }
      this.#fns.set(w.fn, f)
    } else if (version > f.range.version) {
      // New code, new normal: the range is learned afresh (the ceilings apply meanwhile).
      f.range = new FunctionRange(version)
    }
    return f
  }

  async #step(w: Watch, f: FnWatch, r: Reading, now: number): Promise<void> {
    const p = this.policy
    const v = r.verdict
    w.pidsStreak = v.atPidsLimit ? w.pidsStreak + 1 : 0
    if (w.pidsStreak >= p.pidsKillSamples) {
      f.lastOutsideAt = now
      this.#kill(w, f, r, 'pids', w.pidsStreak)
      return
    }
    if (v.outside.length === 0) {
      w.streak = 0
      // Only unthrottled, in-range samples teach the range: an episode must not teach itself as normal.
      if (!w.throttled && (w.inst.version ?? 0) >= f.range.version) f.range.learn({ demandRatio: v.demandRatio, memoryRatio: v.memoryRatio }, p)
      return
    }
    f.lastOutsideAt = now
    w.streak++
    const reason = v.outside.join('+')
    if (!w.throttled) {
      if (w.streak >= p.sustainSamples) await this.#throttle(w, f, r, reason)
    } else if (!this.#o.pools.isQuarantined(w.fn)) {
      if (w.streak >= p.quarantineSamples) this.#quarantine(w, f, r, reason)
    } else if (w.streak >= p.killSamples) {
      this.#kill(w, f, r, reason, w.streak)
    }
  }

  async #throttle(w: Watch, f: FnWatch, r: Reading, reason: string): Promise<void> {
    const samples = w.streak
    const setCpu = this.#o.backend.setCpu?.bind(this.#o.backend)
    w.streak = 0
    w.throttled = true
    if (setCpu === undefined) {
      // Nothing to lower on this backend: the ladder goes on to quarantine.
      this.#o.log.warn({ backend: this.#o.backend.name }, 'load guard cannot throttle on this backend')
      return
    }
    const cores = throttledQuota(w.limits?.cpuCores ?? 1, f.range, this.policy)
    const data = this.#data(w, f, r, reason, samples)
    try {
      await setCpu(w.inst.id, cores)
    } catch (err) {
      this.#o.log.warn({ err, fn: w.fn, instance: w.inst.id }, 'load guard throttle failed')
      return
    }
    w.currentQuota = cores
    if (f.level === 'normal') f.level = 'throttled'
    this.#act('throttle', w, f, reason, { ...data, throttledToCores: round(cores) },
      `CPU quota lowered to ${round(cores)} cores after ${samples} samples outside the normal range (${reason})`)
  }

  #quarantine(w: Watch, f: FnWatch, r: Reading, reason: string): void {
    const data = this.#data(w, f, r, reason, w.streak)
    w.streak = 0
    this.#o.pools.setQuarantined(w.fn, true)
    f.level = 'quarantined'
    this.#act('quarantine', w, f, reason, data, `function quarantined: its new instances start in the quarantine group (${reason} still outside after the throttle)`)
  }

  #kill(w: Watch, f: FnWatch, r: Reading, reason: string, samples: number): void {
    const data = this.#data(w, f, r, reason, samples)
    this.#watches.delete(w.inst.id)
    this.#metrics.forget(w.fn, w.inst.id)
    this.#act('kill', w, f, reason, data, reason === 'pids'
      ? `instance killed: at its pids limit for ${samples} samples`
      : `instance killed: ${reason} still outside after throttle and quarantine`)
    void this.#o.pools.destroy(w.inst).catch((err: unknown) => this.#o.log.error({ err, instance: w.inst.id }, 'load guard kill failed'))
  }

  /** Lifts throttles and quarantine of functions without an outside sample for the cool-down. */
  async #releaseCalm(): Promise<void> {
    const now = this.#clock.now()
    for (const [fn, f] of this.#fns) {
      if (f.level === 'normal' || f.lastOutsideAt === undefined) continue
      const calmMs = now - f.lastOutsideAt
      if (calmMs < this.policy.cooldownMs) continue
      let restored = 0
      for (const w of this.#watches.values()) {
        if (w.fn !== fn || !w.throttled || w.limits === undefined) continue
        try {
          await this.#o.backend.setCpu?.(w.inst.id, w.limits.cpuCores)
          restored++
        } catch (err) {
          this.#o.log.warn({ err, fn, instance: w.inst.id }, 'load guard cannot restore a CPU quota')
        }
        w.throttled = false
        w.currentQuota = w.limits.cpuCores
        w.streak = 0
      }
      const wasQuarantined = this.#o.pools.isQuarantined(fn)
      if (wasQuarantined) this.#o.pools.setQuarantined(fn, false)
      const from = f.level
      f.level = 'normal'
      this.#act('release', undefined, f, undefined, { function: fn, from, calmMs: Math.round(calmMs), cooldownMs: this.policy.cooldownMs, restoredInstances: restored, quarantineLifted: wasQuarantined },
        `released after ${Math.round(calmMs)} ms calm (was ${from})`, fn)
    }
  }

  #act(action: GuardAction, w: Watch | undefined, f: FnWatch, reason: string | undefined, data: Record<string, unknown>, message: string, fn = w?.fn): void {
    const event = this.#o.events.add({ type: `loadguard-${action}`, function: fn, instance: w?.inst.id, message, data })
    f.lastAction = { action, at: event.at, instance: w?.inst.id, reason }
    this.#metrics.actions.inc({ action })
    this.#o.log.warn({ fn, instance: w?.inst.id, action, reason }, 'load guard action')
  }

  /**
   * The numbers behind an action. Ratios are of the instance's own limits (`cpuRatio` used, `demandRatio`
   * wanted, of the original quota); `demandOfQuota` is of the current (maybe lowered) quota.
   */
  #data(w: Watch, f: FnWatch, r: Reading, reason: string, samples: number): Record<string, unknown> {
    const v = r.verdict
    const l = w.limits
    return {
      reason, samples, intervalMs: this.policy.intervalMs,
      cpuCores: round(r.cpuCores), cpuRatio: round(v.cpuRatio), demandCores: round(r.demandCores), demandRatio: round(v.demandRatio),
      demandOfQuota: round(v.demandOfCurrent),
      quotaCores: round(w.currentQuota), originalQuotaCores: round(l?.cpuCores ?? 0), throttledRatio: round(r.throttledRatio),
      cpuUpper: round(v.cpuUpper), cpuCeiling: this.policy.cpuCeiling,
      memoryBytes: r.memoryBytes, memoryLimitBytes: finite(l?.memoryBytes), memoryRatio: round(v.memoryRatio), memoryUpper: round(v.memoryUpper),
      pids: r.pids, pidsLimit: finite(l?.pids),
      rangeSamples: f.range.cpu.count, rangeCpuMean: round(f.range.cpu.mean),
    }
  }
}

/** Instances sampled between two turns of the event loop. */
const YIELD_EVERY = 32

function round(x: number): number {
  return Math.round(x * 1000) / 1000
}

/** JSON has no Infinity: a missing limit is `null`. */
function finite(x: number | undefined): number | null {
  return x === undefined || !Number.isFinite(x) ? null : x
}
