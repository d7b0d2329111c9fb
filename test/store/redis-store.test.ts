import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import type { StoreChange } from '../../common/store.js'
import type { FunctionRecord, RuntimeSpec } from '../../common/types.js'
import { connectRedis } from '../../store/redis-conn.js'
import { RedisStore } from '../../store/redis-store.js'
import { startRedis, type TestRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

function record(name: string, overrides: Partial<FunctionRecord> = {}): FunctionRecord {
  return {
    name, runtime: 'node', entrypoint: 'index.mjs', mode: 'recycle', prewarm: 1, concurrency: 1, maxInstances: 10,
    queueTimeoutMs: 10_000, timeoutMs: 30_000, env: { GREETING: 'hi' }, network: 'none', maxInvocations: 1000, maxAgeMs: 3_600_000,
    idleTimeoutMs: 300_000, version: 1, codeHash: 'a'.repeat(64), createdAt: '2025-01-01T00:00:00.000Z', updatedAt: '2025-01-01T00:00:00.000Z',
    ...overrides,
  }
}
const runtime = (name: string, poolSize = 2): RuntimeSpec => ({ name, poolSize, memoryMb: 128, cpu: 1 })

/** A store on the test's Redis, as one replica opens it; closed at teardown. */
async function openStore(t: Test, redis: TestRedis, origin = randomBytes(4).toString('hex'), prefix = 'kindling:'): Promise<RedisStore> {
  const conn = await connectRedis({ url: redis.url, name: `test:${origin}` })
  const sub = await connectRedis({ url: redis.url, name: `test:${origin}:sub` })
  const store = await RedisStore.open({ redis: conn, subscriber: sub, prefix, origin })
  t.teardown(async () => { await store.close(); conn.disconnect() })
  return store
}

t.test('heads, versions and runtimes round-trip; lists page by name; a delete takes the versions', async (t) => {
  const redis = await startRedis(t)
  const store = await openStore(t, redis)
  t.equal(await store.getFunction('nope'), undefined)
  for (const n of ['b', 'a', 'c']) await store.putFunction(record(n, { aliases: { latest: { version: 1 } }, lastVersion: 1 }))
  await store.putVersion(record('a', { version: 1 }))
  await store.putVersion(record('a', { version: 2, env: { V: '2' }, aliases: { latest: { version: 2 } } }))
  t.same((await store.listFunctions()).map((r) => r.name), ['a', 'b', 'c'])
  t.same((await store.listFunctions({ limit: 2 })).map((r) => r.name), ['a', 'b'])
  t.same((await store.listFunctions({ after: 'b', limit: 2 })).map((r) => r.name), ['c'])
  t.same((await store.getFunction('a'))?.aliases, { latest: { version: 1 } })
  const versions = await store.listVersions('a')
  t.same(versions.map((v) => v.version), [1, 2])
  t.equal(versions[1]?.aliases, undefined, 'a version is stored without the head-only fields')
  t.same((await store.getVersion('a', 2))?.env, { V: '2' })
  t.equal(await store.deleteVersion('a', 1), true)
  t.equal(await store.deleteVersion('a', 1), false)
  t.equal(await store.deleteFunction('a'), true)
  t.equal(await store.deleteFunction('a'), false)
  t.same(await store.listVersions('a'), [])
  t.same((await store.listFunctions()).map((r) => r.name), ['b', 'c'])
  await store.putRuntime(runtime('node', 3))
  t.same(await store.getRuntime('node'), runtime('node', 3))
  t.same(await store.listRuntimes(), [runtime('node', 3)])
  t.equal(await store.appendOnly(), true, 'the test server persists with AOF, and the store can tell')
})

t.test('two stores with other prefixes on one Redis do not see each other', async (t) => {
  const redis = await startRedis(t)
  const a = await openStore(t, redis, 'a', 'one:')
  const b = await openStore(t, redis, 'b', 'two:')
  await a.putFunction(record('f'))
  t.equal(await b.getFunction('f'), undefined)
  t.same(await b.listFunctions(), [])
})

t.test('each write is announced to the other replicas, not to its writer; a reconnect asks for a resync', async (t) => {
  const redis = await startRedis(t)
  const a = await openStore(t, redis, 'A')
  const b = await openStore(t, redis, 'B')
  const seenA: StoreChange[] = []
  const seenB: StoreChange[] = []
  a.changes((c) => seenA.push(c))
  b.changes((c) => seenB.push(c))
  await a.putFunction(record('f'))
  await a.putRuntime(runtime('node'))
  await a.deleteFunction('f')
  await waitFor(() => seenB.length >= 3, 'B to hear three changes')
  t.same(seenB, [{ kind: 'function', name: 'f' }, { kind: 'runtime', name: 'node' }, { kind: 'function', name: 'f' }])
  t.same(seenA, [], 'a writer does not hear itself')
  await redis.stop()
  await redis.start()
  await waitFor(() => seenB.some((c) => c.kind === 'resync'), 'B to ask for a resync after its reconnect', 15_000)
  // And the subscription is back: a write after the restart is heard.
  await waitFor(async () => { await a.putFunction(record('g')).catch(() => {}); return seenB.some((c) => c.kind === 'function' && c.name === 'g') }, 'B to hear a write after the restart', 15_000, 100)
  t.pass('resubscribed')
})

t.test('with Redis down every call fails fast with KDL_ERR_STORE_UNAVAILABLE; nothing stored is lost across the restart', async (t) => {
  const redis = await startRedis(t)
  const store = await openStore(t, redis)
  await store.putFunction(record('kept', { env: { K: 'v' } }))
  await store.putVersion(record('kept'))
  await redis.stop()
  const t0 = Date.now()
  await t.rejects(store.getFunction('kept'), { code: 'KDL_ERR_STORE_UNAVAILABLE', statusCode: 503 })
  await t.rejects(store.putFunction(record('new')), { code: 'KDL_ERR_STORE_UNAVAILABLE' })
  await t.rejects(store.listFunctions(), { code: 'KDL_ERR_STORE_UNAVAILABLE' })
  t.ok(Date.now() - t0 < 4000, 'fails at once, not after a command timeout')
  await redis.start()
  const back = await waitFor(() => store.getFunction('kept').catch(() => undefined), 'the store to answer again', 15_000)
  t.same(back.env, { K: 'v' })
  t.same((await store.listVersions('kept')).map((v) => v.version), [1])
  t.equal(await store.getFunction('new'), undefined, 'the refused write did not land')
})

t.test('connecting to a Redis that is not there is a clear KDL_ERR_STORE_UNAVAILABLE', async (t) => {
  const redis = await startRedis(t)
  await redis.stop()
  const err = await connectRedis({ url: `redis://:secret@127.0.0.1:${redis.port}`, name: 'test' }).then(() => undefined, (e: unknown) => e as Error & { code?: string })
  t.equal(err?.code, 'KDL_ERR_STORE_UNAVAILABLE')
  t.match(err?.message, `127.0.0.1:${redis.port}`)
  t.notMatch(err?.message, 'secret', 'the password is not in the message')
})

t.test('a stored record that is not valid JSON is a KDL_ERR_INTERNAL naming its key', async (t) => {
  const redis = await startRedis(t)
  const store = await openStore(t, redis)
  await redis.client().set('kindling:fn:broken', '{not json')
  await t.rejects(store.getFunction('broken'), { code: 'KDL_ERR_INTERNAL', message: /fn:broken/ })
  await t.rejects(store.getFunction('../x'), { code: 'KDL_ERR_BAD_SPEC' })
})
