import t from 'tap'
import { startPlatform } from '../fixtures/platform.js'

// GET /v1/stats (issue 14): the router's call counts per function, as the dashboard charts them.
const CODE = `export default async (event) => ({ status: Number(event.query.status ?? 200), body: 'ok' })`

interface Bucket { t: number; calls: number; errors: number; p50Ms: number | null; p99Ms: number | null; outcomes: Record<string, number>; starts: Record<string, number> }
interface Stats { bucketMs: number; windowMs: number; now: number; functions: Record<string, { buckets: Bucket[]; totals: Omit<Bucket, 't'> }> }

t.test('GET /v1/stats', async (t) => {
  const p = await startPlatform(t)
  t.equal((await p.deploy('st', { runtime: 'node', code: CODE })).status, 201)
  t.equal((await p.deploy('quiet', { runtime: 'node', code: CODE })).status, 201)

  t.test('counts calls, errors, start kinds and latency of the calls made', async (t) => {
    for (let i = 0; i < 5; i++) t.equal((await p.invoke('st')).status, 200)
    t.equal((await p.invoke('st', { path: '?status=503' })).status, 503)
    const res = await p.api('GET', '/v1/stats')
    t.equal(res.status, 200)
    const s = res.json as unknown as Stats
    t.equal(s.bucketMs, 5000)
    t.equal(s.windowMs, 900_000, 'the default window is the ring: 15 minutes')
    t.same(Object.keys(s.functions).sort(), ['quiet', 'st'], 'every deployed function, called or not')
    const st = s.functions['st']!
    t.equal(st.buckets.length, 180)
    t.ok(st.buckets.every((b, i) => i === 0 || b.t - st.buckets[i - 1]!.t === 5000), 'buckets are consecutive, oldest first')
    t.ok(st.buckets.at(-1)!.t <= s.now && s.now < st.buckets.at(-1)!.t + 5000, 'the last bucket is the current one')
    t.equal(st.totals.calls, 6)
    t.equal(st.totals.errors, 1)
    t.equal(st.totals.outcomes['http5xx'], 1, 'the function\'s 503 is an error')
    t.equal(st.totals.outcomes['ok'], 5)
    const starts = st.totals.starts
    t.equal(Object.values(starts).reduce((a, b) => a + b, 0), 6, 'every call has a start kind')
    t.ok(starts['warm']! >= 4, 'calls after the first are warm')
    t.equal(starts['warm']! + starts['cold']! + starts['prewarmed']! + starts['specialized']!, 6)
    t.ok(st.totals.p50Ms! > 0 && st.totals.p99Ms! >= st.totals.p50Ms!, `p50 ${st.totals.p50Ms} ms ≤ p99 ${st.totals.p99Ms} ms`)
    t.equal(s.functions['quiet']!.totals.calls, 0, 'a function never called reads as zeros')
    t.equal(s.functions['quiet']!.totals.p50Ms, null)
  })

  t.test('?function= and ?window= narrow the answer', async (t) => {
    const res = await p.api('GET', '/v1/stats?function=st&window=60')
    t.equal(res.status, 200)
    const s = res.json as unknown as Stats
    t.same(Object.keys(s.functions), ['st'])
    t.equal(s.windowMs, 60_000)
    t.equal(s.functions['st']!.buckets.length, 12, '60 s of 5 s buckets')
    t.equal(s.functions['st']!.totals.calls, 6)
  })

  t.test('refuses a bad window and an unknown function with their codes', async (t) => {
    for (const w of ['0', '901', 'abc', '1.5', '-3']) {
      const res = await p.api('GET', `/v1/stats?window=${w}`)
      t.equal(res.status, 400, `window=${w}`)
      t.equal(res.json['code'], 'KDL_ERR_BAD_REQUEST')
      t.match(res.json['message'], /window must be a whole number of seconds from 1 to 900/)
    }
    const res = await p.api('GET', '/v1/stats?function=nope')
    t.equal(res.status, 404)
    t.equal(res.json['code'], 'KDL_ERR_FN_NOT_FOUND')
  })

  t.test('an unknown function called through /fn is not counted', async (t) => {
    t.equal((await p.invoke('ghost')).status, 404)
    const s = (await p.api('GET', '/v1/stats')).json as unknown as Stats
    t.notOk('ghost' in s.functions)
  })

  t.test('a deleted function\'s numbers are dropped: deployed again, it starts from zero', async (t) => {
    t.equal((await p.api('DELETE', '/v1/functions/st')).status, 200)
    let s = (await p.api('GET', '/v1/stats')).json as unknown as Stats
    t.same(Object.keys(s.functions), ['quiet'], 'a deleted function is not listed')
    t.equal((await p.deploy('st', { runtime: 'node', code: CODE })).status, 201)
    s = (await p.api('GET', '/v1/stats?function=st')).json as unknown as Stats
    t.equal(s.functions['st']!.totals.calls, 0)
  })
})

t.test('GET /v1/stats is behind the API token when one is set', async (t) => {
  const p = await startPlatform(t, { KINDLING_API_TOKEN: 'sekrit' })
  const res = await p.api('GET', '/v1/stats')
  t.equal(res.status, 401)
  t.equal(res.json['code'], 'KDL_ERR_UNAUTHORIZED')
})
