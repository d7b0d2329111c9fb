import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { RunEvent, RunRecord, WorkflowRecord, WorkflowStore } from '../../common/workflows.js'
import { FileWorkflowStore } from '../../store/file-workflows.js'
import { connectRedis } from '../../store/redis-conn.js'
import { RedisWorkflowStore } from '../../store/redis-workflows.js'
import { startRedis, type TestRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

/** One store's data (a directory, a Redis) and a way to open another instance on it. */
interface Harness {
  open(): Promise<WorkflowStore>
  /** fdatasync batches of run logs so far, where the store counts them (the file store). */
  syncs?: (store: WorkflowStore) => number
}

interface FileHarness extends Harness {
  /** The directory the store is opened on. */
  dir: string
}

type Make = (t: Test) => Promise<Harness>

const makeFile = async (t: Test): Promise<FileHarness> => {
  const root = await mkdtemp(join(tmpdir(), 'kindling-wf-store-'))
  const dir = join(root, 'store', 'workflows')
  const opened: WorkflowStore[] = []
  t.teardown(async () => {
    for (const s of opened) await s.close()
    await rm(root, { recursive: true, force: true })
  })
  return {
    dir,
    open: async () => {
      const store = await FileWorkflowStore.open({ dir })
      opened.push(store)
      return store
    },
    syncs: (store) => (store as FileWorkflowStore).logSyncs,
  }
}

const makeRedis: Make = async (t) => {
  const redis = await startRedis(t)
  return { open: () => openRedisStore(t, redis) }
}

async function openRedisStore(t: Test, redis: TestRedis, prefix = 'kindling:'): Promise<RedisWorkflowStore> {
  const conn = await connectRedis({ url: redis.url, name: 'test:wf' })
  const store = await RedisWorkflowStore.open({ redis: conn, prefix })
  t.teardown(async () => { await store.close(); conn.disconnect() })
  return store
}

const T0 = Date.parse('2026-01-01T00:00:00.000Z')

function wf(name: string, version: number): WorkflowRecord {
  return { name, version, definition: { startAt: 'a', states: { a: { type: 'pass', end: true, v: version } } }, digest: `${name}-${version}`.padEnd(64, '0'), createdAt: new Date(T0 + version).toISOString() }
}

function run(id: string, workflow = 'orders', startOffsetMs = 0, overrides: Partial<RunRecord> = {}): RunRecord {
  return { id, workflow, version: 1, status: 'running', startedAt: new Date(T0 + startOffsetMs).toISOString(), ...overrides }
}

const ev = (i: number, more: Record<string, unknown> = {}): RunEvent => ({ type: 'step', i, ...more })

function contract(name: string, make: Make): void {
  t.test(`${name}: workflow versions, the head, the list, and a delete that leaves the runs`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    t.equal(await s.getWorkflow('orders'), undefined)
    t.same(await s.listWorkflowVersions('orders'), [])
    await s.putWorkflow(wf('orders', 1))
    await s.putWorkflow(wf('orders', 2))
    await s.putWorkflow(wf('billing', 1))
    t.same(await s.getWorkflow('orders'), wf('orders', 2), 'the head is the newest version')
    t.same(await s.getWorkflowVersion('orders', 1), wf('orders', 1))
    t.equal(await s.getWorkflowVersion('orders', 3), undefined)
    t.same((await s.listWorkflowVersions('orders')).map((w) => w.version), [1, 2])
    t.same((await s.listWorkflows()).map((w) => [w.name, w.version]), [['billing', 1], ['orders', 2]])
    await s.createRun(run('r1'), [ev(0)])
    t.equal(await s.deleteWorkflow('orders'), true)
    t.equal(await s.deleteWorkflow('orders'), false)
    t.equal(await s.getWorkflow('orders'), undefined)
    t.same(await s.listWorkflowVersions('orders'), [])
    t.same((await s.listWorkflows()).map((w) => w.name), ['billing'])
    t.same(await s.getRun('r1'), run('r1'), 'the run stays')
    t.same(await s.readLog('r1'), [ev(0)], 'and so does its log')
    t.same((await s.listRuns('orders', { limit: 10 })).map((r) => r.id), ['r1'])
    await t.rejects(s.getWorkflow('../etc'), { code: 'KDL_ERR_BAD_SPEC' })
  })

  t.test(`${name}: a run is created with its first entries, read back, and its log grows in append order`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    const r = run('m1a-x1', 'orders', 0, { output: [] })
    await s.createRun(r, [ev(0, { input: { n: 0.1234567890123456, list: [] } }), ev(1)])
    t.same(await s.getRun(r.id), { ...r, output: [] })
    t.ok(await s.claim(r.id, 'A', 30_000))
    await s.append(r.id, 'A', [ev(2)])
    await s.append(r.id, 'A', [ev(3), ev(4)])
    await s.append(r.id, 'A', [])
    const log = await s.readLog(r.id)
    t.same(log.map((e) => e.i), [0, 1, 2, 3, 4])
    t.same(log[0], ev(0, { input: { n: 0.1234567890123456, list: [] } }), 'an entry comes back as written')
    await t.rejects(s.createRun(run(r.id), [ev(9)]), { code: 'KDL_ERR_INTERNAL' }, 'an id is not reused')
    t.same((await s.readLog(r.id)).length, 5, 'the refused create wrote nothing')
    await s.putRun({ ...r, status: 'succeeded', output: { ok: true, list: [] }, endedAt: new Date(T0 + 5).toISOString() }, 'A')
    t.same(await s.getRun(r.id), { ...r, status: 'succeeded', output: { ok: true, list: [] }, endedAt: new Date(T0 + 5).toISOString() })
    await t.rejects(s.append('nope', 'A', [ev(0)]), { code: 'KDL_ERR_WF_RUN_NOT_FOUND' })
    await t.rejects(s.putRun(run('nope'), 'A'), { code: 'KDL_ERR_WF_RUN_NOT_FOUND' })
    await t.rejects(s.append('../x', 'A', [ev(0)]), { code: 'KDL_ERR_WF_RUN_NOT_FOUND' })
    t.equal(await s.getRun('nope'), undefined)
    t.equal(await s.getRun('../../etc'), undefined)
    t.same(await s.readLog('nope'), [])
  })

  t.test(`${name}: runs are listed per workflow, newest first, paged with before, filtered by status`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    // r3 and r4 start in the same ms: the id breaks the tie, as a Redis sorted set does (descending).
    const starts: [string, number][] = [['r1', 10], ['r2', 20], ['r3', 30], ['r4', 30], ['r5', 50]]
    // Created out of order: the listing follows startedAt, not creation.
    for (const [id, at] of [...starts].reverse()) await s.createRun(run(id, 'orders', at), [ev(0)])
    await s.createRun(run('b1', 'billing', 40), [])
    await s.createRun(run('b2', 'billing', 60), [])
    for (const id of ['r2', 'r4']) {
      await s.claim(id, 'A', 30_000)
      await s.putRun(run(id, 'orders', starts.find(([i]) => i === id)?.[1], { status: 'failed', error: { error: 'X', cause: 'y' } }), 'A')
    }
    const ids = async (page: Parameters<WorkflowStore['listRuns']>[1], workflow = 'orders'): Promise<string[]> => (await s.listRuns(workflow, page)).map((r) => r.id)
    t.same(await ids({ limit: 10 }), ['r5', 'r4', 'r3', 'r2', 'r1'])
    t.same(await ids({ limit: 2 }), ['r5', 'r4'])
    t.same(await ids({ limit: 2, before: 'r4' }), ['r3', 'r2'])
    t.same(await ids({ limit: 2, before: 'r2' }), ['r1'])
    t.same(await ids({ limit: 2, before: 'r1' }), [])
    t.same(await ids({ limit: 10, status: 'failed' }), ['r4', 'r2'])
    t.same(await ids({ limit: 1, status: 'running' }), ['r5'])
    t.same(await ids({ limit: 10, status: 'running', before: 'r5' }), ['r3', 'r1'])
    t.same(await ids({ limit: 10, status: 'succeeded' }), [])
    t.same(await ids({ limit: 10 }, 'billing'), ['b2', 'b1'], 'per workflow only')
    t.same(await ids({ limit: 10, before: 'b2' }), [], 'a run of another workflow pages nothing')
    t.same(await ids({ limit: 10 }, 'none'), [])
    t.same((await s.listRuns('orders', { limit: 1, status: 'failed' }))[0]?.error, { error: 'X', cause: 'y' }, 'the listing holds whole summaries')
  })

  t.test(`${name}: the open runs follow wakeAt and lose the finished ones`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    await s.createRun(run('o1'), [])
    await s.createRun(run('o2', 'orders', 1), [])
    await s.createRun(run('o3', 'orders', 2), [])
    const open = async (): Promise<unknown[]> => (await s.openRuns()).sort((a, b) => (a.id < b.id ? -1 : 1))
    t.same(await open(), [{ id: 'o1' }, { id: 'o2' }, { id: 'o3' }], 'a created run is due now')
    for (const id of ['o1', 'o2', 'o3']) t.ok(await s.claim(id, 'A', 30_000))
    const wakeAt = T0 + 3_600_000
    await s.putRun(run('o2', 'orders', 1, { wakeAt }), 'A')
    await s.putRun(run('o3', 'orders', 2, { status: 'succeeded', output: 1 }), 'A')
    t.same(await open(), [{ id: 'o1' }, { id: 'o2', wakeAt }])
    await s.putRun(run('o2', 'orders', 1), 'A')
    await s.putRun(run('o1', 'orders', 0, { status: 'cancelled', error: { error: 'KDL_ERR_WF_RUN_CANCELLED', cause: 'asked' } }), 'A')
    t.same(await open(), [{ id: 'o2' }], 'woken again it is due now; cancelled it is gone')
  })

  t.test(`${name}: a cancel is marked on an unfinished run and stays; a finished run is returned unchanged`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    await s.createRun(run('c1'), [])
    await s.createRun(run('c2', 'orders', 1, { status: 'succeeded', output: { v: [] } }), [])
    const marked = await s.requestCancel('c1')
    t.same(marked, run('c1', 'orders', 0, { cancelRequested: true }))
    t.same(await s.getRun('c1'), marked)
    t.same(await s.requestCancel('c1'), marked, 'asking twice changes nothing')
    t.same((await s.openRuns()).map((o) => o.id), ['c1'], 'a run asked to cancel is still open (its owner ends it)')
    t.ok(await s.claim('c1', 'A', 30_000))
    await s.putRun(run('c1', 'orders', 0, { wakeAt: T0 + 10 }), 'A')
    t.equal((await s.getRun('c1'))?.cancelRequested, true, "the owner's rewrite from an older read does not undo the cancel")
    t.equal((await s.getRun('c1'))?.wakeAt, T0 + 10, 'and is written')
    t.same(await s.requestCancel('c2'), run('c2', 'orders', 1, { status: 'succeeded', output: { v: [] } }), 'a finished run is returned as it is')
    t.equal((await s.getRun('c2'))?.cancelRequested, undefined)
    t.equal(await s.requestCancel('nope'), undefined)
  })

  t.test(`${name}: many concurrent appends to one run all land, in call order`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    await s.createRun(run('p1'), [ev(-1)])
    await s.createRun(run('p2', 'orders', 1), [])
    await s.claim('p1', 'A', 30_000)
    await s.claim('p2', 'A', 30_000)
    const before = h.syncs?.(s)
    // A map state's items writing at once; another run's appends alongside.
    await Promise.all([
      ...Array.from({ length: 200 }, (_, i) => s.append('p1', 'A', [ev(i)])),
      ...Array.from({ length: 20 }, (_, i) => s.append('p2', 'A', [ev(i), ev(i, { second: true })])),
    ])
    t.same((await s.readLog('p1')).map((e) => e.i), [-1, ...Array.from({ length: 200 }, (_, i) => i)])
    const p2 = await s.readLog('p2')
    t.equal(p2.length, 40)
    t.same(p2.map((e) => e.i), Array.from({ length: 20 }, (_, i) => [i, i]).flat())
    if (h.syncs !== undefined && before !== undefined) {
      t.equal(h.syncs(s) - before, 2, '220 appends made in one go: one fdatasync per run')
      // Appends made while a write is under way wait for it and then go as one batch.
      const mid = h.syncs(s)
      let firstDone = false
      const first = s.append('p1', 'A', [ev(200)]).then(() => { firstDone = true })
      await new Promise((r) => setImmediate(r))
      t.equal(firstDone, false, 'the first append is still being written')
      await Promise.all([first, ...Array.from({ length: 50 }, (_, i) => s.append('p1', 'A', [ev(201 + i)]))])
      t.equal(h.syncs(s) - mid, 2, 'one batch for the first, one for the 50 that came during it')
      t.same((await s.readLog('p1')).map((e) => e.i), [-1, ...Array.from({ length: 251 }, (_, i) => i)])
    }
  })

  t.test(`${name}: a new instance on the same data sees every run, log and the open set`, async (t) => {
    const h = await make(t)
    const s = await h.open()
    await s.putWorkflow(wf('orders', 1))
    await s.createRun(run('k1'), [ev(0)])
    await s.createRun(run('k2', 'orders', 1), [ev(0)])
    await s.createRun(run('k3', 'orders', 2), [])
    for (const id of ['k1', 'k2', 'k3']) await s.claim(id, 'A', 30_000)
    await s.append('k1', 'A', [ev(1), ev(2)])
    await s.putRun(run('k2', 'orders', 1, { wakeAt: T0 + 99 }), 'A')
    await s.putRun(run('k3', 'orders', 2, { status: 'failed', error: { error: 'E', cause: 'c' } }), 'A')
    await s.requestCancel('k1')
    await s.close()
    await t.rejects(s.getRun('k1'), { code: 'KDL_ERR_SHUTTING_DOWN' }, 'a closed store answers nothing')
    const again = await h.open()
    t.same(await again.getWorkflow('orders'), wf('orders', 1))
    t.same((await again.listRuns('orders', { limit: 10 })).map((r) => [r.id, r.status]), [['k3', 'failed'], ['k2', 'running'], ['k1', 'running']])
    t.same((await again.readLog('k1')).map((e) => e.i), [0, 1, 2])
    t.equal((await again.getRun('k1'))?.cancelRequested, true)
    t.same((await again.openRuns()).sort((a, b) => (a.id < b.id ? -1 : 1)), [{ id: 'k1' }, { id: 'k2', wakeAt: T0 + 99 }])
    t.equal(await again.claim('k1', 'A', 30_000), true, 'the owner picks its run up again')
    await again.append('k1', 'A', [ev(3)])
    t.same((await again.readLog('k1')).map((e) => e.i), [0, 1, 2, 3])
  })
}

