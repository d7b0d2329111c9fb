import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { waitQuiet } from './proc.js'
import type { Latency } from './stats.js'

/** One measurement: autocannon against a URL (or a Unix socket), after a warm-up run. */
export interface LoadRequest {
  /** Target; with `socketPath`, only its path and Host header are used. */
  url: string
  socketPath?: string
  connections: number
  durationS: number
  warmupS: number
  headers?: Record<string, string>
  /** Wait at most this long for the machine to be quiet before starting. @default 0 */
  quietMs?: number
  /**
   * Offered load, requests per second: paced, one request every 1/rate s over at most `connections`
   * connections (paced.ts), instead of autocannon's as-fast-as-the-answers-come. Unset: autocannon.
   */
  rate?: number
  /** Paced runs: count the measured 2xx answers by this response header's value (e.g. `x-kindling-start`). */
  countHeader?: string
}

export interface LoadResult {
  /** 2xx answers in the measured run. */
  requests: number
  /** 2xx answers per second of the measured run. */
  rps: number
  durationS: number
  errors: number
  timeouts: number
  non2xx: number
  byStatus: Record<string, number>
  /** Client-side latency of 2xx answers, ms. */
  latency: Latency
  /** How busy the machine's CPUs were just before the run (other processes), %. */
  busyBeforePct?: number
  /** Paced runs: how late the generator sent each counted request against its schedule, ms. */
  sendLag?: Latency
  /** Paced runs with `countHeader`: measured 2xx answers by that header's value (`-` when absent). */
  byHeader?: Record<string, number>
}

const LOAD_GEN = fileURLToPath(new URL('./load-gen.js', import.meta.url))

/**
 * Runs the load generator in its own process. Its environment is only PATH: nothing of ours
 * (NODE_OPTIONS, --cpu-prof, NODE_EXTRA_CA_CERTS) follows it.
 */
export async function runLoad(req: LoadRequest): Promise<LoadResult> {
  const busyBeforePct = await waitQuiet(req.quietMs ?? 0)
  const result = await startLoad(req).result
  return { ...result, busyBeforePct }
}

/** A load generator running in the background (background load beside a measured one). */
export interface RunningLoad {
  /** Starts the measured window anew: only answers from now on count. */
  mark(): void
  /** Ends the run early (within a second: autocannon stops on its next tick) and answers its result. */
  stop(): Promise<LoadResult>
  /** Settles when the run ends, by itself or after stop(). */
  result: Promise<LoadResult>
}

/** Starts the load generator without waiting for a quiet machine; `durationS` + `warmupS` bound the run. */
export function startLoad(req: LoadRequest): RunningLoad {
  const child = fork(LOAD_GEN, [], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const send = (msg: { type: 'mark' | 'stop' }): void => {
    if (child.connected) child.send(msg)
  }
  const result = new Promise<LoadResult>((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      finish(new Error(`load generator did not finish within ${req.warmupS + req.durationS + 60} s`))
    }, (req.warmupS + req.durationS + 60) * 1000)
    const finish = (err: Error | null, result?: LoadResult): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (err !== null) reject(err)
      else resolve(result as LoadResult)
    }
    child.once('message', (msg: { ok: boolean; result?: LoadResult; message?: string }) => {
      if (msg.ok && msg.result !== undefined) finish(null, msg.result)
      else finish(new Error(`load generator failed: ${msg.message ?? 'unknown error'}`))
    })
    child.once('error', (err) => finish(err))
    child.once('exit', (code, signal) => finish(new Error(`load generator exited (code ${code}, signal ${signal}) without a result`)))
    child.send(req)
  })
  // A caller that stops the run also awaits it; one that never looks must not see an unhandled rejection.
  result.catch(() => {})
  return {
    mark: () => { send({ type: 'mark' }) },
    stop: () => { send({ type: 'stop' }); return result },
    result,
  }
}
