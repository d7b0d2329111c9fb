import t, { type Test } from 'tap'
import { request } from 'undici'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

// Async invocations end to end (issue 11): a real redis-server, a real platform with the process backend.

/** Answers what the job's call looked like, with the attempt the platform told it. */
const ECHO = `export default (event) => ({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({
  attempt: event.headers['x-kindling-async-attempt'], job: event.headers['x-kindling-async-id'], method: event.method, path: event.path, body: event.body,
  invoke: event.headers['x-kindling-invoke'] ?? null, token: event.headers['x-kindling-async-token'] ?? null }) })`
/** Fails every attempt with a 500 that names the attempt. */
const FAILING = `export default (event) => ({ status: 500, body: 'broken attempt ' + event.headers['x-kindling-async-attempt'] })`
/** Counts its own executions (one persistent instance), answering 422 each time. */
const COUNTING_4XX = `let n = 0; export default () => { n++; return { status: 422, body: 'bad input ' + n } }`
const COUNTING = `let n = 0; export default () => { n++; return 'run ' + n }`

async function platform(t: Test): Promise<{ p: TestPlatform; redis: Awaited<ReturnType<typeof startRedis>> }> {
  const redis = await startRedis(t)
  const p = await startPlatform(t, { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_ASYNC_RETRY_BASE_MS: 20, KINDLING_LOADGUARD_ENABLED: 'false' })
  return { p, redis }
}

async function enqueue(p: TestPlatform, path: string, opts: { body?: string | Buffer; headers?: Record<string, string>; method?: string } = {}): Promise<{ status: number; headers: Record<string, unknown>; json: Record<string, unknown> }> {
  const res = await request(`${p.url}${path}`, { method: (opts.method ?? 'POST') as 'POST', headers: opts.headers ?? {}, body: opts.body ?? null })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

/** Calls of a function the router answered with a status (kindling_invocations_total). */
async function invocations(p: TestPlatform, fn: string): Promise<number> {
  const text = await (await request(`${p.url}/metrics`)).body.text()
  let n = 0
  for (const m of text.matchAll(new RegExp(`^kindling_invocations_total\\{function="${fn}",version="\\d+",code="\\d+"\\} (\\d+)`, 'gm'))) n += Number(m[1])
  return n
}

async function settled(p: TestPlatform, id: string, states = ['succeeded', 'failed', 'dead']): Promise<Record<string, unknown>> {
  return waitFor(async () => {
    const got = await p.api('GET', `/v1/async/${id}`)
    return states.includes(String(got.json['state'])) ? got.json : undefined
  }, `job ${id} to settle`, 20_000)
}

t.test('202 with an id, then the job succeeds with the function\'s answer', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO, mode: 'persistent' })).status, 201)
  const a = await enqueue(p, '/async/fn/echo/sub/path?x=1', { body: Buffer.from([0xff, 0x00, 0x41]), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(a.status, 202)
  const id = String(a.json['id'])
  t.match(id, /^j-[0-9a-f]{20}$/)
  t.equal(a.headers['location'], `/v1/async/${id}`)
  const job = await settled(p, id)
  t.equal(job['state'], 'succeeded')
  t.equal(job['attempts'], 1)
  t.equal(job['maxAttempts'], 3, '1 + the default 2 retries')
  t.equal(job['function'], 'echo')
  const result = job['result'] as { status: number; body: string; bodyEncoding: string }
  t.equal(result.status, 200)
  t.equal(result.bodyEncoding, 'utf8')
  const seen = JSON.parse(result.body) as Record<string, unknown>
  t.equal(seen['attempt'], '1', 'the function is told its attempt')
  t.equal(seen['job'], id, 'the function is told its job id')
  t.equal(seen['token'], null, 'the platform token is not passed on')
  t.equal(seen['method'], 'POST')
  t.equal(seen['path'], '/sub/path')

  // The header form on /fn, with an alias in the key.
  const b = await enqueue(p, '/fn/echo@latest', { body: 'hello', headers: { 'x-kindling-invoke': 'async' } })
  t.equal(b.status, 202)
  const jb = await settled(p, String(b.json['id']))
  t.equal(jb['function'], 'echo@latest')
  t.equal(JSON.parse((jb['result'] as { body: string }).body).invoke, null, 'x-kindling-invoke is not passed on')
  // A plain call is still synchronous, and a client cannot forge the async headers.
  const sync = await p.invoke('echo', { headers: { 'x-kindling-async-id': 'j-forged', 'x-kindling-async-attempt': '9' } })
  t.equal(sync.status, 200)
  t.equal((sync.json() as Record<string, unknown>)['job'], undefined)

  const metrics = await request(`${p.url}/metrics`).then((r) => r.body.text())
  t.match(metrics, /kindling_async_jobs_total\{result="succeeded"\} 2/)
  t.match(metrics, /kindling_async_queue_seconds_count 2/)
})