contract('file', makeFile)
contract('redis', makeRedis)

t.test('file: a torn last line is dropped on read and cut off by the next append', async (t) => {
  const h = await makeFile(t)
  const s = await h.open()
  await s.createRun(run('t1'), [ev(0)])
  await s.append('t1', 'A', [ev(1)])
  const file = join(h.dir, 'runs', 't1', 'log.ndjson')
  await appendFile(file, '{"type":"step","i":2,"tor')
  t.same((await s.readLog('t1')).map((e) => e.i), [0, 1], 'the unacknowledged tail is not an entry')
  await appendFile(file, 'n":true}')
  t.same((await s.readLog('t1')).map((e) => e.i), [0, 1], 'nor when it happens to parse: its append never resolved')
  await s.append('t1', 'A', [ev(3)])
  t.same((await s.readLog('t1')).map((e) => e.i), [0, 1, 3])
  t.equal(await readFile(file, 'utf8'), `${JSON.stringify(ev(0))}\n${JSON.stringify(ev(1))}\n${JSON.stringify(ev(3))}\n`, 'the torn tail is gone from the file')
})

t.test('file: a corrupt line in the middle of a log is KDL_ERR_INTERNAL naming it', async (t) => {
  const h = await makeFile(t)
  const s = await h.open()
  await s.createRun(run('t2'), [ev(0), ev(1)])
  const file = join(h.dir, 'runs', 't2', 'log.ndjson')
  await writeFile(file, `${JSON.stringify(ev(0))}\n{"broken\n${JSON.stringify(ev(1))}\n`)
  await t.rejects(s.readLog('t2'), { code: 'KDL_ERR_INTERNAL', message: /line 2 of runs\/t2\/log\.ndjson/ })
  await writeFile(file, `${JSON.stringify(ev(0))}\n[1]\n`)
  await t.rejects(s.readLog('t2'), { code: 'KDL_ERR_INTERNAL', message: /line 2/ }, 'a terminated line that is no object is damage too')
})

