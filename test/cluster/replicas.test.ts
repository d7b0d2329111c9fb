import t from 'tap'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { startRedis, type TestRedis } from '../fixtures/redis.js'
import { archiveOf } from '../fixtures/code.js'
import { waitFor } from '../fixtures/wait.js'

// Several replicas on one Redis (issue 11): two real platforms (process backend, each its own data directory
// and code cache) sharing a real redis-server.

const answering = (text: string): string => `export default async () => ({ text: ${JSON.stringify(text)} })`
/** Answers after `ms` (a call that is in flight while the test does something else). */
const slow = (ms: number, text: string): string => `export default async () => { await new Promise((r) => setTimeout(r, ${ms})); return { text: ${JSON.stringify(text)} } }`

async function replicas(t: Tap, redis: TestRedis, n = 2, overrides: Record<string, string | number> = {}): Promise<TestPlatform[]> {
  const out: TestPlatform[] = []
  for (let i = 0; i < n; i++) out.push(await startPlatform(t, { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_POOL_ADAPTIVE: 'false', ...overrides }))
  return out
}
type Tap = Parameters<typeof startPlatform>[0]

async function deployed(p: TestPlatform, name: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await p.api('PUT', `/v1/functions/${name}`, body)
  if (res.status !== 200 && res.status !== 201) throw new Error(`deploy of ${name} answered ${res.status}: ${JSON.stringify(res.json)}`)
  return res.json
}

async function text(p: TestPlatform, target: string): Promise<{ status: number; text: string; version: string; code?: string }> {
  const res = await p.invoke(target)
  const body = JSON.parse(res.text === '' ? '{}' : res.text) as { text?: string; code?: string }
  return { status: res.status, text: body.text ?? '', version: res.headers['x-kindling-version'] ?? '', ...(body.code === undefined ? {} : { code: body.code }) }
}

t.test('a deploy on A is served by B (code fetched from the shared store); an update on B reaches A; versions agree', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  // An archive, so B cannot make the code up: it has to fetch the exact tree A stored.
  const archive = await archiveOf({ 'index.mjs': `import { word } from './lib/word.mjs'\nexport default async () => ({ text: word })`, 'lib/word.mjs': `export const word = 'from A'` })
  await deployed(a, 'hello', { runtime: 'node', archive, entrypoint: 'index.mjs', prewarm: 1 })
  t.same(await text(b, 'hello'), { status: 200, text: 'from A', version: '1' }, 'B serves what A deployed')
  t.same(await text(a, 'hello'), { status: 200, text: 'from A', version: '1' })

  // A routes version 1 warm now; a deploy on B must move A's route without A being asked.
  await deployed(b, 'hello', { runtime: 'node', code: answering('from B'), prewarm: 1 })
  const t0 = performance.now()
  await waitFor(async () => a.executor.head('hello')?.version === 2, 'A to route the version B deployed', 5000, 1)
  const routedMs = performance.now() - t0
  await waitFor(async () => (await text(a, 'hello')).text === 'from B', 'A to serve the version B deployed', 5000, 1)
  t.comment(`A routed B's deploy ${routedMs.toFixed(1)} ms after B answered it, and served it ${(performance.now() - t0).toFixed(1)} ms after`)
  t.same(await text(a, 'hello'), { status: 200, text: 'from B', version: '2' })
  // Prewarm is per replica: A keeps a prewarmed instance of the new version without ever being called cold.
  await waitFor(async () => ((await a.api('GET', '/v1/pools')).json['pools'] as Array<{ pool: string; idle: number }>).some((p) => p.pool === 'fn:hello@2' && p.idle >= 1), 'A to prewarm version 2')

  const va = (await a.api('GET', '/v1/functions/hello/versions')).json['versions'] as Array<{ version: number; codeHash: string }>
  const vb = (await b.api('GET', '/v1/functions/hello/versions')).json['versions'] as Array<{ version: number; codeHash: string }>
  t.same(va.map((v) => v.version), [1, 2])
  t.same(va, vb, 'both replicas list the same versions')

  // A rollback on A reaches B.
  t.equal((await a.api('POST', '/v1/functions/hello/rollback', {})).status, 200)
  await waitFor(async () => (await text(b, 'hello')).version === '1', 'B to follow the rollback made on A', 5000, 5)
  t.equal((await text(b, 'hello')).text, 'from A')
})

