import type { Config } from '../common/config.js'
import { KdlError } from '../common/errors.js'

/**
 * The load guard's judgement, free of I/O: per-function normal ranges learned from samples, and the
 * rule that says whether one instance sample is outside its function's range (issue 5).
 * See loadguard/README.md for the policy in prose and the reasons behind each default.
 */

/** Thresholds and step lengths of the guard; every ratio is relative to the instance's own limits. */
export interface GuardPolicy {
  /** Sampling interval, ms. */
  intervalMs: number
  /**
   * An instance waiting in a prewarm pool (no call on it) is read every this many passes; the others every pass.
   * A thousand idle instances cost a pass ~100 ms of synchronous reads — the warm path's p50 paid for it (issue 16).
   */
  idleEvery: number
  /** Consecutive outside samples before an instance is throttled. */
  sustainSamples: number
  /** Further consecutive outside samples of a throttled instance before its function is quarantined. */
  quarantineSamples: number
  /** Further consecutive outside samples (function quarantined, instance throttled) before the instance is killed. */
  killSamples: number
  /** Tasks / pids limit at or above which an instance is at its hard pids limit. */
  pidsKillRatio: number
  /** Consecutive samples at the pids limit before the instance is killed. */
  pidsKillSamples: number
  /** Time without any outside sample of a function before its throttles and quarantine are lifted, ms. */
  cooldownMs: number
  /** Samples a function's range needs before it counts; until then only the ceilings apply. */
  minSamples: number
  /** CPU demand (fraction of the current quota) below which a sample is never outside. */
  cpuFloor: number
  /** CPU demand (fraction of the current quota) at or above which a sample is always outside. */
  cpuCeiling: number
  /** Memory (fraction of the limit) below which a sample is never outside. */
  memoryFloor: number
  /** Memory (fraction of the limit) at or above which a sample is always outside. */
  memoryCeiling: number
  /** A throttle lowers the quota to this fraction of the original (raised to fit the function's learned mean). */
  throttleCpu: number
  /** Width of the range above the mean, in standard deviations. */
  spreadSd: number
  /** Least width of the range above the mean (fraction of the limit), so a very steady function is not flagged by noise. */
  minSpread: number
  /** EWMA weight of a new sample once the range has `minSamples` (a plain average before). */
  alpha: number
  /** CPU demand (fraction of the original quota) below which a sample teaches nothing: an idle instance says nothing about a call's cost. */
  learnCpuAbove: number
}

/** Production defaults (the `KINDLING_LOADGUARD_*` keys in common/config.ts override most). */
export const DEFAULT_POLICY: Readonly<GuardPolicy> = Object.freeze({
  intervalMs: 1_000,
  idleEvery: 10,
  sustainSamples: 5,
  quarantineSamples: 10,
  killSamples: 30,
  pidsKillRatio: 0.9,
  pidsKillSamples: 5,
  cooldownMs: 60_000,
  minSamples: 30,
  cpuFloor: 0.5,
  cpuCeiling: 0.9,
  memoryFloor: 0.8,
  memoryCeiling: 0.95,
  throttleCpu: 0.25,
  spreadSd: 3,
  minSpread: 0.05,
  alpha: 0.05,
  learnCpuAbove: 0.05,
})

/** An exponentially weighted mean and variance (West's incremental form). */
export class Ewma {
  mean = 0
  variance = 0
  count = 0

  add(x: number, alpha: number): void {
    // A plain running average until 1/n falls below alpha, so early samples are not dwarfed by the first.
    const a = Math.max(alpha, 1 / (this.count + 1))
    const d = x - this.mean
    this.mean += a * d
    this.variance = (1 - a) * (this.variance + a * d * d)
    this.count++
  }

  get sd(): number {
    return Math.sqrt(this.variance)
  }
}

/** One function's normal range: CPU demand as a fraction of its quota, memory as a fraction of its limit. */
export class FunctionRange {
  readonly cpu = new Ewma()
  readonly memory = new Ewma()
  /** The version whose samples these are; a new version starts learning afresh. */
  version: number

  constructor(version: number) {
    this.version = version
  }

  learn(s: { demandRatio: number; memoryRatio: number }, p: GuardPolicy): void {
    if (s.demandRatio >= p.learnCpuAbove) this.cpu.add(s.demandRatio, p.alpha)
    if (Number.isFinite(s.memoryRatio)) this.memory.add(s.memoryRatio, p.alpha)
  }

  /** Upper CPU bound (fraction of the original quota): the learned one, clamped to [floor, ceiling]; the ceiling while learning. */
  cpuUpper(p: GuardPolicy): number {
    return upper(this.cpu, p.cpuFloor, p.cpuCeiling, p)
  }

  memoryUpper(p: GuardPolicy): number {
    return upper(this.memory, p.memoryFloor, p.memoryCeiling, p)
  }

  learned(p: GuardPolicy): boolean {
    return this.cpu.count >= p.minSamples
  }
}

function upper(e: Ewma, floor: number, ceiling: number, p: GuardPolicy): number {
  if (e.count < p.minSamples) return ceiling
  return Math.min(ceiling, Math.max(floor, e.mean + Math.max(p.spreadSd * e.sd, p.minSpread)))
}