t.test('file: the layout on disk, a crashed create cleaned up at open, close waiting for its appends', async (t) => {
  const h = await makeFile(t)
  const s = await h.open()
  await s.putWorkflow(wf('orders', 1))
  await s.createRun(run('l1'), [ev(0)])
  const dir = h.dir
  t.same((await readdir(join(dir, 'definitions', 'orders'))).sort(), ['1.json', 'head.json'])
  t.same((await readdir(join(dir, 'runs', 'l1'))).sort(), ['log.ndjson', 'run.json'])
  t.equal((await stat(join(dir, 'runs', 'l1', 'run.json'))).mode & 0o777, 0o600)
  const appending = s.append('l1', 'A', Array.from({ length: 100 }, (_, i) => ev(i + 1)))
  await s.close()
  t.equal((await readFile(join(dir, 'runs', 'l1', 'log.ndjson'), 'utf8')).split('\n').length, 102, 'close waited for the append')
  await appending
  await t.rejects(s.append('l1', 'A', [ev(0)]), { code: 'KDL_ERR_SHUTTING_DOWN' })
  await mkdir(join(dir, 'runs', '.l2.abcdef.tmp'))
  await writeFile(join(dir, 'runs', '.l2.abcdef.tmp', 'run.json'), JSON.stringify(run('l2')))
  const again = await h.open()
  t.same(await readdir(join(dir, 'runs')), ['l1'], 'the half-made run is removed')
  t.equal(await again.getRun('l2'), undefined)
})

