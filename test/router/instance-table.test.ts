import pino from 'pino'
import t from 'tap'
import { Agent } from 'undici'
import { Registry } from 'prom-client'
import { Metrics } from '../../common/metrics.js'
import type { ExecutorClient, ExecutorEvent, Lease, RouteSpec } from '../../executor/client.js'
import { InstanceTable, type Granted } from '../../router/instance-table.js'

// The table's queueing rules, against an executor whose acquisitions the test completes by hand.
const SPEC: RouteSpec = {
  name: 'f', version: 1, mode: 'persistent', concurrency: 1, maxInstances: 1, queueTimeoutMs: 60_000, timeoutMs: 30_000,
  idleTimeoutMs: 300_000, maxInvocations: 1000, maxAgeMs: 3_600_000,
}

function handExecutor(spec: RouteSpec) {
  const asked: Array<(lease: Lease) => void> = []
  const dispatcher = new Agent()
  let n = 0
  const executor: ExecutorClient = {
    resolve: async (key: string) => ({ key, name: spec.name, qualifier: 'latest', targets: [{ spec, weight: 1 }] }),
    acquire: () => new Promise<Lease>((resolve) => asked.push(resolve)),
    release: async () => false,
    diagnose: async () => 'crashed',
    subscribe: (_l: (e: ExecutorEvent) => void) => () => {},
  }
  const lease = (): Lease => ({ instanceId: `kdl-${String(++n).padStart(12, '0')}`, address: { socketPath: '/nonexistent' }, dispatcher, fn: spec.name, version: spec.version, kind: 'cold', startMs: 0, loadMs: 0, startedAt: Date.now() })
  return { executor, asked, lease, close: () => dispatcher.close() }
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

t.test('a call whose instance was gone before the call reached it keeps its place ahead of later calls', async (t) => {
  const h = handExecutor(SPEC)
  const table = new InstanceTable({ executor: h.executor, log: pino({ level: 'silent' }), metrics: new Metrics(new Registry()) })
  t.teardown(() => { table.close(); return h.close() })
  const order: string[] = []
  const first = table.acquire('f', undefined)
  await tick()
  t.equal(h.asked.length, 1, 'one instance asked for (maxInstances 1)')
  h.asked.shift()!(h.lease())
  const a = await first
  // Two calls queue behind A's instance.
  const b = table.acquire('f', undefined).then((g) => { order.push('B'); return g })
  const c = table.acquire('f', undefined).then((g) => { order.push('C'); return g })
  await tick()
  // A's instance turns out dead before A's request reached it: the router gives the slot up and asks again.
  table.done(a.entry, a.slot, 'crashed')
  const again = table.acquire('f', undefined, true).then((g) => { order.push('A'); return g })
  await tick()
  t.equal(h.asked.length, 1, 'a replacement is asked for')
  h.asked.shift()!(h.lease())
  await tick()
  t.same(order, ['A'], 'A is served first on the replacement, not after B and C')
  const next = async (g: Promise<Granted>): Promise<void> => {
    const { entry, slot } = await g
    table.done(entry, slot, 'ok')
    await tick()
  }
  await next(again)
  await next(b)
  await next(c)
  t.same(order, ['A', 'B', 'C'], 'the others follow in their order')
})

t.test('a re-sent call waits at the head: the next slot to free up is its own', async (t) => {
  const h = handExecutor({ ...SPEC, maxInstances: 2 })
  const table = new InstanceTable({ executor: h.executor, log: pino({ level: 'silent' }), metrics: new Metrics(new Registry()) })
  t.teardown(() => { table.close(); return h.close() })
  const p1 = table.acquire('f', undefined)
  const p2 = table.acquire('f', undefined)
  await tick()
  h.asked.shift()!(h.lease())
  h.asked.shift()!(h.lease())
  const [g1, g2] = await Promise.all([p1, p2])
  const later = table.acquire('f', undefined)
  await tick()
  // g1's instance was gone before its call was sent; its replacement is asked for (for the queued call).
  table.done(g1.entry, g1.slot, 'crashed')
  const again = table.acquire('f', undefined, true)
  await tick()
  // g2's call ends first: its slot goes to the re-sent call, not to the one that queued later.
  let first: string | undefined
  void again.then(() => { first ??= 'the re-sent call' })
  void later.then(() => { first ??= 'the later call' })
  table.done(g2.entry, g2.slot, 'ok')
  await tick()
  t.equal(first, 'the re-sent call', 'the freed slot goes to the re-sent call')
  t.equal((await again).slot, g2.slot)
  h.asked.shift()!(h.lease())
  t.not((await later).slot, g2.slot, 'the later call gets the replacement')
})
