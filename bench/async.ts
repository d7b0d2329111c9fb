import { Pool } from 'undici'
import { startPlatform } from './platform.js'
import { startBenchRedis, whenRedisAnswers } from './redis.js'
import { summarize, type Latency } from './stats.js'

/** Async invocations (issue 11) on a redis-server of the bench's own: enqueue → start latency, throughput. */
export interface AsyncResult {
  jobs: number
  /** Client wall time of one enqueue (POST /async/fn → 202), on an idle queue. */
  enqueueMs: Latency
  /** The job's startedAt − enqueuedAt (ms clock of the platform), on an idle queue. */
  queueMs: Latency
  /** Jobs settled per second when `jobs` are enqueued at once: from the first enqueue to the last job's finishedAt. */
  jobsPerSecond: number
  concurrency: number
  /** The same function called synchronously through the router (the baseline of the enqueue and queue times). */
  syncMs: Latency
  /** Several replicas: a deploy answered on replica A until replica B routes the new version (B's preload included). */
  replicationMs: Latency
}

export async function measureAsync(opts: { dataDir: string; jobs: number; concurrency: number; progress: (line: string) => void; track: (close: () => Promise<void>) => () => void }): Promise<AsyncResult> {
  const redis = await startBenchRedis(opts.track)
  try {
    const platform = await whenRedisAnswers(() => startPlatform({
      dataDir: opts.dataDir, backend: 'process', poolSize: 1,
      overrides: { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_ASYNC_CONCURRENCY: opts.concurrency, KINDLING_LOADGUARD_ENABLED: 'false' },
    }))
    const untrack = opts.track(() => platform.close())
    try {
      await platform.deploy('async-hello', { runtime: 'node', code: 'export default () => "ok"', mode: 'persistent', concurrency: opts.concurrency, prewarm: 1 })
      const client = new Pool(platform.url, { connections: 16 })
      const job = async (id: string): Promise<Record<string, unknown>> => {
        for (;;) {
          const j = (await platform.api('GET', `/v1/async/${id}`)).json
          if (j['state'] === 'succeeded' || j['state'] === 'failed' || j['state'] === 'dead') return j
          await new Promise((r) => setImmediate(r))
        }
      }
      // Latency on an idle queue: one job at a time, each waited for before the next is enqueued.
      const enqueueMs: number[] = []
      const queueMs: number[] = []
      for (let i = 0; i < Math.min(300, opts.jobs); i++) {
        const s = performance.now()
        const res = await client.request({ method: 'POST', path: '/async/fn/async-hello', body: 'x' })
        const { id } = await res.body.json() as { id: string }
        enqueueMs.push(performance.now() - s)
        const j = await job(id)
        queueMs.push(Date.parse(String(j['startedAt'])) - Date.parse(String(j['enqueuedAt'])))
      }
      // Throughput: every job enqueued at once by 16 clients, then the time until the last one finished.
      const ids: string[] = []
      const t0 = Date.now()
      let next = 0
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < opts.jobs) {
          next++
          const res = await client.request({ method: 'POST', path: '/async/fn/async-hello', body: 'x' })
          ids.push((await res.body.json() as { id: string }).id)
        }
      }))
      opts.progress(`async: ${ids.length} jobs enqueued in ${Date.now() - t0} ms`)
      let lastFinish = 0
      for (const id of ids) lastFinish = Math.max(lastFinish, Date.parse(String((await job(id))['finishedAt'])))
      await client.close()
      const syncMs: number[] = []
      for (let i = 0; i < 500; i++) syncMs.push((await platform.call('async-hello')).ms)
      const replicationMs = await measureReplication(platform, redis.url, `${opts.dataDir}-b`, opts.track, opts.progress)
      return {
        jobs: ids.length, enqueueMs: summarize(enqueueMs), queueMs: summarize(queueMs), jobsPerSecond: ids.length / ((lastFinish - t0) / 1000), concurrency: opts.concurrency,
        syncMs: summarize(syncMs), replicationMs: summarize(replicationMs),
      }
    } finally {
      untrack()
      await platform.close()
    }
  } finally {
    await redis.stop()
  }
}

/** A second replica on the same Redis; each deploy on the first is timed until the second routes it. */
async function measureReplication(a: Awaited<ReturnType<typeof startPlatform>>, redisUrl: string, dataDir: string, track: (close: () => Promise<void>) => () => void, progress: (line: string) => void): Promise<number[]> {
  const b = await startPlatform({ dataDir, backend: 'process', poolSize: 1, overrides: { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redisUrl, KINDLING_LOADGUARD_ENABLED: 'false' } })
  const untrack = track(() => b.close())
  try {
    const out: number[] = []
    for (let i = 1; i <= 30; i++) {
      // Onto a quiet replica B (its generic pool full), as a deploy usually finds it.
      await b.settle()
      await a.deploy('replicated', { runtime: 'node', code: `export default () => "v${i}"`, prewarm: 1 })
      const t0 = performance.now()
      while (b.embedded.executor.head('replicated')?.version !== i) await new Promise((r) => setImmediate(r))
      out.push(performance.now() - t0)
    }
    progress(`async: replication p50 ${summarize(out).p50.toFixed(1)} ms`)
    return out
  } finally {
    untrack()
    await b.close()
  }
}