t.test('a function answering 500 is retried, then dead-lettered; redrive after a fix succeeds with the same id', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('flaky', { runtime: 'node', code: FAILING, asyncRetries: 3 })).status, 201)
  const a = await enqueue(p, '/async/fn/flaky', { body: 'x' })
  t.equal(a.status, 202)
  const id = String(a.json['id'])
  const job = await settled(p, id)
  t.equal(job['state'], 'dead')
  t.equal(job['attempts'], 4, '1 + asyncRetries attempts')
  t.equal(job['maxAttempts'], 4)
  t.equal((job['result'] as { body: string }).body, 'broken attempt 4', 'the function itself saw four attempts')
  t.match(job['error'], { code: 'HTTP_500', status: 500 })

  const list = await p.api('GET', '/v1/async/dlq')
  t.equal(list.status, 200)
  const entries = list.json['jobs'] as Array<Record<string, unknown>>
  t.equal(entries.length, 1)
  t.match(entries[0], { id, function: 'flaky', error: { code: 'HTTP_500' } })
  t.equal((await p.api('GET', `/v1/async/dlq/${id}`)).json['state'], 'dead')
  t.equal((await p.api('GET', '/v1/async/dlq?limit=0')).json['code'], 'KDL_ERR_BAD_REQUEST')
  const events = await p.api('GET', '/v1/events')
  t.ok((events.json['events'] as Array<{ type: string }>).some((e) => e.type === 'async.dead'), 'an async.dead event')

  t.equal((await p.deploy('flaky', { runtime: 'node', code: ECHO, asyncRetries: 3 })).status, 200)
  const r = await p.api('POST', `/v1/async/dlq/${id}/redrive`)
  t.equal(r.status, 200)
  t.same(r.json['redriven'], [id])
  const again = await settled(p, id)
  t.equal(again['state'], 'succeeded')
  t.equal(again['attempts'], 1, 'attempts were reset')
  t.equal(JSON.parse((again['result'] as { body: string }).body).job, id, 'the same id')
  t.same((await p.api('GET', '/v1/async/dlq')).json['jobs'], [], 'the DLQ is empty')
  t.equal((await p.api('POST', `/v1/async/dlq/${id}/redrive`)).json['code'], 'KDL_ERR_JOB_NOT_FOUND', 'a job not in the DLQ is not redriven')
  const ev = await p.api('GET', '/v1/events')
  t.ok((ev.json['events'] as Array<{ type: string }>).some((e) => e.type === 'async.redriven'), 'an async.redriven event')
})

