import t, { type Test } from 'tap'
import { request } from 'undici'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { startRedis, type TestRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

// Cron triggers on real platforms (process backend) sharing one real redis-server (issue 11).

const HOUR = 3600_000
/** Answers with a header the trigger sends. */
const ECHO = `export default async (event) => ({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ team: event.headers['x-team'] ?? null }) })`

async function replicas(t: Test, redis: TestRedis, n: number): Promise<TestPlatform[]> {
  return Promise.all(Array.from({ length: n }, () => startPlatform(t, { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_POOL_SIZE: 0 })))
}

async function deployEverywhere(ps: TestPlatform[], name: string): Promise<void> {
  // Deployed on one replica; the others route it once they heard of it (and fetch its code from Redis).
  const [first, ...others] = ps as [TestPlatform, ...TestPlatform[]]
  const r = await first.deploy(name, { runtime: 'node', code: ECHO, mode: 'persistent' })
  if (r.status !== 200 && r.status !== 201) throw new Error(`deploy answered ${r.status}: ${JSON.stringify(r.json)}`)
  for (const p of others) await waitFor(() => p.executor.head(name)?.version === r.json['version'], `${name} to be routed on every replica`)
}

interface Ev { type: string; data?: Record<string, unknown> }
async function events(p: TestPlatform, type: string): Promise<Ev[]> {
  const r = await p.api('GET', '/v1/events?limit=1000')
  return (r.json['events'] as Ev[]).filter((e) => e.type === type)
}
/** Every replica's events of a type: the event stream is shared, so any one replica lists them all. */
async function allEvents(ps: TestPlatform[], type: string, trigger?: string): Promise<Ev[]> {
  const got = await events(ps[ps.length - 1] as TestPlatform, type)
  return trigger === undefined ? got : got.filter((e) => e.data?.['trigger'] === trigger)
}

/** The function's invocations on one replica, from its /metrics. */
async function invocations(p: TestPlatform, fn: string): Promise<number> {
  const text = await (await request(`${p.url}/metrics`)).body.text()
  let n = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('kindling_invocations_total{') && line.includes(`function="${fn}"`)) n += Number(line.split(' ').at(-1))
  }
  return n
}

