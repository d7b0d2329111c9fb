import type { StartKind } from '../common/types.js'

/** How a call ended, as the dashboard counts it (issue 14). Everything but `ok` is an error. */
export const OUTCOMES = ['ok', 'http5xx', 'timeout', 'crashed', 'oom', 'refused'] as const
export type CallOutcome = (typeof OUTCOMES)[number]
export const START_KINDS: readonly StartKind[] = ['warm', 'prewarmed', 'specialized', 'cold']

/** Upper bounds (ms) of the latency histogram: 32 log-spaced bounds from 0.1 ms to 60 s (×1.54 each), and an overflow bin. */
export const LATENCY_BOUNDS_MS: Float64Array = (() => {
  const n = 32
  const lo = 0.1
  const hi = 60_000
  const out = new Float64Array(n)
  for (let i = 0; i < n; i++) out[i] = lo * (hi / lo) ** (i / (n - 1))
  return out
})()

// One bucket's counters, side by side in a Uint32Array: calls, then one per outcome, one per start kind, one per latency bin.
const OFF_OUTCOME = 1
const OFF_KIND = OFF_OUTCOME + OUTCOMES.length
const OFF_HIST = OFF_KIND + START_KINDS.length
const HIST_BINS = LATENCY_BOUNDS_MS.length + 1
const STRIDE = OFF_HIST + HIST_BINS
const OUTCOME_INDEX: Record<CallOutcome, number> = Object.fromEntries(OUTCOMES.map((o, i) => [o, i])) as Record<CallOutcome, number>
const KIND_INDEX: Record<StartKind, number> = { warm: 0, prewarmed: 1, specialized: 2, cold: 3 }

export interface CallStatsOptions {
  /** Width of one bucket. @default 5000 */
  bucketMs?: number
  /** Buckets kept per function (the window is `bucketMs × buckets`). @default 180 (15 minutes) */
  buckets?: number
  /** Wall clock in ms (tests inject one). @default Date.now */
  clock?: () => number
}

/** One bucket as `GET /v1/stats` shows it. `p50Ms`/`p99Ms` are null when no call in it was timed. */
export interface StatsBucket {
  /** Start of the bucket, ms since the epoch. */
  t: number
  calls: number
  errors: number
  p50Ms: number | null
  p99Ms: number | null
  meanMs: number | null
  maxMs: number | null
  outcomes: Record<CallOutcome, number>
  starts: Record<StartKind, number>
}

export interface FunctionStats {
  buckets: StatsBucket[]
  /** The window's buckets added up (percentiles over the merged histogram). */
  totals: Omit<StatsBucket, 't'>
}

/** One function's ring: bucket numbers, counters, latency sums and maxima; allocated on its first call. */
class Ring {
  readonly epoch: Float64Array
  readonly counts: Uint32Array
  readonly sumMs: Float64Array
  readonly maxMs: Float64Array

  constructor(n: number) {
    this.epoch = new Float64Array(n).fill(-1)
    this.counts = new Uint32Array(n * STRIDE)
    this.sumMs = new Float64Array(n)
    this.maxMs = new Float64Array(n)
  }
}

/**
 * Per-function call counts over the last minutes, for the dashboard: fixed buckets in a ring, each with
 * calls, outcomes, start kinds and a latency histogram. Recording is on the call path, so it allocates
 * nothing once a function's ring exists: a map lookup, a clock read, integer index math and a few
 * typed-array increments (a bucket reused after its time is zeroed in place).
 */
export class CallStats {
  readonly bucketMs: number
  readonly buckets: number
  readonly #clock: () => number
  readonly #rings = new Map<string, Ring>()

  constructor(opts: CallStatsOptions = {}) {
    this.bucketMs = opts.bucketMs ?? 5000
    this.buckets = opts.buckets ?? 180
    this.#clock = opts.clock ?? Date.now
  }

  /** The longest window a read can cover, in ms. */
  get windowMs(): number {
    return this.bucketMs * this.buckets
  }

  /**
   * One call of `fn` ended. `ms` is its latency through the router (NaN or negative: not timed, e.g. a call
   * refused before it had an instance); `kind` how its instance was found (undefined: it had none).
   */
  record(fn: string, outcome: CallOutcome, ms: number, kind: StartKind | undefined): void {
    let ring = this.#rings.get(fn)
    if (ring === undefined) {
      ring = new Ring(this.buckets)
      this.#rings.set(fn, ring)
    }
    const b = Math.floor(this.#clock() / this.bucketMs)
    const i = b % this.buckets
    const base = i * STRIDE
    const counts = ring.counts
    if (ring.epoch[i] !== b) {
      counts.fill(0, base, base + STRIDE)
      ring.sumMs[i] = 0
      ring.maxMs[i] = 0
      ring.epoch[i] = b
    }
    counts[base]!++
    counts[base + OFF_OUTCOME + OUTCOME_INDEX[outcome]]!++
    if (kind !== undefined) counts[base + OFF_KIND + KIND_INDEX[kind]]!++
    if (ms >= 0) {
      counts[base + OFF_HIST + binOf(ms)]!++
      ring.sumMs[i]! += ms
      if (ms > ring.maxMs[i]!) ring.maxMs[i] = ms
    }
  }

