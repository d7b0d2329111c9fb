import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { startPlatform } from './platform.js'
import { summarize, type Latency } from './stats.js'

/** Async invocations (issue 11) on a redis-server of the bench's own: enqueue → start latency, throughput. */
export interface AsyncResult {
  jobs: number
  /** Client wall time of one enqueue (POST /async/fn → 202). */
  enqueueMs: Latency
  /** The job's startedAt − enqueuedAt (ms clock of the platform). */
  queueMs: Latency
  /** Jobs settled per second: from the first enqueue to the last job's finishedAt. */
  jobsPerSecond: number
  concurrency: number
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      const port = typeof a === 'object' && a !== null ? a.port : 0
      s.close(() => resolve(port))
    })
  })
}

export async function measureAsync(opts: { dataDir: string; jobs: number; concurrency: number; progress: (line: string) => void; track: (close: () => Promise<void>) => () => void }): Promise<AsyncResult> {
  const redisDir = await mkdtemp(join(tmpdir(), 'kdl-bench-redis-'))
  const port = await freePort()
  const redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', redisDir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--protected-mode', 'no'], { stdio: 'ignore' })
  const stopRedis = async (): Promise<void> => {
    if (redis.exitCode === null) {
      const gone = new Promise((r) => redis.once('exit', r))
      redis.kill('SIGTERM')
      await gone
    }
    await rm(redisDir, { recursive: true, force: true })
  }
  const untrackRedis = opts.track(stopRedis)
  try {
    // Ready when the platform connects (it fails fast; retried until the server listens).
    let p: Awaited<ReturnType<typeof startPlatform>> | undefined
    for (let i = 0; p === undefined; i++) {
      try {
        p = await startPlatform({
          dataDir: opts.dataDir, backend: 'process', poolSize: 1,
          overrides: { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: `redis://127.0.0.1:${port}`, KINDLING_ASYNC_CONCURRENCY: opts.concurrency, KINDLING_LOADGUARD_ENABLED: 'false' },
        })
      } catch (err) {
        if (i > 100) throw err
        await new Promise((r) => setTimeout(r, 50))
      }
    }
    const platform = p
    const untrack = opts.track(() => platform.close())
    try {
      await platform.deploy('async-hello', { runtime: 'node', code: 'export default () => "ok"', mode: 'persistent', concurrency: opts.concurrency, prewarm: 1 })
      const client = new Pool(platform.url, { connections: 16 })
      const ids: string[] = []
      const enqueueMs: number[] = []
      const t0 = Date.now()
      let next = 0
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < opts.jobs) {
          next++
          const s = performance.now()
          const res = await client.request({ method: 'POST', path: '/async/fn/async-hello', body: 'x' })
          const body = await res.body.json() as { id: string }
          enqueueMs.push(performance.now() - s)
          ids.push(body.id)
        }
      }))
      opts.progress(`async: ${ids.length} jobs enqueued in ${Date.now() - t0} ms`)
      const queueMs: number[] = []
      let lastFinish = 0
      for (const id of ids) {
        for (;;) {
          const j = (await platform.api('GET', `/v1/async/${id}`)).json
          if (j['state'] === 'succeeded' || j['state'] === 'failed' || j['state'] === 'dead') {
            queueMs.push(Date.parse(String(j['startedAt'])) - Date.parse(String(j['enqueuedAt'])))
            lastFinish = Math.max(lastFinish, Date.parse(String(j['finishedAt'])))
            break
          }
          await new Promise((r) => setTimeout(r, 20))
        }
      }
      await client.close()
      return { jobs: ids.length, enqueueMs: summarize(enqueueMs), queueMs: summarize(queueMs), jobsPerSecond: ids.length / ((lastFinish - t0) / 1000), concurrency: opts.concurrency }
    } finally {
      untrack()
      await platform.close()
    }
  } finally {
    untrackRedis()
    await stopRedis()
  }
}
