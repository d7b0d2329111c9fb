import { helloCode } from './bare.js'
import { runLoad, type LoadResult } from './load.js'
import type { BenchPlatform } from './platform.js'
import type { LoadContext } from './warm.js'

/** One load row of a mode as a user gets it by default (only `mode` set: concurrency 1, maxInstances 10, prewarm 0). */
export interface DefaultModeRow {
  mode: 'persistent' | 'recycle'
  connections: number
  result: LoadResult
}

/** One rate of the paced sweep of `ephemeral` + `prewarm`. */
export interface SweepStep {
  /** Offered calls per second, paced over 1 kept-alive connection. */
  rate: number
  result: LoadResult
  /** Measured 2xx answers by `x-kindling-start`. */
  starts: Record<string, number>
  /** Share of measured answers served by a prewarmed instance, %. */
  prewarmedPct: number
  /** The pool kept up: ≥ KEEP_UP_PCT % of the calls prewarmed, none failed. */
  keepsUp: boolean
}

export interface Sweep {
  prewarm: number
  steps: SweepStep[]
  /** Highest rate at which the pool kept up (null: not even the lowest). */
  keepsUpTo: number | null
  /** First rate at which it did not (null: it kept up at every rate tried). */
  missAt: number | null
}

export interface DefaultModes {
  rows: DefaultModeRow[]
  /**
   * `persistent` paced at PACED_REF_RATE over 1 connection: a warm call after an idle gap, the way the
   * sweep's calls come (a machine idle for a moment answers slower than a hot loop).
   */
  pacedPersistent?: { rate: number; result: LoadResult }
  sweeps: Sweep[]
  settings: { durationS: number; warmupS: number; rates: number[]; stepS: number; minCalls: number; keepUpPct: number }
}

/** Offered rates of the sweep, calls per second; it stops at the first rate the pool does not keep up with. */
export const SWEEP_RATES = [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
/** The share of prewarmed answers below which the pool no longer keeps up, %. */
export const KEEP_UP_PCT = 99
/** The rate of the paced `persistent` reference, calls per second. */
export const PACED_REF_RATE = 8

/**
 * What a user gets by default: hello deployed with only `mode` set, `persistent` then `recycle`, each
 * called sequentially over 1 kept-alive connection (autocannon: the next request goes as soon as the
 * answer is in) and at 32 connections (the 10 instances of the default `maxInstances`, one call each);
 * then `ephemeral` with each `prewarm` in `prewarms`, paced at rising rates over 1 connection until its
 * prewarmed pool no longer keeps up (a call served `specialized` or `cold`, or a failure). Rows are
 * added to `out` as they are measured: a later failure keeps the earlier rows.
 */
export async function measureDefaultModes(ctx: LoadContext, p: BenchPlatform, prewarms: number[], out: DefaultModes): Promise<void> {
  const { durationS, stepS, minCalls } = out.settings
  const rows = out.rows
  for (const mode of ['persistent', 'recycle'] as const) {
    const name = `dflt-${mode}`
    await p.deploy(name, { code: helloCode(name), mode })
    await p.settle()
    try {
      for (const connections of [1, 32]) {
        ctx.progress(`router (${p.backend}) ${mode} (defaults) @${connections}`)
        // At 32 connections the warm-up also covers the scale-up to maxInstances (each a specialized start).
        const warmupS = ctx.warmupS + (connections > 1 ? 1 : 0)
        rows.push({ mode, connections, result: await runLoad({ url: `${p.url}/fn/${name}`, connections, durationS, warmupS, quietMs: ctx.quietMs }) })
      }
      if (mode === 'persistent') {
        ctx.progress(`router (${p.backend}) persistent (defaults), paced ${PACED_REF_RATE}/s @1`)
        const result = await runLoad({ url: `${p.url}/fn/${name}`, connections: 1, rate: PACED_REF_RATE, countHeader: 'x-kindling-start', durationS: stepS, warmupS: ctx.warmupS, quietMs: ctx.quietMs })
        out.pacedPersistent = { rate: PACED_REF_RATE, result }
      }
    } finally {
      await p.remove(name)
      await p.settle()
    }
  }

  for (const prewarm of prewarms) {
    const name = `dflt-eph-p${prewarm}`
    await p.deploy(name, { code: helloCode(name), mode: 'ephemeral', prewarm })
    await p.settle()
    const sweep: Sweep = { prewarm, steps: [], keepsUpTo: null, missAt: null }
    out.sweeps.push(sweep)
    const steps = sweep.steps
    try {
      for (const rate of SWEEP_RATES) {
        // Every step starts from a full pool; a low rate gets a longer window for enough calls.
        await p.settle()
        ctx.progress(`router (${p.backend}) ephemeral prewarm ${prewarm}, paced ${rate}/s @1`)
        const result = await runLoad({
          url: `${p.url}/fn/${name}`, connections: 1, rate, countHeader: 'x-kindling-start',
          durationS: Math.max(stepS, minCalls / rate), warmupS: ctx.warmupS, quietMs: ctx.quietMs,
        })
        const starts = result.byHeader ?? {}
        const prewarmedPct = result.requests === 0 ? 0 : 100 * (starts['prewarmed'] ?? 0) / result.requests
        const keepsUp = prewarmedPct >= KEEP_UP_PCT && result.errors === 0 && result.non2xx === 0
        steps.push({ rate, result, starts, prewarmedPct, keepsUp })
        if (keepsUp) sweep.keepsUpTo = rate
        else {
          sweep.missAt = rate
          break
        }
      }
    } finally {
      await p.remove(name)
      await p.settle()
    }
  }
}

/** An empty result with the settings `measureDefaultModes` uses. */
export function defaultModesResult(ctx: Pick<LoadContext, 'durationS' | 'warmupS'>): DefaultModes {
  // Short rows: a p50 at 1 connection settles within a few hundred calls, and each row costs bench time.
  return {
    rows: [],
    sweeps: [],
    settings: { durationS: Math.min(ctx.durationS, 2), warmupS: ctx.warmupS, rates: SWEEP_RATES, stepS: Math.min(ctx.durationS, 2), minCalls: 8, keepUpPct: KEEP_UP_PCT },
  }
}
