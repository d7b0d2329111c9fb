// The load generator, in its own process (forked by load.ts) so it never shares an event loop with the
// router it measures. It receives one LoadRequest over IPC, runs autocannon (warm-up, then the measured
// window, in one run) and answers with one LoadResult. Later messages steer a background run (load.ts
// startLoad): `mark` restarts the measured window, `stop` ends the run.
//
// Latencies are recorded from autocannon's `response` events at full (sub-millisecond) resolution:
// its own histogram stores whole milliseconds, too coarse for a "≤ 0.1 ms added" target.
//
// With a `rate`, requests are paced instead (paced.ts): autocannon's `overallRate` spends each second's
// budget back to back from the start of the second, which measures a burst, not the offered rate.
import { createRequire } from 'node:module'
import type { EventEmitter } from 'node:events'
import { runPaced } from './paced.js'
import { summarize } from './stats.js'
import type { LoadRequest, LoadResult } from './load.js'

interface AutocannonOptions {
  url: string
  socketPath?: string
  connections: number
  duration: number
  headers?: Record<string, string>
  method?: string
  timeout?: number
}

interface AutocannonResult {
  errors: number
  timeouts: number
  non2xx: number
  statusCodeStats: Record<string, { count: number }>
}

type Autocannon = (opts: AutocannonOptions, cb: (err: Error | null, result: AutocannonResult) => void) => EventEmitter & { stop(): void }

const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon

/**
 * One continuous autocannon run of warm-up + measured seconds: only answers completed after the warm-up
 * count. (Two runs would close every connection in between, and a router answers the calls those
 * connections had in flight to clients that are gone.)
 */
function run(req: LoadRequest): Promise<LoadResult> {
  let latencies = new Float64Array(1 << 16)
  let count = 0
  let ok = 0
  let measureFrom = performance.now() + req.warmupS * 1000
  let last = Number.NaN
  return new Promise((resolve, reject) => {
    process.on('message', (msg: { type?: string }) => {
      if (msg.type === 'mark') {
        measureFrom = performance.now()
        count = 0
        ok = 0
        last = Number.NaN
      } else if (msg.type === 'stop') {
        inst.stop()
      }
    })
    const inst = autocannon({
      url: req.url,
      ...(req.socketPath === undefined ? {} : { socketPath: req.socketPath }),
      connections: req.connections,
      duration: req.warmupS + req.durationS,
      headers: req.headers ?? {},
      timeout: 30,
    }, (err, result) => {
      if (err !== null) {
        reject(err)
        return
      }
      const elapsed = (Number.isNaN(last) ? 0 : last - measureFrom) / 1000
      const byStatus: Record<string, number> = {}
      for (const [code, s] of Object.entries(result.statusCodeStats ?? {})) byStatus[code] = Number(s.count)
      resolve({
        requests: ok,
        rps: elapsed > 0 ? ok / elapsed : Number.NaN,
        durationS: elapsed,
        errors: result.errors,
        timeouts: result.timeouts,
        non2xx: result.non2xx,
        byStatus,
        latency: summarize(latencies.subarray(0, count)),
      })
    })
    inst.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
      const now = performance.now()
      if (now < measureFrom) return
      last = now
      if (statusCode < 200 || statusCode >= 300) return
      ok++
      if (count === latencies.length) {
        const grown = new Float64Array(latencies.length * 2)
        grown.set(latencies)
        latencies = grown
      }
      latencies[count++] = responseTime
    })
  })
}

process.once('message', (req: LoadRequest) => {
  void (async () => {
    try {
      const result = await (req.rate === undefined ? run(req) : runPaced(req))
      process.send?.({ ok: true, result })
    } catch (err) {
      process.send?.({ ok: false, message: (err as Error).message })
    }
    process.disconnect?.()
  })()
})