t.test('redis: the keys are where the layout says', async (t) => {
  const redis = await startRedis(t)
  const s = await openRedisStore(t, redis)
  const c = redis.client()
  await s.putWorkflow(wf('orders', 1))
  await s.createRun(run('y1', 'orders', 7), [ev(0), ev(1)])
  await s.claim('y1', 'A', 30_000)
  t.same(JSON.parse(await c.get('kindling:wf:def:orders') ?? 'null'), wf('orders', 1))
  t.same(await c.hkeys('kindling:wf:defv:orders'), ['1'])
  t.same(await c.zrange('kindling:wf:defs', '0', '-1'), ['orders'])
  t.same(JSON.parse(await c.get('kindling:wf:run:y1') ?? 'null'), run('y1', 'orders', 7))
  t.same((await c.lrange('kindling:wf:log:y1', 0, -1)).map((e) => JSON.parse(e) as unknown), [ev(0), ev(1)])
  t.equal(await c.zscore('kindling:wf:runs:orders', 'y1'), String(T0 + 7))
  t.equal(await c.zscore('kindling:wf:open', 'y1'), '0')
  t.equal(await c.get('kindling:wf:own:y1'), 'A')
})

t.test("redis: a write by an owner that does not hold the claim fails with KDL_ERR_WF_RUN_LOST and writes nothing", async (t) => {
  const redis = await startRedis(t)
  const s = await openRedisStore(t, redis)
  await s.createRun(run('f1'), [ev(0)])
  await t.rejects(s.append('f1', 'A', [ev(1)]), { code: 'KDL_ERR_WF_RUN_LOST' }, 'an unclaimed run is nobody\'s to write')
  t.equal(await s.claim('f1', 'A', 30_000), true)
  t.equal(await s.claim('f1', 'A', 30_000), true, 'already mine')
  t.equal(await s.claim('f1', 'B', 30_000), false)
  await t.rejects(s.append('f1', 'B', [ev(1, { by: 'B' })]), { code: 'KDL_ERR_WF_RUN_LOST', statusCode: 409 })
  await t.rejects(s.putRun(run('f1', 'orders', 0, { status: 'failed', wakeAt: 5 }), 'B'), { code: 'KDL_ERR_WF_RUN_LOST' })
  t.same(await s.readLog('f1'), [ev(0)])
  t.same(await s.getRun('f1'), run('f1'))
  t.same(await s.openRuns(), [{ id: 'f1' }])
  await s.release('f1', 'B')
  t.equal(await redis.client().get('kindling:wf:own:f1'), 'A', "B's release does not free A's claim")
  await s.append('f1', 'A', [ev(1)])
  t.same((await s.readLog('f1')).map((e) => e.i), [0, 1])
  await s.release('f1', 'A')
  t.equal(await s.claim('f1', 'B', 30_000), true, 'released, it can be claimed at once')
  await t.rejects(s.append('f1', 'A', [ev(2)]), { code: 'KDL_ERR_WF_RUN_LOST' })
})

