import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { helloCode } from './bare.js'
import { warmSingle } from './cold.js'
import { startPlatform, type BenchPlatform } from './platform.js'
import { round, summarize, type Latency } from './stats.js'

/** Scale on one host (issue 16): many functions, many prewarmed instances, a restart. */
export interface ScaleResult {
  functions: number
  prewarmedFunctions: number
  deploy: Latency
  /** Heap the router and executor keep per routed function (every function called once), bytes. */
  tableBytesPerFunction: number
  warmOneRoute: Latency
  warmWithAll: Latency
  rssMb: number
  /** Prewarmed instances idle when the time bound ran out (or all were), and the budget's view then. */
  prewarmedIdle: number
  prewarmTarget: number
  fillS: number
  memory: Record<string, unknown>
  restart: { apiS: number; poolsFullS: number | null; poolsIdleAtBound: number }
  /** An unprewarmed function's first call: cold on a quiet platform, and right after the restart, during the refill (and how it was served). */
  coldQuietMs: number
  coldDuringRefillMs: number
  duringRefillStart: string
}

export interface ScaleOptions {
  dataDir: string
  functions: number
  /** Functions deployed with `prewarm: 1` (the rest have none). */
  prewarmed: number
  /** How long pools may take to fill (after the deploys, after the restart), s. */
  fillBoundS: number
  progress: (line: string) => void
  track: (close: () => Promise<void>) => () => void
}

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

function heapAfterGc(): number {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

async function idleOf(p: BenchPlatform): Promise<{ idle: number; target: number }> {
  let idle = 0
  let target = 0
  for (const row of await p.pools()) if (row.kind === 'prewarm') { idle += row.idle; target += row.target }
  return { idle, target }
}

/** Polls until every prewarm pool is at its target or `boundS` passes; resolves seconds taken, or null. */
async function fill(p: BenchPlatform, boundS: number, t0: number): Promise<number | null> {
  for (;;) {
    const { idle, target } = await idleOf(p)
    if (idle >= target) return (performance.now() - t0) / 1000
    if (performance.now() - t0 > boundS * 1000) return null
    await new Promise((r) => setTimeout(r, 250))
  }
}

export async function measureScale(o: ScaleOptions): Promise<ScaleResult> {
  let p = await startPlatform({ dataDir: o.dataDir, backend: 'process', poolSize: 2 })
  let untrack = o.track(() => p.close())
  try {
    await p.deploy('probe', { code: helloCode('probe'), mode: 'persistent' })
    const warmOneRoute = await warmSingle(p, 'probe', 1000)
    const heap0 = heapAfterGc()

    o.progress(`deploying ${o.functions} functions (${o.prewarmed} with prewarm 1), 4 at a time`)
    const deployMs: number[] = []
    const names = Array.from({ length: o.functions }, (_, i) => `fn-${String(i).padStart(4, '0')}`)
    let next = 0
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (next < names.length) {
        const i = next++
        const name = names[i] as string
        const t = performance.now()
        await p.deploy(name, { code: helloCode(name), mode: 'persistent', prewarm: i < o.prewarmed ? 1 : 0, idleTimeoutMs: 3_600_000 })
        deployMs.push(performance.now() - t)
        if ((i + 1) % 100 === 0) o.progress(`  ${i + 1} deployed`)
      }
    }))
    const tFill = performance.now()
    const fillS = await fill(p, o.fillBoundS, tFill)
    const filled = await idleOf(p)

    o.progress('calling every function once (every route in the router table)')
    for (const name of names.slice(o.prewarmed)) await p.call(name)
    const tableBytesPerFunction = (heapAfterGc() - heap0) / o.functions
    await p.settle(o.fillBoundS * 1000)
    const warmWithAll = await warmSingle(p, 'probe', 1000)
    const rssMb = process.memoryUsage().rss / 1048576
    const memory = (await p.api('GET', '/v1/pools')).json['memory'] as Record<string, unknown>

    // A function no pool prewarms: its cold figure (no generic instance either: start + load) on a quiet
    // platform; after the restart its first call is made again, while every prewarm pool refills.
    await p.deploy('cold-probe', { code: helloCode('cold-probe'), mode: 'persistent' })
    await p.setPoolSize(0)
    await p.settle(o.fillBoundS * 1000)
    const quiet = await p.call('cold-probe')
    if (quiet.start !== 'cold') o.progress(`  note: the quiet probe was served ${quiet.start ?? '?'}, not cold`)
    await p.setPoolSize(2)

    o.progress('restarting the platform')
    untrack()
    await p.close()
    const tRestart = performance.now()
    p = await startPlatform({ dataDir: o.dataDir, backend: 'process', poolSize: 2 })
    untrack = o.track(() => p.close())
    const apiS = (performance.now() - tRestart) / 1000
    const during = await p.call('cold-probe')
    const poolsFullS = await fill(p, o.fillBoundS, tRestart)
    const after = await idleOf(p)
    return {
      functions: o.functions, prewarmedFunctions: o.prewarmed, deploy: summarize(deployMs),
      tableBytesPerFunction: round(tableBytesPerFunction, 0), warmOneRoute, warmWithAll, rssMb: round(rssMb, 0),
      prewarmedIdle: filled.idle, prewarmTarget: filled.target, fillS: fillS === null ? Number.NaN : round(fillS, 1), memory,
      restart: { apiS: round(apiS, 2), poolsFullS: poolsFullS === null ? null : round(poolsFullS, 1), poolsIdleAtBound: after.idle },
      coldQuietMs: round(quiet.ms, 1), coldDuringRefillMs: round(during.ms, 1), duringRefillStart: during.start ?? '?',
    }
  } finally {
    untrack()
    await p.close()
  }
}
