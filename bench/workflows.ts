import { Pool } from 'undici'
import { startPlatform } from './platform.js'
import { startBenchRedis, whenRedisAnswers } from './redis.js'
import { summarize, type Latency } from './stats.js'

/** Workflows (issue 12) on each store: what a step adds to the call it makes. */
export interface WorkflowsResult {
  /** The embedded default: runs in the data directory's file store. */
  file: WorkflowsRow
  /** A redis-server of the bench's own (AOF everysec). */
  redis?: WorkflowsRow | undefined
}

export interface WorkflowsRow {
  /** One call of the step's function through the router's in-process path (what a step calls through). */
  directMs: Latency
  /** The same function over HTTP (`/fn`), the client's view. */
  httpMs: Latency
  /** A one-task run started and answered by `POST /wf/:name` (sync), the client's view. */
  oneStepRunMs: Latency
  /** A run of `steps` task states in a row, `POST /wf` to answer. */
  longRunMs: Latency
  steps: number
  /** (long run − one direct call × steps) / steps: what the engine adds to each task step (its log's fdatasync included). */
  perStepOverheadMs: number
}

type Opts = { dataDir: string; runs: number; steps: number; progress: (line: string) => void; track: (close: () => Promise<void>) => () => void }

export async function measureWorkflows(opts: Opts): Promise<WorkflowsResult> {
  const file = await measureOn(opts, { dataDir: `${opts.dataDir}-file`, overrides: {} })
  const redis = await startBenchRedis(opts.track)
  try {
    return { file, redis: await measureOn(opts, { dataDir: `${opts.dataDir}-redis`, overrides: { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url } }) }
  } finally {
    await redis.stop()
  }
}

async function measureOn(opts: Opts, on: { dataDir: string; overrides: Record<string, string> }): Promise<WorkflowsRow> {
  const p = await whenRedisAnswers(() => startPlatform({ dataDir: on.dataDir, backend: 'process', poolSize: 1, overrides: { KINDLING_LOADGUARD_ENABLED: 'false', ...on.overrides } }))
  const untrack = opts.track(() => p.close())
  const client = new Pool(p.url, { connections: 2 })
  try {
    await p.deploy('wf-step', { code: 'export default async (e) => ({ n: (e.json?.n ?? 0) + 1 })', mode: 'persistent', prewarm: 1 })
    const put = async (name: string, def: unknown): Promise<void> => {
      const r = await p.api('PUT', `/v1/workflows/${name}`, def)
      if (r.status >= 300) throw new Error(`PUT workflow ${name}: ${r.status} ${JSON.stringify(r.json)}`)
    }
    await put('one', { startAt: 'S', states: { S: { type: 'task', function: 'wf-step', end: true } } })
    const states: Record<string, unknown> = {}
    for (let i = 0; i < opts.steps; i++) states[`S${i}`] = { type: 'task', function: 'wf-step', ...(i + 1 < opts.steps ? { next: `S${i + 1}` } : { end: true }) }
    await put('long', { startAt: 'S0', states })

    const body = Buffer.from('{"n":0}')
    const direct = async (): Promise<number> => {
      const t0 = performance.now()
      const r = await p.embedded.invoke('wf-step', { method: 'POST', path: '/', headers: { 'content-type': 'application/json' }, body, maxResponseBytes: 1 << 20 })
      if (r.status !== 200) throw new Error(`direct call answered ${r.status}`)
      return performance.now() - t0
    }
    const http = async (path: string): Promise<{ ms: number; text: string }> => {
      const t0 = performance.now()
      const res = await client.request({ method: 'POST', path, headers: { 'content-type': 'application/json' }, body })
      const text = await res.body.text()
      if (res.statusCode !== 200) throw new Error(`${path} answered ${res.statusCode}: ${text}`)
      return { ms: performance.now() - t0, text }
    }
    for (let i = 0; i < 200; i++) { await direct(); await http('/fn/wf-step'); await http('/wf/one') }
    const n = opts.runs * 20
    const directMs: number[] = []
    const httpMs: number[] = []
    const oneMs: number[] = []
    for (let i = 0; i < n; i++) {
      directMs.push(await direct())
      httpMs.push((await http('/fn/wf-step')).ms)
      oneMs.push((await http('/wf/one')).ms)
    }
    opts.progress(`workflows: direct call p50 ${summarize(directMs).p50.toFixed(3)} ms, one-step run p50 ${summarize(oneMs).p50.toFixed(3)} ms`)
    const longMs: number[] = []
    for (let i = 0; i < opts.runs; i++) {
      const r = await http('/wf/long')
      if (JSON.parse(r.text).n !== opts.steps) throw new Error(`the ${opts.steps}-step run answered ${r.text}`)
      longMs.push(r.ms)
    }
    const long = summarize(longMs)
    const d = summarize(directMs)
    opts.progress(`workflows: ${opts.steps}-step run p50 ${long.p50.toFixed(1)} ms`)
    return { directMs: d, httpMs: summarize(httpMs), oneStepRunMs: summarize(oneMs), longRunMs: long, steps: opts.steps, perStepOverheadMs: (long.p50 - d.p50 * opts.steps) / opts.steps }
  } finally {
    await client.close()
    untrack()
    await p.close()
  }
}
