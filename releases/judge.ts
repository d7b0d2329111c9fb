import type { CanaryStep } from '../common/types.js'
import type { VersionWindow } from '../common/version-samples.js'

/**
 * A canary step's verdict (issue 15), free of I/O: the canary's window against the baseline's over the same
 * time. The rules (README, "Canary releases"):
 *
 * - **hold** while the canary has fewer than `minCalls` calls in the window: no data is never a pass.
 * - **breach** on errors: the canary's error rate exceeds the baseline's by more than `maxErrorRate`
 *   (when the baseline had fewer than `minCalls` calls — a step at 100 % — the canary's rate alone is
 *   held against `maxErrorRate`).
 * - **breach** on latency, when `maxP99Ms` is set: the canary's p99 is above it *and* the canary is slower
 *   than the baseline by a one-sided Mann-Whitney U test at p < 0.01 (Kayenta's judge ranks the same way),
 *   so a host that slows every version down does not blame the canary; without a comparable baseline, p99
 *   above `maxP99Ms` alone is a breach.
 * - **pass** otherwise.
 */

export interface Thresholds {
  minCalls: number
  maxErrorRate: number
  maxP99Ms?: number | undefined
}

export type Verdict = Omit<CanaryStep, 'step' | 'weight' | 'at'>

/** Significance of the latency test. */
export const LATENCY_ALPHA = 0.01

export function judge(canary: VersionWindow, baseline: VersionWindow, t: Thresholds): Verdict {
  const c = summary(canary)
  const b = summary(baseline)
  const comparable = baseline.calls >= t.minCalls
  const latency = comparable && canary.latenciesMs.length > 0 && baseline.latenciesMs.length > 0
    ? mannWhitneyGreater(canary.latenciesMs, baseline.latenciesMs)
    : undefined
  const verdict = (result: Verdict['result'], reasons: string[]): Verdict => ({ result, reasons, canary: c, baseline: b, latency })
  if (canary.calls < t.minCalls) return verdict('hold', [`${canary.calls} canary calls in the window, fewer than minCalls ${t.minCalls}`])
  const reasons: string[] = []
  const floor = comparable ? b.errorRate : 0
  if (c.errorRate - floor > t.maxErrorRate) {
    reasons.push(comparable
      ? `error rate ${fmt(c.errorRate)} exceeds the baseline's ${fmt(b.errorRate)} by more than maxErrorRate ${t.maxErrorRate}`
      : `error rate ${fmt(c.errorRate)} exceeds maxErrorRate ${t.maxErrorRate} (no baseline calls to compare with)`)
  }
  if (t.maxP99Ms !== undefined && c.p99Ms > t.maxP99Ms) {
    if (latency === undefined) reasons.push(`p99 ${c.p99Ms.toFixed(1)} ms exceeds maxP99Ms ${t.maxP99Ms} (no baseline calls to compare with)`)
    else if (latency.p < LATENCY_ALPHA) reasons.push(`p99 ${c.p99Ms.toFixed(1)} ms exceeds maxP99Ms ${t.maxP99Ms} and the canary is slower than the baseline (Mann-Whitney p = ${latency.p.toExponential(2)})`)
  }
  return reasons.length > 0 ? verdict('breach', reasons) : verdict('pass', [])
}

function summary(w: VersionWindow): Verdict['canary'] {
  const sorted = Float64Array.from(w.latenciesMs).sort()
  return {
    calls: w.calls, errors: w.errors, errorRate: w.calls === 0 ? 0 : w.errors / w.calls,
    p50Ms: round(quantile(sorted, 0.5)), p99Ms: round(quantile(sorted, 0.99)),
  }
}

/** Nearest-rank quantile of sorted values (0 when empty). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i] as number
}

/**
 * Mann-Whitney U test that `a` tends to be greater than `b` (one-sided), with the normal approximation,
 * the tie correction and a continuity correction. `u` is a's U statistic; `p` the one-sided p-value.
 */
export function mannWhitneyGreater(a: ArrayLike<number>, b: ArrayLike<number>): { u: number; z: number; p: number } {
  const n1 = a.length
  const n2 = b.length
  const all: Array<[number, 0 | 1]> = []
  for (let i = 0; i < n1; i++) all.push([a[i] as number, 0])
  for (let i = 0; i < n2; i++) all.push([b[i] as number, 1])
  all.sort((x, y) => x[0] - y[0])
  const n = n1 + n2
  let rankSumA = 0
  let tieTerm = 0
  for (let i = 0; i < n;) {
    let j = i
    while (j + 1 < n && (all[j + 1] as [number, number])[0] === (all[i] as [number, number])[0]) j++
    const rank = (i + j + 2) / 2
    const size = j - i + 1
    if (size > 1) tieTerm += size ** 3 - size
    for (let k = i; k <= j; k++) if ((all[k] as [number, number])[1] === 0) rankSumA += rank
    i = j + 1
  }
  const u = rankSumA - (n1 * (n1 + 1)) / 2
  const mean = (n1 * n2) / 2
  const variance = ((n1 * n2) / 12) * (n + 1 - tieTerm / (n * (n - 1)))
  if (!(variance > 0)) return { u, z: 0, p: 0.5 }
  const z = (u - mean - 0.5) / Math.sqrt(variance)
  return { u, z: round(z), p: 1 - normalCdf(z) }
}

/** Φ(z), the standard normal CDF. */
export function normalCdf(z: number): number {
  return 0.5 * erfc(-z / Math.SQRT2)
}

function erfc(x: number): number {
  // Numerical Recipes' erfcc (Chebyshev fit), fractional error below 1.2e-7 everywhere.
  const t = 1 / (1 + 0.5 * Math.abs(x))
  const y = t * Math.exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
  return x >= 0 ? y : 2 - y
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000
}

function fmt(rate: number): string {
  return `${(rate * 100).toFixed(1)} %`
}
