import t, { type Test } from 'tap'
import { AsyncQueue, GROUP, type Started } from '../../async/queue.js'
import { backoffMs, classify } from '../../async/worker.js'
import { connectRedis } from '../../store/redis-conn.js'
import { startRedis } from '../fixtures/redis.js'

// The queue's Lua steps against a real redis-server: above all, that a reclaimed delivery is settled once.

async function queue(t: Test): Promise<{ q: AsyncQueue; blocking: Awaited<ReturnType<typeof connectRedis>> }> {
  const redis = await startRedis(t)
  const cmd = await connectRedis({ url: redis.url, name: 'test:cmd' })
  const blocking = await connectRedis({ url: redis.url, name: 'test:block', blocking: true })
  t.teardown(() => { cmd.disconnect(); blocking.disconnect() })
  const q = new AsyncQueue({ redis: cmd, prefix: 'test:' })
  await q.init()
  await q.init() // a second replica's start: BUSYGROUP is tolerated
  return { q, blocking }
}

const job = (reclaimMs: number) => ({ function: 'f', method: 'POST', path: '/', headers: {}, body: Buffer.from('b'), maxAttempts: 3, maxAgeMs: 60_000, reclaimMs, timeoutMs: 1000 })
const ok = { kind: 'succeeded' as const, result: { status: 200, headers: {}, body: 'A', bodyEncoding: 'utf8' as const } }
const okB = { kind: 'succeeded' as const, result: { status: 200, headers: {}, body: 'B', bodyEncoding: 'utf8' as const } }

/** A takes the job; it is reclaimed by B (A stalled past the reclaim time). */
async function takenThenReclaimed(t: Test): Promise<{ q: AsyncQueue; a: Started; b: Started; id: string }> {
  const { q, blocking } = await queue(t)
  const { id } = await q.enqueue(job(100))
  const [d] = await q.read(blocking, 'A', 10, 100)
  t.equal(d?.jobId, id)
  const sa = await q.start(d!, 'A')
  t.equal(sa.kind, 'run')
  t.same(await q.reclaim('B', 100, 10), [], 'nothing is reclaimed before its reclaim time')
  // The entry's idle time grows with the clock; poll the reclaim until it is due (no fixed sleep).
  let got: Awaited<ReturnType<AsyncQueue['reclaim']>> = []
  const deadline = Date.now() + 5000
  while (got.length === 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20))
    got = await q.reclaim('B', 100, 10)
  }
  t.same(got, [d], 'B reclaims the stuck delivery')
  const sb = await q.start(got[0]!, 'B')
  t.equal(sb.kind, 'run')
  if (sa.kind !== 'run' || sb.kind !== 'run') throw new Error('not started')
  t.equal(sb.started.deliveryCount, 2, 'the claim counted a second delivery')
  t.equal(sb.started.attempt, 2)
  return { q, a: sa.started, b: sb.started, id }
}

t.test('late ack: B settles the reclaimed job; A\'s later settle is lost and changes nothing', async (t) => {
  const { q, a, b, id } = await takenThenReclaimed(t)
  t.equal(await q.settle(b, okB), 'succeeded')
  t.equal(await q.settle(a, ok), 'lost')
  const view = await q.get(id)
  t.equal(view?.state, 'succeeded')
  t.equal(view?.result?.body, 'B', 'B\'s outcome stands')
  t.equal(await q.redis.zcard(q.delayed), 0)
  t.equal(await q.redis.xlen(q.dlq), 0)
  t.same(await q.redis.xpending(q.stream, GROUP), [0, null, null, null], 'nothing pending')
})