t.test('redis: a claim lapses after its ttl; then another owner takes it and the old one hears it lost', async (t) => {
  const redis = await startRedis(t)
  const s = await openRedisStore(t, redis)
  const c = redis.client()
  await s.createRun(run('e1'), [])
  await s.createRun(run('e2', 'orders', 1), [])
  t.equal(await s.claim('e1', 'A', 30_000), true)
  t.equal(await s.claim('e2', 'A', 30_000), true)
  t.same(await s.renew(['e1', 'e2'], 'A', 60_000), [], 'both still held')
  t.ok(await c.pttl('kindling:wf:own:e1') > 30_000, 'renew set the new ttl')
  t.equal(await s.claim('e1', 'A', 150), true, 'claiming again what is mine sets its ttl')
  await waitFor(async () => (await c.exists('kindling:wf:own:e1')) === 0, 'the claim of e1 to expire', 5000, 10)
  t.equal(await s.claim('e1', 'B', 30_000), true)
  t.same(await s.renew(['e1', 'e2'], 'A', 30_000), ['e1'])
  t.equal(await c.get('kindling:wf:own:e1'), 'B', "A's renew did not take B's claim")
  await t.rejects(s.putRun(run('e1', 'orders', 0, { status: 'succeeded' }), 'A'), { code: 'KDL_ERR_WF_RUN_LOST' })
  await s.putRun(run('e1', 'orders', 0, { status: 'succeeded' }), 'B')
  t.same(await s.openRuns(), [{ id: 'e2' }])
})