  /** Drops a function's numbers (it was deleted). */
  forget(fn: string): void {
    this.#rings.delete(fn)
  }

  /** Functions with a ring (called at least once since start or their last `forget`). */
  functions(): string[] {
    return [...this.#rings.keys()]
  }

  /**
   * The last `windowMs` of `fn` (rounded up to whole buckets, at most the ring), oldest bucket first; the
   * last bucket is the current, partial one. A function never called reads as zeros.
   */
  read(fn: string, windowMs: number = this.windowMs): FunctionStats {
    const n = Math.max(1, Math.min(this.buckets, Math.ceil(windowMs / this.bucketMs)))
    const now = Math.floor(this.#clock() / this.bucketMs)
    const ring = this.#rings.get(fn)
    const merged = new Uint32Array(STRIDE)
    let sum = 0
    let max = 0
    const buckets: StatsBucket[] = []
    for (let b = now - n + 1; b <= now; b++) {
      const i = ((b % this.buckets) + this.buckets) % this.buckets
      const live = ring !== undefined && ring.epoch[i] === b
      const view = live ? ring.counts.subarray(i * STRIDE, (i + 1) * STRIDE) : EMPTY
      const s = live ? ring.sumMs[i]! : 0
      const m = live ? ring.maxMs[i]! : 0
      if (live) for (let k = 0; k < STRIDE; k++) merged[k]! += view[k]!
      sum += s
      if (m > max) max = m
      buckets.push({ t: b * this.bucketMs, ...summarise(view, s, m) })
    }
    return { buckets, totals: summarise(merged, sum, max) }
  }
}

const EMPTY = new Uint32Array(STRIDE)

/** The histogram bin of a latency: binary search over the bounds (5 comparisons). */
function binOf(ms: number): number {
  let lo = 0
  let hi = LATENCY_BOUNDS_MS.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (ms <= LATENCY_BOUNDS_MS[mid]!) hi = mid
    else lo = mid + 1
  }
  return lo
}

function summarise(c: Uint32Array, sumMs: number, maxMs: number): Omit<StatsBucket, 't'> {
  const outcomes = {} as Record<CallOutcome, number>
  let errors = 0
  for (let k = 0; k < OUTCOMES.length; k++) {
    const v = c[OFF_OUTCOME + k]!
    outcomes[OUTCOMES[k]!] = v
    if (k !== 0) errors += v
  }
  const starts = {} as Record<StartKind, number>
  for (let k = 0; k < START_KINDS.length; k++) starts[START_KINDS[k]!] = c[OFF_KIND + k]!
  let timed = 0
  for (let k = 0; k < HIST_BINS; k++) timed += c[OFF_HIST + k]!
  return {
    calls: c[0]!, errors,
    p50Ms: percentile(c, timed, 0.5, maxMs), p99Ms: percentile(c, timed, 0.99, maxMs), meanMs: timed === 0 ? null : round(sumMs / timed),
    maxMs: timed === 0 ? null : round(maxMs),
    outcomes, starts,
  }
}

/**
 * The `q` quantile from a bucket's histogram: the bin holding the rank, interpolated log-linearly between
 * its bounds (the first bin linearly from 0), its top bound no higher than the slowest call seen (which is
 * also what the overflow bin reads as).
 */
export function percentile(c: Uint32Array, timed: number, q: number, maxMs: number): number | null {
  if (timed === 0) return null
  const rank = Math.max(1, Math.ceil(q * timed))
  let seen = 0
  for (let k = 0; k < HIST_BINS; k++) {
    const inBin = c[OFF_HIST + k]!
    if (inBin === 0 || seen + inBin < rank) {
      seen += inBin
      continue
    }
    if (k >= LATENCY_BOUNDS_MS.length) return round(maxMs)
    const hi = Math.min(LATENCY_BOUNDS_MS[k]!, maxMs)
    const frac = (rank - seen) / inBin
    if (k === 0) return round(hi * frac)
    const lo = LATENCY_BOUNDS_MS[k - 1]!
    return hi <= lo ? round(hi) : round(lo * (hi / lo) ** frac)
  }
  return null
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000
}