t.test('late ack, reverse order: A settles first and is lost; B\'s settle stands', async (t) => {
  const { q, a, b, id } = await takenThenReclaimed(t)
  t.equal(await q.settle(a, { kind: 'retry', error: { code: 'HTTP_500', message: 'x' }, dueAt: Date.now() }), 'lost', 'A (no longer the owner) cannot even schedule a retry')
  t.equal((await q.get(id))?.state, 'running', 'A changed nothing')
  t.equal(await q.redis.zcard(q.delayed), 0)
  t.equal(await q.settle(b, okB), 'succeeded')
  t.equal(await q.settle(b, okB), 'lost', 'a second settle by the same worker is lost too')
  t.equal((await q.get(id))?.result?.body, 'B')
})

t.test('a same-consumer reclaim is told apart by the delivery count', async (t) => {
  const { q, blocking } = await queue(t)
  const { id } = await q.enqueue(job(100))
  const [d] = await q.read(blocking, 'A', 10, 100)
  const first = await q.start(d!, 'A')
  let got: Awaited<ReturnType<AsyncQueue['reclaim']>> = []
  while (got.length === 0) { await new Promise((r) => setTimeout(r, 20)); got = await q.reclaim('A', 100, 10) }
  const second = await q.start(got[0]!, 'A')
  if (first.kind !== 'run' || second.kind !== 'run') throw new Error('not started')
  t.equal(await q.settle(first.started, ok), 'lost')
  t.equal(await q.settle(second.started, okB), 'succeeded')
  t.equal((await q.get(id))?.result?.body, 'B')
})

t.test('retries wait in the delayed set; one promoter moves a job once; out of attempts it is dead', async (t) => {
  const { q, blocking } = await queue(t)
  const { id } = await q.enqueue({ ...job(10_000), maxAttempts: 2 })
  for (let attempt = 1; attempt <= 2; attempt++) {
    const [d] = await q.read(blocking, 'A', 10, 1000)
    t.equal(d?.jobId, id, `attempt ${attempt} delivered`)
    const s = await q.start(d!, 'A')
    if (s.kind !== 'run') throw new Error('not started')
    t.equal(s.started.attempt, attempt)
    const r = await q.settle(s.started, { kind: 'retry', error: { code: 'HTTP_503', message: 'busy', status: 503 }, dueAt: Date.now() + 50 })
    t.equal(r, attempt === 1 ? 'retried' : 'dead')
    if (attempt === 1) {
      t.equal((await q.get(id))?.state, 'queued')
      t.equal(await q.promote(Date.now() - 1000), 0, 'not due yet')
      const moved = await Promise.all([q.promote(Date.now() + 100), q.promote(Date.now() + 100)])
      t.equal(await q.redis.xlen(q.stream), 1, `two promoters moved it once (${moved.join(', ')})`)
    }
  }
  const dead = await q.get(id)
  t.equal(dead?.state, 'dead')
  t.match(dead?.error, { code: 'HTTP_503' })
  t.match(await q.dlqList(10), [{ id, function: 'f' }])
  t.ok(await q.redrive(id))
  t.notOk(await q.redrive(id), 'not dead any more')
  t.equal((await q.get(id))?.attempts, 0)
})

t.test('a job past its max age is dead at its next start', async (t) => {
  const { q, blocking } = await queue(t)
  const { id } = await q.enqueue(job(10_000))
  const [d] = await q.read(blocking, 'A', 10, 1000)
  t.equal((await q.start(d!, 'A', Date.now() + 120_000)).kind, 'dead')
  t.match((await q.get(id))?.error, { message: /max age/ })
})

t.test('back-off and classification', async (t) => {
  const policy = { baseMs: 1000, capMs: 300_000 }
  t.equal(backoffMs(policy, 1, () => 0.999), 999)
  t.equal(backoffMs(policy, 3, () => 0.5), 2000)
  t.equal(backoffMs(policy, 30, () => 0.5), 150_000, 'capped')
  t.equal(classify(200), 'succeeded')
  t.equal(classify(302), 'succeeded')
  t.equal(classify(404), 'failed')
  t.equal(classify(429), 'retry')
  t.equal(classify(504), 'retry')
})