t.test('redis: with Redis stopped reads and writes fail with KDL_ERR_STORE_UNAVAILABLE; after the restart nothing is lost', async (t) => {
  const redis = await startRedis(t)
  const s = await openRedisStore(t, redis)
  await s.putWorkflow(wf('orders', 1))
  await s.createRun(run('u1'), [ev(0)])
  await s.claim('u1', 'A', 60_000)
  await s.append('u1', 'A', [ev(1)])
  await s.putRun(run('u1', 'orders', 0, { wakeAt: T0 + 5 }), 'A')
  await redis.stop()
  const down = { code: 'KDL_ERR_STORE_UNAVAILABLE', statusCode: 503 }
  await t.rejects(s.getRun('u1'), down)
  await t.rejects(s.readLog('u1'), down)
  await t.rejects(s.listRuns('orders', { limit: 5 }), down)
  await t.rejects(s.openRuns(), down)
  await t.rejects(s.getWorkflow('orders'), down)
  await t.rejects(s.append('u1', 'A', [ev(2)]), down)
  await t.rejects(s.putRun(run('u1', 'orders', 0, { status: 'failed' }), 'A'), down)
  await t.rejects(s.createRun(run('u2'), []), down)
  await t.rejects(s.claim('u1', 'A', 60_000), down)
  await redis.start()
  const back = await waitFor(() => s.getRun('u1').catch(() => undefined), 'the store to answer again', 15_000)
  t.same(back, run('u1', 'orders', 0, { wakeAt: T0 + 5 }))
  t.same((await s.readLog('u1')).map((e) => e.i), [0, 1], 'the refused append did not land')
  t.same(await s.openRuns(), [{ id: 'u1', wakeAt: T0 + 5 }])
  t.equal(await s.getRun('u2'), undefined)
  t.same(await s.getWorkflow('orders'), wf('orders', 1))
  await s.append('u1', 'A', [ev(2)])
  t.same((await s.readLog('u1')).map((e) => e.i), [0, 1, 2], 'the claim outlived the restart (AOF), and writes go on')
})

t.test('redis: stores with other prefixes on one Redis do not see each other', async (t) => {
  const redis = await startRedis(t)
  const a = await openRedisStore(t, redis, 'one:')
  const b = await openRedisStore(t, redis, 'two:')
  await a.createRun(run('x1'), [ev(0)])
  t.equal(await b.getRun('x1'), undefined)
  t.same(await b.openRuns(), [])
})