/** kindling_trigger_fires_total{trigger,result="ok"} on one replica (0 when it fired none). */
async function fires(p: TestPlatform, trigger: string): Promise<number> {
  const text = await (await request(`${p.url}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`kindling_trigger_fires_total{trigger="${trigger}",result="ok"}`))
  return line === undefined ? 0 : Number(line.split(' ').at(-1))
}

t.test('two replicas, an every-second trigger: each tick calls the function exactly once; a delete stops it on both', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis, 2) as [TestPlatform, TestPlatform]
  await deployEverywhere([a, b], 'echo')
  await deployEverywhere([a, b], 'clock')

  const put = await b.api('PUT', '/v1/triggers/every', { cron: '* * * * * *', function: 'echo', body: { hello: 'cron' }, headers: { 'x-team': 'ops' } })
  t.equal(put.status, 201, JSON.stringify(put.json))
  t.match(put.json, { name: 'every', cron: '* * * * * *', function: 'echo', timezone: 'UTC', enabled: true, lastTick: null, missedTicks: 0 })
  t.equal((put.json['nextRuns'] as string[]).length, 5, 'the next five fire times')
  t.equal((await a.api('PUT', '/v1/triggers/clock', { cron: '* * * * * *', function: 'clock' })).status, 201)

  await waitFor(async () => (await allEvents([a, b], 'trigger.fired', 'every')).length >= 4, '4 ticks of the trigger fired', 20_000, 100)
  t.equal((await a.api('DELETE', '/v1/triggers/every')).status, 200)
  t.equal((await b.api('GET', '/v1/triggers/every')).json['code'], 'KDL_ERR_TRIGGER_NOT_FOUND', 'gone on the other replica too')
  // Whatever was in flight lands: every firing is one call of the function, on the replica that fired it.
  await waitFor(async () => {
    const fired = await allEvents([a, b], 'trigger.fired', 'every')
    return await invocations(a, 'echo') + await invocations(b, 'echo') === fired.length
  }, 'every firing to be one invocation', 10_000, 100)
  const fired = await allEvents([a, b], 'trigger.fired', 'every')
  const settled = fired.length
  const ticks = fired.map((e) => Date.parse(String(e.data?.['tick']))).sort((x, y) => x - y)
  t.equal(new Set(ticks).size, ticks.length, 'no tick fired twice across the replicas')
  t.ok(ticks.slice(1).every((tick, i) => tick - (ticks[i] as number) === 1000), `consecutive seconds: ${ticks.map((x) => new Date(x).toISOString()).join(', ')}`)
  t.same(await allEvents([a, b], 'trigger.failed', 'every'), [], 'no call failed')

  // The clock trigger keeps time: three more of its ticks, and the deleted trigger fired on neither replica.
  const clock = (await allEvents([a, b], 'trigger.fired', 'clock')).length
  await waitFor(async () => (await allEvents([a, b], 'trigger.fired', 'clock')).length >= clock + 3, 'three more clock ticks', 10_000, 100)
  t.equal((await allEvents([a, b], 'trigger.fired', 'every')).length, settled, 'a deleted trigger stops firing on both replicas')

  // What the function was sent: the trigger's body and headers and the tick.
  const call = await a.invoke('echo', { headers: { 'x-kindling-trigger': 'manual' } })
  t.equal(call.status, 200)
  // Each replica counts the ticks it fired itself: the two counters add up to the fired events.
  t.equal(await fires(a, 'every') + await fires(b, 'every'), settled, 'kindling_trigger_fires_total, summed over the replicas, counts every firing')
})

t.test('the call carries the body, the headers and the tick; GET shows lastTick and the next runs', async (t) => {
  const redis = await startRedis(t)
  const [a] = await replicas(t, redis, 1) as [TestPlatform]
  // Records what it was sent, in its one persistent instance; a GET returns the records.
  const code = `const seen = []
export default async (req) => {
  if (req.headers['x-team'] !== undefined) seen.push({ method: req.method, team: req.headers['x-team'], type: req.headers['content-type'], body: req.body, trigger: req.headers['x-kindling-trigger'], tick: req.headers['x-kindling-trigger-tick'], job: req.headers['x-kindling-async-id'] })
  return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(seen) }
}`
  t.equal((await a.deploy('rec', { runtime: 'node', code, mode: 'persistent', maxInstances: 1 })).status, 201)
  t.equal((await a.api('PUT', '/v1/triggers/rec-every', { cron: '* * * * * *', function: 'rec', body: { hello: 'cron' }, headers: { 'x-team': 'ops' } })).status, 201)
  await waitFor(async () => (await allEvents([a], 'trigger.fired', 'rec-every')).length >= 1, 'a tick fired', 10_000, 100)
  t.equal((await a.api('DELETE', '/v1/triggers/rec-every')).status, 200)
  // The tick is an async job: it runs once a worker takes it.
  const seen = await waitFor(async () => { const s = (await a.invoke('rec')).json() as Array<Record<string, unknown>>; return s.length >= 1 ? s : undefined }, 'the tick\'s job to call the function')
  const first = seen[0] as Record<string, unknown>
  t.match(first, { method: 'POST', team: 'ops', type: 'application/json', trigger: 'rec-every' }, "the trigger's headers, a POST of JSON, and the trigger's name")
  t.match(String(first['body']), /"hello":\s*"cron"/, 'the body as JSON')
  const fired = (await allEvents([a], 'trigger.fired', 'rec-every'))[0]?.data
  const tick = fired?.['tick']
  t.equal(Date.parse(String(tick)) % 1000, 0, 'the event names the planned tick')
  t.equal(first['tick'], tick, 'the function is told the planned tick')
  t.equal(first['job'], fired?.['job'], 'the tick ran as the async job the event names')
  const job = (await a.api('GET', `/v1/async/${String(fired?.['job'])}`)).json
  t.match(job, { function: 'rec', state: 'succeeded' })
  t.match((await a.api('GET', '/v1/triggers')).json, { triggers: [] }, 'deleted')

  t.equal((await a.api('PUT', '/v1/triggers/daily', { cron: '30 9 * * 1-5', function: 'rec', timezone: 'Europe/Paris' })).status, 201)
  const got = await a.api('GET', '/v1/triggers/daily')
  t.equal(got.status, 200)
  const next = got.json['nextRuns'] as string[]
  t.equal(next.length, 5)
  t.ok(next.every((iso) => ['07:30', '08:30'].includes(iso.slice(11, 16))), `09:30 in Paris is 07:30 or 08:30 UTC: ${next.join(', ')}`)
  t.equal(got.json['lastTick'], null, 'not fired yet')
  const list = await a.api('GET', '/v1/triggers')
  t.same((list.json['triggers'] as Array<{ name: string }>).map((x) => x.name), ['daily'], 'listed')
  const upd = await a.api('PUT', '/v1/triggers/daily', { cron: '30 9 * * 1-5', function: 'rec', timezone: 'Europe/Paris', enabled: false })
  t.equal(upd.status, 200, 'an update answers 200')
  t.match(upd.json, { enabled: false, nextRuns: [], createdAt: got.json['createdAt'] })
})

t.test('bad input gets its code', async (t) => {
  const redis = await startRedis(t)
  const [a] = await replicas(t, redis, 1) as [TestPlatform]
  t.equal((await a.deploy('echo', { runtime: 'node', code: ECHO })).status, 201)
  const put = (name: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> => a.api('PUT', `/v1/triggers/${name}`, body)

  const bad = await put('x', { cron: '61 * * * *', function: 'echo' })
  t.equal(bad.status, 400)
  t.equal(bad.json['code'], 'KDL_ERR_BAD_SPEC')
  t.match(bad.json['message'], /^cron: .*Invalid value for minute: 61/, "a bad expression: the field and croner's message")
  t.match((await put('x', { cron: 'every day', function: 'echo' })).json, { code: 'KDL_ERR_BAD_SPEC', message: /^cron: / })
  t.match((await put('x', { cron: '* * * * * * *', function: 'echo' })).json, { code: 'KDL_ERR_BAD_SPEC', message: /^cron: .*5 or 6 parts/ }, 'a 7-field expression is refused')
  t.match((await put('x', { cron: '* * * * *', function: 'echo', timezone: 'Mars/Olympus' })).json, { code: 'KDL_ERR_BAD_SPEC', message: /^timezone: .*Mars\/Olympus/ })
  t.match((await put('x', { cron: '* * * * *' })).json, { code: 'KDL_ERR_BAD_SPEC', message: /function/ }, 'function is required')
  t.match((await put('x', { cron: '* * * * *', function: 'echo', every: 1 })).json, { code: 'KDL_ERR_BAD_SPEC', message: /unknown field "every"/ })
  t.match((await put('x', { cron: '* * * * *', function: 'echo', headers: { 'x-kindling-invoke': 'async' } })).json, { code: 'KDL_ERR_BAD_SPEC', message: /headers/ })
  t.match((await put('Bad_Name', { cron: '* * * * *', function: 'echo' })).json, { code: 'KDL_ERR_BAD_SPEC', message: /trigger name/ })
  const big = await put('x', { cron: '* * * * *', function: 'echo', body: 'x'.repeat(256 * 1024 + 1) })
  t.equal(big.status, 413)
  t.equal(big.json['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE')

  const unknown = await put('x', { cron: '* * * * *', function: 'nope' })
  t.equal(unknown.status, 404)
  t.equal(unknown.json['code'], 'KDL_ERR_FN_NOT_FOUND')
  t.match((await put('x', { cron: '* * * * *', function: 'nope@live' })).json, { code: 'KDL_ERR_FN_NOT_FOUND', message: /"nope"/ }, 'the name part of name@alias')
  t.equal((await put('x', { cron: '* * * * *', function: 'echo@live' })).status, 201, 'a known function with an alias')
  t.match((await a.api('GET', '/v1/triggers/nope')).json, { code: 'KDL_ERR_TRIGGER_NOT_FOUND' })
  t.match((await a.api('DELETE', '/v1/triggers/nope')).json, { code: 'KDL_ERR_TRIGGER_NOT_FOUND' })
})

t.test('on the file store every trigger route answers 503 KDL_ERR_ASYNC_UNAVAILABLE', async (t) => {
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 0 })
  for (const [method, path] of [['GET', '/v1/triggers'], ['GET', '/v1/triggers/x'], ['PUT', '/v1/triggers/x'], ['DELETE', '/v1/triggers/x']] as const) {
    const r = await p.api(method, path, method === 'PUT' ? { cron: '* * * * *', function: 'echo' } : undefined)
    t.equal(r.status, 503, `${method} ${path}`)
    t.equal(r.json['code'], 'KDL_ERR_ASYNC_UNAVAILABLE')
  }
})

t.test('ticks missed while every replica was down: one trigger.missed event across two replicas, counted in GET', async (t) => {
  const redis = await startRedis(t)
  const first = await replicas(t, redis, 1)
  const one = first[0] as TestPlatform
  t.equal((await one.deploy('echo', { runtime: 'node', code: ECHO })).status, 201)
  t.equal((await one.api('PUT', '/v1/triggers/hourly', { cron: '0 * * * *', function: 'echo' })).status, 201)
  await one.close()
  // Not within a few seconds after an hour: the top of the hour would still count as late, not missed.
  await waitFor(() => Date.now() % HOUR > 5000, 'a few seconds past the hour', 10_000, 100)
  const hour = Date.now() - (Date.now() % HOUR)
  // Down for three hours: the trigger's watermark (every tick up to it settled) is that old.
  await redis.client().hset('kindling:trigger-state:hourly', 'watermark', String(hour - 3 * HOUR), 'lastTick', String(hour - 3 * HOUR))

  const [a, b] = await replicas(t, redis, 2) as [TestPlatform, TestPlatform]
  const missed = await allEvents([a, b], 'trigger.missed', 'hourly')
  t.equal(missed.length, 1, 'exactly one trigger.missed event across both replicas')
  t.match(missed[0]?.data, { count: 3, first: new Date(hour - 2 * HOUR).toISOString(), last: new Date(hour).toISOString() })
  t.same(await allEvents([a, b], 'trigger.fired', 'hourly'), [], 'not fired late')
  const got = await b.api('GET', '/v1/triggers/hourly')
  t.equal(got.json['missedTicks'], 3, 'GET counts the missed ticks')
  t.equal(got.json['lastTick'], new Date(hour - 3 * HOUR).toISOString(), 'lastTick stays the last tick fired')
})
