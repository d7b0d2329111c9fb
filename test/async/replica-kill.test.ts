import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { processTreesMentioning, startUp } from '../fixtures/platform.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

// Two replicas as separate processes (`bin/kindling.mjs up`, compiled by the test command) on one real Redis:
// the replica running a job is killed with SIGKILL mid-job; the other reclaims it and settles it, once.

/** The first attempt hangs past its timeout (it can only end by the kill), later attempts answer at once. */
const SLOW_FIRST = `export default async (event) => {
  const attempt = event.headers['x-kindling-async-attempt']
  if (attempt === '1') await new Promise((r) => setTimeout(r, 60000))
  return 'done on attempt ' + attempt
}`

async function json(url: string, method = 'GET', body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await request(url, { method: method as 'GET', headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? null : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

t.test('a replica killed mid-job: the other finishes it, settled exactly once', async (t) => {
  const redis = await startRedis(t)
  const dirs = await Promise.all([mkdtemp(join(tmpdir(), 'kdl-async-a-')), mkdtemp(join(tmpdir(), 'kdl-async-b-'))])
  const replicas = await Promise.all(dirs.map((d) => startUp(d, { KINDLING_LOADGUARD_ENABLED: 'false', KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_ASYNC_RECLAIM_MARGIN_MS: '500', KINDLING_ASYNC_RETRY_BASE_MS: '20' })))
  t.teardown(async () => {
    for (const r of replicas) {
      if (r.child.exitCode === null && r.child.signalCode === null) {
        r.child.kill('SIGTERM')
        await once(r.child, 'exit')
      }
    }
    // The killed replica's instances outlive it: stop them by PID.
    for (const d of dirs) for (const pid of await processTreesMentioning(d)) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })))
  })
  const [a] = replicas as [{ child: ChildProcess; url: string }, { child: ChildProcess; url: string }]
  t.equal((await json(`${a.url}/v1/functions/slow`, 'PUT', { runtime: 'node', code: SLOW_FIRST, timeoutMs: 3000, queueTimeoutMs: 500 })).status, 201)
  // The deploy reaches the other replica through the shared store: both route it before the job goes in.
  for (const r of replicas) await waitFor(async () => (await json(`${r.url}/v1/functions/slow`)).status === 200, 'both replicas to know the function')

  const enq = await json(`${a.url}/async/fn/slow`, 'POST')
  t.equal(enq.status, 202)
  const id = String(enq.json['id'])
  const running = await waitFor(async () => {
    const j = (await json(`${a.url}/v1/async/${id}`)).json
    return j['state'] === 'running' ? j : undefined
  }, 'the job to start')
  t.equal(running['attempts'], 1)
  const runner = String(running['worker'])
  // Which replica took it: the job names its worker, the replica's id (GET /v1/cluster).
  const ids = await Promise.all(replicas.map(async (r) => String((await json(`${r.url}/v1/cluster`)).json['replica'])))
  const victimIndex = ids.indexOf(runner)
  t.ok(victimIndex >= 0, `a replica started the job (worker ${runner})`)
  const victim = replicas[victimIndex]!
  const survivor = replicas[1 - victimIndex]!
  victim.child.kill('SIGKILL')
  await once(victim.child, 'exit')

  const done = await waitFor(async () => {
    const j = (await json(`${survivor.url}/v1/async/${id}`)).json
    return j['state'] === 'succeeded' || j['state'] === 'dead' || j['state'] === 'failed' ? j : undefined
  }, 'the survivor to finish the job', 30_000, 100)
  t.equal(done['state'], 'succeeded')
  t.equal(done['attempts'], 2, 'the lost attempt counts; the second ran')
  t.not(done['worker'], runner, 'the survivor ran it')
  t.equal((done['result'] as { body: string }).body, 'done on attempt 2')
  const m = await request(`${survivor.url}/metrics`).then((x) => x.body.text())
  t.match(m, /kindling_async_jobs_total\{result="succeeded"\} 1/, 'settled once, by the survivor')
  const c = redis.client()
  t.same(await c.xpending('kindling:async', 'workers'), [0, null, null, null], 'nothing left pending')
  t.equal(await c.xlen('kindling:async:dlq'), 0)
  t.equal(await c.zcard('kindling:async:delayed'), 0, 'no retry scheduled behind it')
})