t.test('deploys of one function on two replicas at once get distinct versions, in one order both see', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  // One deploy on each replica at the same time, three rounds (deploys on one replica are ordered by its own
  // request order; across replicas only the shared lock orders them).
  const numbers: number[] = []
  for (let round = 0; round < 3; round++) {
    const pair = await Promise.all([a, b].map((p, i) => deployed(p, 'raced', { runtime: 'node', code: answering(`round ${round} on ${i}`) })))
    numbers.push(...pair.map((r) => r['deployed'] as number))
  }
  t.same(numbers.slice().sort((x, y) => x - y), [1, 2, 3, 4, 5, 6], 'six deploys, six versions, none reused')
  const listed = (await b.api('GET', '/v1/functions/raced/versions')).json['versions'] as Array<{ version: number; codeHash: string }>
  t.equal(new Set(listed.map((v) => v.codeHash)).size, 6, 'each version holds its own deploy\'s code: none overwrote another')
  await waitFor(async () => (await text(a, 'raced')).version === '6' && (await text(b, 'raced')).version === '6', 'both replicas to serve version 6')
})

t.test('a delete on A drains on B: the call in flight on B finishes, the next one is a 404', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  await deployed(a, 'doomed', { runtime: 'node', code: slow(600, 'finished'), prewarm: 1 })
  t.equal((await text(b, 'doomed')).text, 'finished', 'B serves it')
  const inflight = text(b, 'doomed')
  // The call is on B's instance once B counts it in flight.
  await waitFor(async () => ((await b.api('GET', '/v1/functions/doomed')).json['status'] as { instances: Record<string, number> }).instances['leased'] === 1, 'the call to be in flight on B', 5000, 5)
  t.equal((await a.api('DELETE', '/v1/functions/doomed')).status, 200)
  await waitFor(async () => (await text(b, 'doomed')).status === 404, 'B to stop routing the deleted function', 5000, 5)
  t.same(await inflight, { status: 200, text: 'finished', version: '1' }, 'the call that was in flight on B finished')
  t.match(await text(b, 'doomed'), { status: 404, code: 'KDL_ERR_FN_NOT_FOUND' })
  t.match(await text(a, 'doomed'), { status: 404, code: 'KDL_ERR_FN_NOT_FOUND' }, 'and on A, where it was deleted')
  await waitFor(async () => ((await b.api('GET', '/v1/pools')).json['pools'] as Array<{ pool: string }>).every((p) => p.pool !== 'fn:doomed@1'), 'B to drop its prewarm pool of the deleted function')
})