/** What one sample of one instance says, in the units the policy judges. */
export interface SampleView {
  /** CPU used over the interval, cores (cpuacct). */
  cpuCores: number
  /**
   * CPU wanted over the interval, cores: time the group's processes ran or waited runnable (at least
   * `cpuCores`). It tells a CPU-bound instance from a light one when the host is busy or the quota is
   * lowered, where usage alone reads the same share for both.
   */
  demandCores: number
  /** The instance's quota when it started, cores (host cores when it has none). */
  quotaCores: number
  /** The quota now (lower while throttled), cores. */
  currentQuotaCores: number
  memoryBytes: number
  /** Memory limit, bytes (Infinity when none). */
  memoryLimitBytes: number
  pids: number
  /** pids limit (Infinity when none). */
  pidsLimit: number
}

export type OutsideReason = 'cpu' | 'memory'

export interface Verdict {
  /** CPU used as a fraction of the original quota. */
  cpuRatio: number
  /** CPU demand as a fraction of the original quota (what ranges are learned in). */
  demandRatio: number
  /** CPU demand as a fraction of the current quota (1 = wants all of it all the time). */
  demandOfCurrent: number
  memoryRatio: number
  cpuUpper: number
  memoryUpper: number
  /** Why the sample is outside the range; empty when inside. */
  outside: OutsideReason[]
  /** At the hard pids limit. */
  atPidsLimit: boolean
}

/**
 * Judges one sample against its function's range:
 * - CPU is outside when the instance's demand is at least `cpuFloor` of its current quota and either at
 *   `cpuCeiling` of it (pegged — for a throttled instance, pegged against the lowered quota) or above the
 *   function's learned upper bound (of the original quota);
 * - memory likewise between `memoryFloor` and `memoryCeiling` of the limit;
 * - pids at `pidsKillRatio` of the limit is the hard limit (kill), apart from the range.
 */
export function judge(s: SampleView, range: FunctionRange | undefined, p: GuardPolicy): Verdict {
  const cpuRatio = s.cpuCores / s.quotaCores
  const demand = Math.max(s.cpuCores, s.demandCores)
  const demandRatio = demand / s.quotaCores
  const demandOfCurrent = demand / s.currentQuotaCores
  const memoryRatio = Number.isFinite(s.memoryLimitBytes) && s.memoryLimitBytes > 0 ? s.memoryBytes / s.memoryLimitBytes : 0
  const cpuUpper = range?.cpuUpper(p) ?? p.cpuCeiling
  const memoryUpper = range?.memoryUpper(p) ?? p.memoryCeiling
  const outside: OutsideReason[] = []
  if (demandOfCurrent >= p.cpuFloor && (demandOfCurrent >= p.cpuCeiling || demandRatio > cpuUpper)) outside.push('cpu')
  if (memoryRatio >= p.memoryFloor && (memoryRatio >= p.memoryCeiling || memoryRatio > memoryUpper)) outside.push('memory')
  const atPidsLimit = Number.isFinite(s.pidsLimit) && s.pidsLimit > 0 && s.pids >= p.pidsKillRatio * s.pidsLimit
  return { cpuRatio, demandRatio, demandOfCurrent, memoryRatio, cpuUpper, memoryUpper, outside, atPidsLimit }
}

/**
 * The quota a throttle sets, cores: `throttleCpu` of the original, raised so that the function's learned
 * mean fits under the ceiling of the new quota (a throttled instance that returns to its normal use is
 * then calm, not pegged), never above the original.
 */
export function throttledQuota(quotaCores: number, range: FunctionRange | undefined, p: GuardPolicy): number {
  const learnedMean = range !== undefined && range.learned(p) ? range.cpu.mean / p.cpuCeiling : 0
  const fraction = Math.min(1, Math.max(p.throttleCpu, learnedMean))
  // The kernel refuses CFS quotas below 1 ms per 100 ms period.
  return Math.max(0.01, quotaCores * fraction)
}

/** The policy of `kindling up`, from its `KINDLING_LOADGUARD_*` keys; a floor above its ceiling stops start-up. */
export function policyFromConfig(c: Config): GuardPolicy {
  const p: GuardPolicy = {
    ...DEFAULT_POLICY,
    intervalMs: c.KINDLING_LOADGUARD_INTERVAL_MS,
    idleEvery: c.KINDLING_LOADGUARD_IDLE_EVERY,
    sustainSamples: c.KINDLING_LOADGUARD_SUSTAIN_SAMPLES,
    quarantineSamples: c.KINDLING_LOADGUARD_QUARANTINE_SAMPLES,
    killSamples: c.KINDLING_LOADGUARD_KILL_SAMPLES,
    pidsKillRatio: c.KINDLING_LOADGUARD_PIDS_RATIO,
    pidsKillSamples: c.KINDLING_LOADGUARD_PIDS_KILL_SAMPLES,
    cooldownMs: c.KINDLING_LOADGUARD_COOLDOWN_MS,
    minSamples: c.KINDLING_LOADGUARD_MIN_SAMPLES,
    cpuFloor: c.KINDLING_LOADGUARD_CPU_FLOOR,
    cpuCeiling: c.KINDLING_LOADGUARD_CPU_CEILING,
    memoryFloor: c.KINDLING_LOADGUARD_MEMORY_FLOOR,
    memoryCeiling: c.KINDLING_LOADGUARD_MEMORY_CEILING,
    throttleCpu: c.KINDLING_LOADGUARD_THROTTLE_CPU,
  }
  for (const [what, floor, ceiling] of [['CPU', p.cpuFloor, p.cpuCeiling], ['MEMORY', p.memoryFloor, p.memoryCeiling]] as const) {
    if (floor > ceiling) {
      throw new KdlError('KDL_ERR_BAD_REQUEST', `invalid configuration: KINDLING_LOADGUARD_${what}_FLOOR (${floor}) is above KINDLING_LOADGUARD_${what}_CEILING (${ceiling})`)
    }
  }
  return p
}