t.test('redrive-all and purge of the DLQ', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('broken', { runtime: 'node', code: FAILING, asyncRetries: 0 })).status, 201)
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push(String((await enqueue(p, '/async/fn/broken')).json['id']))
  for (const id of ids) t.equal((await settled(p, id))['state'], 'dead')
  t.equal((await p.api('DELETE', `/v1/async/dlq/${ids[0]}`)).status, 200)
  t.equal((await p.api('GET', `/v1/async/${ids[0]}`)).json['code'], 'KDL_ERR_JOB_NOT_FOUND', 'a purged job is gone')
  const all = await p.api('POST', '/v1/async/dlq/redrive')
  t.same([...(all.json['redriven'] as string[])].sort(), [ids[1], ids[2]].sort())
  for (const id of ids.slice(1)) t.equal((await settled(p, id))['state'], 'dead', 'dead again (still broken)')
  const purged = await p.api('DELETE', '/v1/async/dlq')
  t.equal((purged.json['purged'] as string[]).length, 2)
  t.same((await p.api('GET', '/v1/async/dlq')).json['jobs'], [])
})

t.test('an Idempotency-Key gives the same id and one execution', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('count', { runtime: 'node', code: COUNTING, mode: 'persistent' })).status, 201)
  const first = await enqueue(p, '/async/fn/count', { headers: { 'idempotency-key': 'order-42' } })
  const second = await enqueue(p, '/async/fn/count', { headers: { 'idempotency-key': 'order-42' } })
  t.equal(first.status, 202)
  t.equal(second.status, 202)
  t.equal(second.json['id'], first.json['id'])
  t.equal(second.headers['x-kindling-idempotent-replay'], 'true')
  t.equal((await settled(p, String(first.json['id'])))['state'], 'succeeded')
  const other = await enqueue(p, '/async/fn/count', { headers: { 'idempotency-key': 'order-43' } })
  t.not(other.json['id'], first.json['id'])
  const job = await settled(p, String(other.json['id']))
  t.equal((job['result'] as { body: string }).body, 'run 2', 'the function ran twice for two keys, not three times')
  t.equal((await enqueue(p, '/async/fn/count', { headers: { 'idempotency-key': 'has space' } })).json['code'], 'KDL_ERR_BAD_REQUEST')
})

t.test('a 4xx answer is not retried', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('picky', { runtime: 'node', code: COUNTING_4XX, mode: 'persistent' })).status, 201)
  const id = String((await enqueue(p, '/async/fn/picky')).json['id'])
  const job = await settled(p, id)
  t.equal(job['state'], 'failed')
  t.equal(job['attempts'], 1)
  t.match(job['error'], { code: 'HTTP_422', status: 422 })
  t.equal((job['result'] as { body: string }).body, 'bad input 1')
  t.same((await p.api('GET', '/v1/async/dlq')).json['jobs'], [], 'a failed job is not dead-lettered')
})

t.test('bad input: oversized body, unknown function, unknown alias, bad or unknown ids', async (t) => {
  const { p } = await platform(t)
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO })).status, 201)
  const big = await enqueue(p, '/async/fn/echo', { body: Buffer.alloc(262_145, 97) })
  t.equal(big.status, 413)
  t.equal(big.json['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE')
  const bigHeader = await enqueue(p, '/fn/echo', { body: Buffer.alloc(262_145, 97), headers: { 'x-kindling-invoke': 'async' } })
  t.equal(bigHeader.json['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE')
  const missing = await enqueue(p, '/async/fn/nope')
  t.equal(missing.status, 404)
  t.equal(missing.json['code'], 'KDL_ERR_FN_NOT_FOUND')
  t.equal((await enqueue(p, '/async/fn/echo@nope')).json['code'], 'KDL_ERR_VERSION_NOT_FOUND')
  const bad = await p.api('GET', '/v1/async/not-an-id')
  t.equal(bad.status, 404)
  t.equal(bad.json['code'], 'KDL_ERR_JOB_NOT_FOUND')
  t.equal((await p.api('GET', '/v1/async/j-00000000000000000000')).json['code'], 'KDL_ERR_JOB_NOT_FOUND')
  t.equal((await p.api('DELETE', '/v1/async/dlq/j-00000000000000000000')).json['code'], 'KDL_ERR_JOB_NOT_FOUND')
  t.equal((await p.api('GET', '/v1/functions/echo')).json['asyncRetries'], 2, 'the spec default is stored')
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO, asyncRetries: 11 })).json['code'], 'KDL_ERR_BAD_SPEC')
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO, asyncMaxAgeMs: 1000 })).json['code'], 'KDL_ERR_BAD_SPEC')
})

