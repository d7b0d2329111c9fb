import type { Instance } from '../poolmgr/instance.js'
import { startPlatform } from './platform.js'
import { round } from './stats.js'

/** One burst: `atOnce` instances asked for together from an idle platform, none of them gated. */
export interface StartsRow {
  backend: 'process' | 'docker'
  atOnce: number
  wallMs: number
  /** The slowest start of the burst: what the last caller of a herd waits. */
  slowestMs: number
  perSecond: number
}

export interface StartsBenchOptions {
  dataDir: string
  backend: 'process' | 'docker'
  /** Burst sizes, e.g. 1, 2, 4, 8, 16. */
  bursts: number[]
  progress: (line: string) => void
  /** Registers a clean-up for an abort mid-section; returns its removal. */
  track: (close: () => Promise<void>) => () => void
}

/**
 * How a backend's start rate and start latency depend on how many starts run at once (the figures behind
 * the start gate's defaults, ARCHITECTURE "Start gate"). The platform's own gate is lifted
 * (KINDLING_MAX_STARTING 1024) so the engine itself is measured; each burst's instances are stopped
 * before the next burst.
 */
export async function measureStarts(o: StartsBenchOptions): Promise<StartsRow[]> {
  const p = await startPlatform({ dataDir: o.dataDir, backend: o.backend, poolSize: 0, overrides: { KINDLING_MAX_STARTING: 1024 } })
  const untrack = o.track(() => p.close())
  const pools = p.embedded.pools
  const rows: StartsRow[] = []
  try {
    for (const atOnce of o.bursts) {
      o.progress(`${o.backend}: ${atOnce} starts at once`)
      const started: Instance[] = []
      const t0 = performance.now()
      const each = await Promise.all(Array.from({ length: atOnce }, async () => {
        const s = performance.now()
        started.push(await pools.start('node', 'generic:node', { memoryMb: 128, cpu: 1, network: 'none' }))
        return performance.now() - s
      }))
      const wallMs = performance.now() - t0
      rows.push({ backend: o.backend, atOnce, wallMs: round(wallMs, 0), slowestMs: round(Math.max(...each), 0), perSecond: round(atOnce / (wallMs / 1000), 2) })
      await Promise.all(started.map((inst) => pools.destroy(inst)))
    }
    return rows
  } finally {
    untrack()
    await p.close()
  }
}
