import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { processTreesMentioning, startPlatform, startUp, type TestPlatform } from '../fixtures/platform.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'
import { attemptRecorder, finished, runOf } from '../fixtures/workflows.js'

// Workflow runs with several replicas on one Redis (issue 12): each run advances on one replica at a time — the
// one holding its claim — and a replica that stops (cleanly, or killed) leaves its runs to the others.

const STEP = attemptRecorder()
const SLOW = attemptRecorder(1200)
const FLOW = {
  startAt: 'One',
  states: {
    One: { type: 'task', function: 'step', next: 'Nap' },
    // Long enough to park: the run leaves memory and whichever replica polls first after it is due resumes it.
    Nap: { type: 'wait', seconds: 2.2, next: 'Two' },
    Two: { type: 'task', function: 'step', next: 'Three' },
    Three: { type: 'task', function: 'slow', end: true },
  },
}

async function setUp(p: { api: TestPlatform['api'] }): Promise<void> {
  for (const [name, code] of [['step', STEP], ['slow', SLOW]] as const) {
    const r = await p.api('PUT', `/v1/functions/${name}`, { runtime: 'node', code })
    if (r.status >= 300) throw new Error(`deploy ${name}: ${r.status} ${JSON.stringify(r.json)}`)
  }
  const w = await p.api('PUT', '/v1/workflows/relay', FLOW)
  if (w.status >= 300) throw new Error(`PUT workflow: ${w.status} ${JSON.stringify(w.json)}`)
}

const startAsync = async (url: string): Promise<string> => {
  const res = await request(`${url}/wf/relay?async=true`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  return String((await res.body.json() as { id: string }).id)
}

t.test('runs started on two replicas, parked and resumed by either, each step runs once; a replica that stops hands its runs over', async (t) => {
  const redis = await startRedis(t)
  const env = { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_POOL_ADAPTIVE: 'false' }
  const a = await startPlatform(t, env)
  const b = await startPlatform(t, env)
  await setUp(a)
  t.equal((await b.api('GET', '/v1/workflows/relay')).status, 200, 'the definition is shared')

  const ids = await Promise.all(Array.from({ length: 10 }, (_, i) => startAsync(i % 2 === 0 ? a.url : b.url)))
  const done = await Promise.all(ids.map((id) => finished(a, id, 30_000)))
  for (const r of done) {
    t.equal(r.status, 'succeeded')
    t.same(r['output'], { One: 1, Two: 1, Three: 1 }, `run ${String(r['id'])}: every task ran once, as its first attempt`)
  }

  // A clean stop of the replica whose call is in flight: the call finishes and is recorded there; the other replica goes on.
  const id = await startAsync(a.url)
  await waitFor(async () => (await runOf(a, id)).steps.some((s) => s.id === 'Three' && s.status === 'running'), 'the slow step to run', 20_000)
  const owner = a.workflows.engine.running > 0 ? a : b
  const other = owner === a ? b : a
  await owner.close()
  const handed = await finished(other, id, 20_000)
  t.equal(handed.status, 'succeeded')
  t.same(handed['output'], { One: 1, Two: 1, Three: 1 }, 'the step in flight at the stop was recorded, not run again')
})

t.test('a replica killed mid-step: another takes the run over when its claim lapses, re-running only that step', async (t) => {
  const redis = await startRedis(t)
  const dataDir = await mkdtemp(join(tmpdir(), 'kdl-wf-killed-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url }
  // A is a `kindling up` process (it can be SIGKILLed); B runs in this process.
  const { child, url } = await startUp(dataDir, env)
  t.teardown(async () => {
    // A SIGKILLed platform cannot stop its instances (a later platform on its data directory would reap them): their
    // wrappers name the data directory; they and what they run are stopped by PID.
    const leftovers = await processTreesMentioning(dataDir)
    if (child.exitCode === null && child.signalCode === null) { child.kill('SIGKILL'); await once(child, 'exit') }
    for (const pid of leftovers) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
  })
  const b = await startPlatform(t, { ...env, KINDLING_POOL_ADAPTIVE: 'false' })
  await setUp(b)
  // No wait in this flow: the run never parks, so it is A's (A started it) until A is gone.
  const w = await b.api('PUT', '/v1/workflows/straight', { startAt: 'One', states: { One: { type: 'task', function: 'step', next: 'Three' }, Three: { type: 'task', function: 'slow', next: 'Four' }, Four: { type: 'task', function: 'step', end: true } } })
  t.equal(w.status, 201)
  const res = await request(`${url}/wf/straight?async=true`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  const id = String((await res.body.json() as { id: string }).id)
  await waitFor(async () => (await runOf(b, id)).steps.some((s) => s.id === 'Three' && s.status === 'running'), 'the slow step to run on A', 20_000)
  t.equal(b.workflows.engine.running, 0, 'B does not advance a run A holds')
  const gone = once(child, 'exit')
  child.kill('SIGKILL')
  await gone
  const done = await finished(b, id, 40_000)
  t.equal(done.status, 'succeeded')
  t.same(done['output'], { One: 1, Three: 2, Four: 1 }, 'B re-ran only the step in flight on A (attempt 2), after A\'s claim lapsed')
})

t.test('a cancel sent to the replica that does not hold the run stops it at the holder\'s next renewal', async (t) => {
  const redis = await startRedis(t)
  const env = { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, KINDLING_POOL_ADAPTIVE: 'false' }
  const a = await startPlatform(t, env)
  const b = await startPlatform(t, env)
  // Longer than a renewal period (a third of the 15 s claim): the cancel lands while the first call is in flight.
  await a.api('PUT', '/v1/functions/slow', { runtime: 'node', code: `export default async () => { await new Promise((r) => setTimeout(r, 8000)); return {} }` })
  t.equal((await a.api('PUT', '/v1/workflows/slowpoke', { startAt: 'S', states: { S: { type: 'task', function: 'slow', next: 'T' }, T: { type: 'task', function: 'slow', end: true } } })).status, 201)
  const id = await (async () => {
    const res = await request(`${a.url}/wf/slowpoke?async=true`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
    return String((await res.body.json() as { id: string }).id)
  })()
  await waitFor(async () => (await runOf(b, id)).steps[0]?.attempts === 1, 'the first call to start')
  const asked = await b.api('POST', `/v1/runs/${id}/cancel`)
  t.match(asked, { status: 200, json: { status: 'running', cancelRequested: true } }, 'B cannot stop a run A advances: it asks')
  const done = await finished(b, id, 10_000)
  t.equal(done.status, 'cancelled', 'A stopped it at its next claim renewal')
  t.notOk(done.steps.some((s) => s.id === 'T'), 'nothing ran after the cancel')
  t.ok(Date.parse(String(done['endedAt'])) - Date.parse(String(done['startedAt'])) < 7000, 'it ended before the call in flight did')
})