t.test('on the file store async answers 503 KDL_ERR_ASYNC_UNAVAILABLE', async (t) => {
  const p = await startPlatform(t, { KINDLING_LOADGUARD_ENABLED: 'false' })
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO })).status, 201)
  for (const [path, headers] of [['/async/fn/echo', {}], ['/fn/echo', { 'x-kindling-invoke': 'async' }]] as const) {
    const r = await enqueue(p, path, { body: 'x', headers })
    t.equal(r.status, 503)
    t.equal(r.json['code'], 'KDL_ERR_ASYNC_UNAVAILABLE')
  }
  t.equal((await p.api('GET', '/v1/async/j-00000000000000000000')).json['code'], 'KDL_ERR_ASYNC_UNAVAILABLE')
  t.equal((await p.api('GET', '/v1/async/dlq')).json['code'], 'KDL_ERR_ASYNC_UNAVAILABLE')
  t.equal((await p.invoke('echo')).status, 200, 'plain calls still work')
})

t.test('Redis stopped mid-job: enqueues are refused with 503, the job in flight is not lost, and workers resume', async (t) => {
  const redis = await startRedis(t)
  const p = await startPlatform(t, { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_ASYNC_RETRY_BASE_MS: 20, KINDLING_ASYNC_RECLAIM_MARGIN_MS: 200, KINDLING_LOADGUARD_ENABLED: 'false' })
  // Its first run ends only when the test says so (a call of /release on the same instance): after Redis stopped.
  const code = `let n = 0; let release; const gate = new Promise((r) => { release = r })
export default async (event) => { if (event.path === '/release') { release(); return 'released' } n++; if (n === 1) await gate; return 'run ' + n }`
  t.equal((await p.deploy('steady', { runtime: 'node', mode: 'persistent', maxInstances: 1, concurrency: 2, code, timeoutMs: 2000, queueTimeoutMs: 200 })).status, 201)
  t.equal((await p.deploy('echo', { runtime: 'node', code: ECHO })).status, 201)
  const inflight = await enqueue(p, '/async/fn/steady', { body: 'x' })
  t.equal(inflight.status, 202)
  const id = String(inflight.json['id'])
  await waitFor(async () => (await p.api('GET', `/v1/async/${id}`)).json['state'] === 'running', 'the job to start')

  await redis.stop()
  const refused = await enqueue(p, '/async/fn/echo', { body: 'while down' })
  t.equal(refused.status, 503)
  t.equal(refused.json['code'], 'KDL_ERR_STORE_UNAVAILABLE', 'no 202 without a durable job')
  t.match((await p.api('GET', `/v1/async/${id}`)).json, { code: 'KDL_ERR_STORE_UNAVAILABLE' })
  // The run ends while Redis is away: its outcome cannot be written, so the delivery stays pending.
  t.equal((await p.invoke('steady', { path: '/release' })).text, 'released')
  await waitFor(async () => (await invocations(p, 'steady')) === 2, 'the job\'s run to have answered (beside the release call)')
  await redis.start()

  // Workers read again once Redis is back: a job enqueued after the restart runs…
  const after = await waitFor(async () => { const r = await enqueue(p, '/async/fn/echo', { body: 'after' }); return r.status === 202 ? r : undefined }, 'enqueue to work again', 15_000, 100)
  const job = await settled(p, String(after.json['id']))
  t.equal(JSON.parse((job['result'] as { body: string }).body)['body'], 'after')
  // …and the job whose outcome was lost with Redis is delivered again (at least once) and settles.
  const done = await settled(p, id)
  t.equal(done['state'], 'succeeded')
  t.equal((done['result'] as { body: string }).body, 'run 2', 'run again after the restart: at-least-once')
  t.equal(done['attempts'], 2)
})