t.test('Redis stopped: management calls get 503 KDL_ERR_STORE_UNAVAILABLE, warm calls go on on both replicas; back, nothing stored is lost', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  await deployed(a, 'steady', { runtime: 'node', code: answering('steady'), prewarm: 1 })
  await deployed(a, 'steady', { runtime: 'node', code: answering('steady v2'), prewarm: 1 })
  await a.api('PUT', '/v1/functions/steady/aliases/stable', { version: 1 })
  // B follows within milliseconds (not within A's answer): it routes the last of the three changes.
  await waitFor(() => b.executor.head('steady')?.aliases?.['stable'] !== undefined, 'B to route the alias set on A')
  for (const p of [a, b]) {
    t.equal((await text(p, 'steady')).text, 'steady v2')
    t.equal((await text(p, 'steady@stable')).text, 'steady')
  }

  await redis.stop()
  for (const p of [a, b]) {
    const deploy = await p.api('PUT', '/v1/functions/other', { runtime: 'node', code: answering('x') })
    t.match(deploy, { status: 503, json: { code: 'KDL_ERR_STORE_UNAVAILABLE' } }, 'a deploy is refused with 503')
    t.match(await p.api('GET', '/v1/functions'), { status: 503, json: { code: 'KDL_ERR_STORE_UNAVAILABLE' } })
    for (let i = 0; i < 5; i++) {
      t.same(await text(p, 'steady'), { status: 200, text: 'steady v2', version: '2' }, 'a warm call is served while Redis is away')
    }
    t.equal((await text(p, 'steady@stable')).text, 'steady', 'an alias route known before keeps working')
  }

  await redis.start()
  const list = await waitFor(async () => { const r = await b.api('GET', '/v1/functions'); return r.status === 200 ? r.json : undefined }, 'B to answer management calls again', 15_000, 50)
  t.same((list['functions'] as Array<{ name: string }>).map((f) => f.name), ['steady'], 'the refused deploy did not land; the stored one is whole')
  const versions = (await a.api('GET', '/v1/functions/steady/versions')).json['versions'] as Array<{ version: number }>
  t.same(versions.map((v) => v.version), [1, 2])
  t.same((await a.api('GET', '/v1/functions/steady/aliases')).json, { aliases: { latest: { version: 2 }, stable: { version: 1 } } })
  await deployed(b, 'other', { runtime: 'node', code: answering('after') })
  await waitFor(async () => (await text(a, 'other')).text === 'after', 'A to serve a deploy made after the restart')
  t.pass('deploys work again')
})

t.test('a change whose announcement was missed is picked up by the resync after the reconnect', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  await deployed(a, 'quiet', { runtime: 'node', code: answering('one') })
  await deployed(a, 'quiet', { runtime: 'node', code: answering('two') })
  await waitFor(async () => (await text(b, 'quiet')).version === '2', 'B to route version 2')
  // Point latest back at version 1 behind every replica's back (no PUBLISH), then cut B's subscription.
  const c = redis.client()
  const head = JSON.parse(await c.get('kindling:fn:quiet') as string) as Record<string, unknown>
  const v1 = JSON.parse(await c.hget('kindling:ver:quiet', '1') as string) as Record<string, unknown>
  await c.set('kindling:fn:quiet', JSON.stringify({ ...v1, createdAt: head['createdAt'], aliases: { latest: { version: 1 } }, lastVersion: 2, updatedAt: new Date().toISOString() }))
  t.equal((await text(b, 'quiet')).version, '2', 'without an announcement B still routes what it knew')
  await c.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  await waitFor(async () => (await text(b, 'quiet')).version === '1' && (await text(a, 'quiet')).version === '1', 'both replicas to resync after their subscriptions reconnect', 10_000, 20)
  t.pass('resynced')
})

t.test('maxInstances is the cluster\'s: two replicas split it, and one left alone takes all of it', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  for (const p of [a, b]) await waitFor(async () => ((await p.api('GET', '/v1/cluster')).json['replicas'] as string[]).length === 2, 'each replica to count both')
  await deployed(a, 'capped', { runtime: 'node', code: slow(400, 'done'), maxInstances: 2, concurrency: 1, queueTimeoutMs: 100, prewarm: 0 })
  // Each replica's share is one instance: a second concurrent call on the same replica is refused (429).
  const pair = await Promise.all([text(a, 'capped'), text(a, 'capped')])
  t.same(pair.map((r) => r.status).sort(), [200, 429], 'A runs one instance of it at a time')
  const both = await Promise.all([text(a, 'capped'), text(b, 'capped')])
  t.same(both.map((r) => r.status), [200, 200], 'one on each replica: the cluster runs two')

  await b.close()
  await waitFor(async () => {
    const r = await Promise.all([text(a, 'capped'), text(a, 'capped')])
    return r.every((x) => x.status === 200)
  }, 'A alone to take the whole cap of 2', 15_000, 50)
  t.pass('A took over B\'s share')
})

