import { helloCode } from './bare.js'
import type { BenchPlatform } from './platform.js'
import { summarize, type Latency } from './stats.js'

export type ColdKind = 'prewarmed' | 'specialized' | 'cold'

export interface ColdResult {
  kind: ColdKind
  functions: number
  /** Client-side latency of each function's first call, ms. */
  latency: Latency
  /** First calls whose `x-kindling-start` was not `kind`, by what it was. */
  mismatches: number
  mismatchKinds: Record<string, number>
  failures: number
  /**
   * Longest event-loop stall of the platform process during each first call, ms (a 1 ms timer): work on
   * the router's thread that the call had to wait for, such as a pool refill spawning a process.
   */
  loopStall: Latency
  /**
   * The same function's second call, after the same settle pause as the first: a warm call measured the
   * way first calls are (an idle machine wakes up slower than a hot loop), so the two compare fairly.
   */
  secondCall: Latency
}

/** Warm reference: sequential single calls to an already-warm function over the same client, ms. */
export async function warmSingle(p: BenchPlatform, name: string, calls: number): Promise<Latency> {
  for (let i = 0; i < Math.min(50, calls); i++) await p.call(name)
  const ms: number[] = []
  for (let i = 0; i < calls; i++) {
    const c = await p.call(name)
    if (c.status === 200) ms.push(c.ms)
  }
  return summarize(ms)
}

/**
 * First-call latency of `count` distinct functions, one at a time, each served the way `kind` says:
 *  - prewarmed: deployed with `prewarm: 1` (the deploy's trial instance seeds the pool);
 *  - specialized: `prewarm: 0` (the trial instance is destroyed), a generic instance is taken and loaded;
 *  - cold: the runtime's generic pool is emptied (`poolSize: 0`), so the call starts an instance.
 * Before every measured call the platform is settled (pools refilled, torn-down instances gone), so
 * a call never competes with a background refill or teardown. Each function is deleted after its call.
 */
export async function coldStarts(p: BenchPlatform, kind: ColdKind, count: number, poolSize: number, prefix: string): Promise<ColdResult> {
  await p.setPoolSize(kind === 'cold' ? 0 : poolSize)
  await p.settle()
  const ms: number[] = []
  const mismatchKinds: Record<string, number> = {}
  let mismatches = 0
  let failures = 0
  const stallMs: number[] = []
  const second: number[] = []
  try {
    for (let i = 0; i < count; i++) {
      const name = `${prefix}-${kind.slice(0, 4)}-${i}`
      // Distinct code per function: each load imports a file it has never seen.
      await p.deploy(name, { code: helloCode(name), mode: 'persistent', prewarm: kind === 'prewarmed' ? 1 : 0 })
      try {
        await p.settle()
        const stalls = watchLoop()
        const c = await p.call(name)
        stallMs.push(stalls.stop())
        if (c.status !== 200) {
          failures++
          continue
        }
        ms.push(c.ms)
        if (c.start !== kind) {
          mismatches++
          const k = c.start ?? 'none'
          mismatchKinds[k] = (mismatchKinds[k] ?? 0) + 1
        }
        await p.settle()
        const again = await p.call(name)
        if (again.status === 200 && again.start === 'warm') second.push(again.ms)
      } finally {
        // Deleted at once: live instances stay few (memory budget, page cache), teardown overlaps the next deploy.
        await p.remove(name)
      }
    }
  } finally {
    await p.setPoolSize(poolSize)
    await p.settle()
  }
  return { kind, functions: count, latency: summarize(ms), mismatches, mismatchKinds, failures, loopStall: summarize(stallMs), secondCall: summarize(second) }
}

/** Watches this process's event loop with a 1 ms timer; `stop()` gives the longest gap beyond 1 ms. */
function watchLoop(): { stop(): number } {
  let last = performance.now()
  let max = 0
  const tick = (): void => {
    const now = performance.now()
    max = Math.max(max, now - last - 1)
    last = now
  }
  const timer = setInterval(tick, 1)
  return {
    stop: () => {
      clearInterval(timer)
      tick()
      return Math.max(0, max)
    },
  }
}
