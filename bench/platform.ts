import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { Client } from 'undici'
import type { Config } from '../common/config.js'
import { startEmbedded, startPlatform as startRole, type Embedded } from '../embedded/main.js'

export interface PoolRow {
  pool: string
  kind: 'generic' | 'prewarm'
  runtime: string
  function?: string
  target: number
  idle: number
  starting: number
}

export interface Call {
  status: number
  /** Client-side latency: request sent → whole body read, ms. */
  ms: number
  start: string | undefined
  text: string
}

export interface BenchPlatform {
  embedded: Embedded
  url: string
  port: number
  dataDir: string
  backend: 'process' | 'docker' | 'kubernetes'
  api(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }>
  deploy(name: string, spec: Record<string, unknown>): Promise<void>
  remove(name: string): Promise<void>
  setPoolSize(n: number): Promise<void>
  pools(): Promise<PoolRow[]>
  /** One timed call to `/fn/:name` over a kept-alive connection. */
  call(name: string): Promise<Call>
  /**
   * Waits until the platform is quiet: every pool at its target with nothing starting (GET /v1/pools),
   * and no instance the pool manager has let go of still being torn down (its run directory exists).
   */
  settle(timeoutMs?: number): Promise<void>
  close(): Promise<void>
}

export interface PlatformOptions {
  dataDir: string
  backend: 'process' | 'docker' | 'kubernetes'
  poolSize: number
  /** Further settings, e.g. the load guard's (`KINDLING_LOADGUARD_*`). */
  overrides?: Partial<Record<keyof Config, string | number>>
  /** Issue 13: the platform as a controller, and calls through a cluster router (KINDLING_ROLE=router) in this process. */
  viaRouter?: boolean
}

export async function startPlatform(opts: PlatformOptions): Promise<BenchPlatform> {
  const embedded = await startEmbedded({
    env: {},
    overrides: {
      KINDLING_PORT: 0,
      KINDLING_DATA_DIR: opts.dataDir,
      KINDLING_LOG_LEVEL: 'error',
      KINDLING_BACKEND: opts.backend,
      KINDLING_POOL_SIZE: opts.poolSize,
      // Pool sizes are what the bench sets: the reactive rule would turn the `cold` kind into `specialized`.
      KINDLING_POOL_ADAPTIVE: 'false',
      ...(opts.viaRouter === true ? { KINDLING_ROLE: 'controller', KINDLING_EXECUTOR_PORT: 0 } : {}),
      ...opts.overrides,
    },
    log: pino({ level: 'error' }),
  })
  const router = opts.viaRouter === true
    ? await startRole({ env: {}, overrides: { KINDLING_ROLE: 'router', KINDLING_PORT: 0, KINDLING_EXECUTOR_URL: `http://127.0.0.1:${embedded.executorPort ?? 0}`, KINDLING_LOG_LEVEL: 'error' }, log: pino({ level: 'error' }) })
    : undefined
  const client = new Client(embedded.url, { keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 })
  const callUrl = router?.url ?? embedded.url
  const callClient = router === undefined ? client : new Client(router.url, { keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 })
  const runDir = join(opts.dataDir, 'run')

  const api: BenchPlatform['api'] = async (method, path, body) => {
    const res = await client.request({
      method,
      path,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? null : JSON.stringify(body),
    })
    const text = await res.body.text()
    return { status: res.statusCode, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
  }
  const must = async (method: 'GET' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<Record<string, unknown>> => {
    const r = await api(method, path, body)
    if (r.status >= 300) throw new Error(`${method} ${path} answered ${r.status}: ${JSON.stringify(r.json)}`)
    return r.json
  }
  const pools = async (): Promise<PoolRow[]> => (await must('GET', '/v1/pools'))['pools'] as PoolRow[]

  return {
    embedded,
    url: callUrl,
    port: Number(new URL(callUrl).port),
    dataDir: opts.dataDir,
    backend: opts.backend,
    api,
    deploy: async (name, spec) => { await must('PUT', `/v1/functions/${name}`, { runtime: 'node', ...spec }) },
    remove: async (name) => { await must('DELETE', `/v1/functions/${name}`) },
    setPoolSize: async (n) => { await must('PUT', '/v1/runtimes/node', { poolSize: n }) },
    pools,
    call: async (name) => {
      const t0 = performance.now()
      const res = await callClient.request({ method: 'GET', path: `/fn/${name}` })
      const text = await res.body.text()
      const ms = performance.now() - t0
      const start = res.headers['x-kindling-start']
      return { status: res.statusCode, ms, start: typeof start === 'string' ? start : undefined, text }
    },
    settle: async (timeoutMs = 60_000) => {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const rows = await pools()
        const poolsReady = rows.every((p) => p.idle === p.target && p.starting === 0)
        let tornDown = true
        if (poolsReady) {
          const live = new Set<string>()
          for (const inst of embedded.pools.instances()) live.add(inst.id)
          const dirs = await readdir(runDir).catch(() => [] as string[])
          tornDown = dirs.every((d) => !/^kdl-[0-9a-f]+$/.test(d) || live.has(d))
        }
        if (poolsReady && tornDown) return
        if (Date.now() > deadline) throw new Error(`pools did not settle within ${timeoutMs} ms: ${JSON.stringify(rows)}`)
        await new Promise((r) => setTimeout(r, 5))
      }
    },
    close: async () => {
      if (router !== undefined) {
        await callClient.close().catch(() => {})
        await router.close()
      }
      await client.close().catch(() => {})
      await embedded.close()
    },
  }
}