t.test('GET /v1/events lists every replica\'s events with one id order; ?since= reads on from either replica', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  const ids = await Promise.all([a, b].map(async (p) => (await p.api('GET', '/v1/cluster')).json['replica'] as string))
  await deployed(a, 'ev-a', { runtime: 'node', code: answering('a') })
  await deployed(b, 'ev-b', { runtime: 'node', code: answering('b') })
  type Ev = { id: number; type: string; function?: string; replica?: string }
  const fromA = (await a.api('GET', '/v1/events?limit=1000')).json['events'] as Ev[]
  const fromB = (await b.api('GET', '/v1/events?limit=1000')).json['events'] as Ev[]
  t.same(fromA, fromB, 'both replicas list the same events')
  const deploys = fromA.filter((e) => e.type === 'deployed')
  t.same(deploys.map((e) => [e.function, e.replica]), [['ev-a', ids[0]], ['ev-b', ids[1]]], 'each deploy, stamped with the replica that took it')
  t.ok(fromA.every((e, i) => i === 0 || e.id > (fromA[i - 1] as Ev).id), 'ids increase')
  const since = (deploys[0] as Ev).id
  const after = (await b.api('GET', `/v1/events?since=${since}&function=ev-b`)).json['events'] as Ev[]
  t.same(after.map((e) => e.type), ['deployed'], 'since an id A gave, B lists what came after')
})

t.test('a canary is driven by one replica; when that replica stops, the other finishes it — each step once', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = await replicas(t, redis) as [TestPlatform, TestPlatform]
  const byId = new Map<string, TestPlatform>()
  for (const p of [a, b]) byId.set((await p.api('GET', '/v1/cluster')).json['replica'] as string, p)
  await deployed(a, 'shop', { runtime: 'node', code: answering('old'), prewarm: 1 })
  await a.api('PUT', '/v1/functions/shop?promote=false', { runtime: 'node', code: answering('new'), prewarm: 1 })
  const started = await a.api('PUT', '/v1/functions/shop/canary', { to: 2, steps: [20, 60, 100], intervalMs: 1200, minCalls: 3, maxErrorRate: 0.5 })
  t.match(started.json, { state: 'running', to: 2 })
  // Calls on both replicas until it ends (a canary judges the calls its driver's router saw).
  let done = false
  const traffic = Promise.all([a, b].map(async (p) => { while (!done) await p.invoke('shop').catch(() => undefined) }))
  t.teardown(async () => { done = true; await traffic })
  const driverId = await waitFor(async () => (await redis.client().get('kindling:lease:canary:shop')) ?? undefined, 'a replica to take the canary\'s lease')
  const driver = byId.get(driverId) as TestPlatform
  const other = driver === a ? b : a
  // Let the driver make its first step, then stop it.
  await waitFor(async () => ((await other.api('GET', '/v1/functions/shop/canary')).json['step'] as number) >= 1, 'the first step to pass', 15_000, 50)
  done = true
  await traffic
  await driver.close()
  done = false
  const more = (async () => { while (!done) await other.invoke('shop').catch(() => undefined) })()
  const end = await waitFor(async () => { const c = (await other.api('GET', '/v1/functions/shop/canary')).json; return c['state'] !== 'running' ? c : undefined }, 'the other replica to finish the canary', 30_000, 50)
  done = true
  await more
  t.equal(end['state'], 'promoted')
  t.equal(await redis.client().get('kindling:lease:canary:shop'), null, 'the lease is given up when the canary ends')
  const events = ((await other.api('GET', '/v1/events?function=shop&limit=1000')).json['events'] as Array<{ type: string; data?: { step?: number } }>)
  t.equal(events.filter((e) => e.type === 'canary.promoted').length, 1, 'promoted once')
  const steps = events.filter((e) => e.type === 'canary.step').map((e) => e.data?.step)
  t.same(steps, [1, 2], 'each step made once, in order, across the two drivers')
  t.equal((await text(other, 'shop')).text, 'new')
})
