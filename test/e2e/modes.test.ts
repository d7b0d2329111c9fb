import t from 'tap'
import { BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

/** Leaves a trace in every place state can leak through: a global, a /tmp file, process.env. */
const STATEFUL = `
import { existsSync, writeFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
let count = 0
globalThis.__boot ??= randomUUID()
export default async (event) => {
  count++
  const file = '/tmp/kindling-mark'
  const sawFile = existsSync(file)
  writeFileSync(file, 'x')
  const sawEnv = process.env.KDL_MARK === '1'
  process.env.KDL_MARK = '1'
  if (event.query.ms) await new Promise((r) => setTimeout(r, Number(event.query.ms)))
  return { count, sawFile, sawEnv, boot: globalThis.__boot }
}`

interface Trace { count: number; sawFile: boolean; sawEnv: boolean; boot: string }

async function calls(p: TestPlatform, name: string, n: number): Promise<Array<Trace & { start: string }>> {
  const out: Array<Trace & { start: string }> = []
  for (let i = 0; i < n; i++) {
    const res = await p.invoke(name)
    if (res.status !== 200) throw new Error(`call ${i} answered ${res.status}: ${res.text}`)
    out.push({ ...(res.json() as Trace), start: res.headers['x-kindling-start'] ?? '' })
  }
  return out
}

async function poolOf(p: TestPlatform, fn: string): Promise<{ target: number; idle: number } | undefined> {
  const res = await p.api('GET', '/v1/pools')
  return (res.json['pools'] as Array<{ pool: string; target: number; idle: number }>).find((x) => x.pool.startsWith(`fn:${fn}@`))
}

async function routed(p: TestPlatform, fn: string): Promise<{ instances: number; busy: number } | undefined> {
  const res = await p.api('GET', '/v1/pools')
  return (res.json['functions'] as Array<{ function: string; instances: number; busy: number }>).find((x) => x.function === fn)
}


for (const backend of BACKENDS) {
 t.test(`on the ${backend} backend`, async (t) => {
  t.test('ephemeral: nothing reaches the next call, and prewarm keeps every call prewarmed', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('eph', { runtime: 'node', code: STATEFUL, mode: 'ephemeral', prewarm: 2 })
    const seen = new Set<string>()
    for (let i = 0; i < 4; i++) {
      await waitFor(async () => (await poolOf(p, 'eph'))?.idle === 2, 'the prewarm pool to be full')
      const [r] = await calls(p, 'eph', 1)
      t.match(r, { count: 1, sawFile: false, sawEnv: false, start: 'prewarmed' }, `call ${i} starts from nothing`)
      seen.add(r!.boot)
    }
    t.equal(seen.size, 4, 'every call ran in its own instance')
    await waitFor(async () => (await poolOf(p, 'eph'))?.idle === 2, 'the pool to be back to 2 after the calls')
  })

  t.test('recycle: module state and env are fresh on every call, the instance is kept until maxInvocations', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('rec', { runtime: 'node', code: STATEFUL, mode: 'recycle', maxInvocations: 3 })
    const r = await calls(p, 'rec', 4)
    t.same(r.map((x) => x.count), [1, 1, 1, 1], 'the module is evaluated afresh for each call')
    t.same(r.map((x) => x.sawEnv), [false, false, false, false], 'env changes do not survive the unload')
    t.equal(r[0]!.boot, r[1]!.boot, 'the same instance serves the next call')
    t.equal(r[1]!.boot, r[2]!.boot)
    t.equal(r[1]!.sawFile, true, 'recycle keeps the instance (and its /tmp) between calls')
    t.not(r[3]!.boot, r[0]!.boot, 'after maxInvocations the instance is replaced')
    t.equal(r[3]!.sawFile, false, 'the new instance has a fresh /tmp')
  })

  t.test('recycle: an instance that can no longer load a fresh copy is retired, and the next call is served on another', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    // Evaluates once per process: every fresh copy after the first throws at load.
    const code = `globalThis.__copies = (globalThis.__copies ?? 0) + 1
if (globalThis.__copies > 1) throw new Error('no second copy')
const boot = Math.random()
export default () => ({ boot })`
    t.equal((await p.deploy('once', { runtime: 'node', code, mode: 'recycle' })).status, 201)
    const boots = new Set<number>()
    for (let i = 0; i < 3; i++) {
      const res = await p.invoke('once')
      t.equal(res.status, 200, `call ${i}: ${res.text}`)
      boots.add((res.json() as { boot: number }).boot)
    }
    t.equal(boots.size, 3, 'each call ran on its own instance: the exhausted one was replaced each time')
  })

  t.test('persistent: state survives between calls, and the instance is reaped after idleTimeoutMs', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('per', { runtime: 'node', code: STATEFUL, mode: 'persistent', idleTimeoutMs: 300 })
    const r = await calls(p, 'per', 3)
    t.same(r.map((x) => x.count), [1, 2, 3])
    t.same(r.map((x) => x.sawEnv), [false, true, true])
    t.same(r.map((x) => x.sawFile), [false, true, true])
    t.same(r.slice(1).map((x) => x.start), ['warm', 'warm'])
    await waitFor(async () => (await routed(p, 'per'))?.instances === 0, 'the idle instance to be reaped')
    const [after] = await calls(p, 'per', 1)
    t.not(after!.boot, r[0]!.boot, 'a new instance serves the call after the reap')
    t.equal(after!.count, 1)
  })

  t.test('reaping waits for calls in flight', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('slow', { runtime: 'node', code: STATEFUL, mode: 'persistent', idleTimeoutMs: 100 })
    const res = await p.invoke('slow', { path: '?ms=700' })
    t.equal(res.status, 200, 'a call longer than idleTimeoutMs is not cut by the reaper')
    t.equal((res.json() as Trace).count, 1)
  })

  t.test('an update while a call is in flight: the call finishes on the old version, the next one gets the new', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('upd', { runtime: 'node', mode: 'persistent', code: 'export default async () => { await new Promise(r => setTimeout(r, 500)); return "old" }' })
    await p.invoke('upd')
    const inflight = p.invoke('upd')
    await waitFor(async () => (await routed(p, 'upd'))?.busy === 1, 'the call to be in flight')
    const dep = await p.deploy('upd', { runtime: 'node', mode: 'persistent', code: 'export default () => "new"' })
    t.equal(dep.status, 200)
    t.equal((await p.invoke('upd')).text, 'new')
    t.equal((await inflight).text, 'old', 'the in-flight call was drained, not killed')
  })

  t.test('a burst of 50 calls with concurrency 1 and maxInstances 4 starts at most 4 instances and answers all', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('burst', { runtime: 'node', code: STATEFUL, mode: 'persistent', concurrency: 1, maxInstances: 4 })
    const answers = await Promise.all(Array.from({ length: 50 }, () => p.invoke('burst', { path: '?ms=30' })))
    t.same(answers.map((a) => a.status), Array(50).fill(200), 'all 50 answered')
    const boots = new Set(answers.map((a) => (a.json() as Trace).boot))
    t.ok(boots.size <= 4, `served by ${boots.size} instances`)
    // Every instance the router ever asked for is one cold start of some kind: count them exactly.
    const metrics = await (await fetch(`${p.url}/metrics`)).text()
    const leased = [...metrics.matchAll(/^kindling_cold_starts_total\{kind="[a-z]+"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0)
    t.ok(leased >= 1 && leased <= 4, `at most 4 instances were started or taken for the burst (${leased})`)
  })

  t.test('a burst of first calls with concurrency 10 starts one instance', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('shared', { runtime: 'node', code: STATEFUL, mode: 'persistent', concurrency: 10 })
    const answers = await Promise.all(Array.from({ length: 10 }, () => p.invoke('shared', { path: '?ms=50' })))
    t.same(answers.map((a) => a.status), Array(10).fill(200))
    t.equal(new Set(answers.map((a) => (a.json() as Trace).boot)).size, 1, 'one instance took all ten')
  })

  t.test('a caller that hangs up mid-call costs nobody else anything', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('hang-up', { runtime: 'node', code: STATEFUL, mode: 'persistent', concurrency: 8, maxInstances: 1 })
    const first = (await p.invoke('hang-up')).json() as Trace
    const ac = new AbortController()
    const gone = fetch(`${p.url}/fn/hang-up?ms=300`, { signal: ac.signal }).catch((err: Error) => err)
    await waitFor(async () => (await routed(p, 'hang-up'))?.busy === 1, 'the call to be in flight')
    ac.abort()
    t.type(await gone, Error, 'the caller hung up')
    const others = await Promise.all(Array.from({ length: 5 }, () => p.invoke('hang-up', { path: '?ms=50' })))
    t.same(others.map((o) => o.status), Array(5).fill(200), 'calls running beside it are answered')
    t.same(new Set(others.map((o) => (o.json() as Trace).boot)), new Set([first.boot]), 'by the same instance: it was not retired')
  })

  t.test('calls beyond the queue wait get 429 KDL_ERR_SATURATED with Retry-After, never a hang', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('sat', { runtime: 'node', code: STATEFUL, mode: 'persistent', maxInstances: 1, queueTimeoutMs: 100 })
    const answers = await Promise.all(Array.from({ length: 3 }, () => p.invoke('sat', { path: '?ms=600' })))
    const statuses = answers.map((a) => a.status).sort()
    t.same(statuses, [200, 429, 429])
    const refused = answers.find((a) => a.status === 429)!
    t.equal((refused.json() as Record<string, unknown>)['code'], 'KDL_ERR_SATURATED')
    t.equal(refused.headers['retry-after'], '1')
  })

  t.test('metrics count invocations and cold starts by kind', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('met', { runtime: 'node', code: 'export default () => "m"', mode: 'persistent' })
    await p.invoke('met')
    await p.invoke('met')
    const res = await fetch(`${p.url}/metrics`)
    const text = await res.text()
    t.match(text, /kindling_invocations_total\{function="met",version="1",code="200"\} 2/)
    t.match(text, /kindling_cold_starts_total\{kind="(specialized|cold)"\} 1/)
    t.match(text, /kindling_cold_start_phase_seconds_count\{phase="load"\} [1-9]/)
    t.match(text, /kindling_pool_instances\{pool="generic:node",state="target"\} 1/)
    t.match(text, /kindling_invocation_duration_seconds_count\{function="met",version="1"\} 2/)
  })

 })
}
