import t, { type Test } from 'tap'
import { request } from 'undici'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'
import { defineWorkflow, deployAll, finished, maxOverlap, ORDER_FLOW, ORDER_FUNCTIONS, runOf } from '../fixtures/workflows.js'

// Workflows (issue 12) on a real platform (process backend), on the embedded default's file store and on Redis:
// the same cases on both, since runs are stored where specs are.

const STORES = ['file', 'redis'] as const

async function platformOn(t: Test, store: (typeof STORES)[number], overrides: Record<string, string | number> = {}): Promise<TestPlatform> {
  if (store === 'file') return startPlatform(t, overrides)
  const redis = await startRedis(t)
  return startPlatform(t, { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url, ...overrides })
}

async function start(p: TestPlatform, name: string, input: unknown, query = ''): Promise<{ status: number; headers: Record<string, unknown>; json: Record<string, unknown> }> {
  const res = await request(`${p.url}/wf/${name}${query}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(input) })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

for (const store of STORES) {
  t.test(`${store}: an order-like flow — a choice, a parallel pair, a retry that succeeds on the third attempt, a map 2 at a time, a caught permanent error`, async (t) => {
    const p = await platformOn(t, store)
    await deployAll(p, ORDER_FUNCTIONS)
    const put = await defineWorkflow(p, 'order', ORDER_FLOW)
    t.match(put, { name: 'order', version: 1, changed: true })
    t.match(await defineWorkflow(p, 'order', ORDER_FLOW), { version: 1, changed: false }, 'the same definition again makes no new version')

    const lines = [{ sku: 'a', price: 30, qty: 2 }, { sku: 'b', price: 50, qty: 1 }, { sku: 'c', price: 5, qty: 1 }, { sku: 'd', price: 1, qty: 1 }]
    const res = await start(p, 'order', { lines })
    t.equal(res.status, 200, JSON.stringify(res.json))
    t.equal(res.headers['x-kindling-run-status'], 'succeeded')
    const id = String(res.headers['x-kindling-run-id'])
    t.match(res.json, { total: 116, approved: true, charged: 116, shipped: 4 }, 'the choice took the large-order branch; the charge retried until it passed')
    const spans = (res.json['shipments'] as Array<{ sku: string; from: number; to: number }>)
    t.same(spans.map((s) => s.sku), ['a', 'b', 'c', 'd'], 'the map keeps the items\' order')
    t.equal(maxOverlap(spans), 2, 'the map ran two items at once, never more')

    const run = await runOf(p, id)
    t.equal(run.status, 'succeeded')
    const byId = new Map(run.steps.map((s) => [s.id, s]))
    t.match(byId.get('Fulfil#1/Charge'), { status: 'succeeded', attempts: 3 }, 'the charge ran three times')
    t.match(byId.get('Fulfil#0/Reserve'), { status: 'succeeded', attempts: 1 })
    t.match(byId.get('Approve'), { type: 'pass', status: 'succeeded' })
    t.notOk(byId.has('Refund'))
    t.same([0, 1, 2, 3].map((i) => byId.get(`Ship[${i}]/task`)?.status), ['succeeded', 'succeeded', 'succeeded', 'succeeded'])
    t.equal(run.steps[0]?.id, 'Price', 'steps in the order they started')

    // A small order skips the approval; an out-of-stock line is a permanent error the catch routes to Refund.
    const small = await start(p, 'order', { lines: [{ sku: 'a', price: 1, qty: 1 }] })
    t.match(small.json, { total: 1, approved: false, shipped: 1 })
    const oos = await start(p, 'order', { lines: [{ sku: 'unobtainium', price: 1, qty: 1 }] })
    t.equal(oos.status, 200)
    t.same(oos.json, { refunded: true, why: 'OutOfStock', cause: 'no unobtainium left' })
    const oosRun = await runOf(p, String(oos.headers['x-kindling-run-id']))
    t.match(oosRun.steps.find((s) => s.id === 'Fulfil'), { status: 'failed', error: { error: 'OutOfStock' } }, 'the parallel shows the error it caught')
    t.notOk(oosRun.steps.some((s) => s.id.startsWith('Ship')), 'nothing was shipped')

    const list = await p.api('GET', '/v1/workflows/order/runs')
    t.same((list.json['runs'] as Array<{ id: string }>).map((r) => r.id)[2], id, 'runs list newest first')
    const metrics = await (await request(`${p.url}/metrics`)).body.text()
    t.match(metrics, /kindling_workflow_runs_total\{workflow="order",status="succeeded"\} 3/)
    t.match(metrics, /kindling_workflow_step_duration_seconds_count\{workflow="order",type="task"\} \d+/)
  })

  t.test(`${store}: a run keeps the versions it started with across a mid-run deploy; a retry exhausted fails the run`, async (t) => {
    const p = await platformOn(t, store)
    const says = (v: string): string => `export default async (e) => ({ ...e.json, [e.headers['x-kindling-workflow-step'] ?? 'direct']: '${v}' })`
    await deployAll(p, { stamp: says('one') })
    await defineWorkflow(p, 'pinned', {
      startAt: 'First',
      states: {
        First: { type: 'task', function: 'stamp', next: 'Pause' },
        // Long enough for the deploy below to land inside it (and to park the run: it is resumed from its log).
        Pause: { type: 'wait', seconds: 3, next: 'Second' },
        Second: { type: 'task', function: 'stamp', end: true },
      },
    })
    const started = await start(p, 'pinned', {}, '?async=true')
    t.equal(started.status, 202)
    const id = String(started.json['id'])
    t.equal(started.headers['location'], `/v1/runs/${id}`)
    await waitFor(async () => (await runOf(p, id)).steps.some((s) => s.id === 'Pause' && s.status === 'waiting'), 'the run to wait')
    await deployAll(p, { stamp: says('two') })
    t.equal((await runOf(p, id)).status, 'running', 'the deploy landed while the run was waiting')
    t.same((await p.invoke('stamp', { method: 'POST', headers: { 'content-type': 'application/json', 'x-kindling-workflow-step': 'forged' }, body: '{}' })).json(), { direct: 'two' }, 'a direct call already gets the new version (and cannot forge a step header)')
    const done = await finished(p, id)
    t.same(done['output'], { First: 'one', Second: 'one' }, 'both steps ran the version pinned at the start')
    const next = await start(p, 'pinned', {})
    t.same(next.json, { First: 'two', Second: 'two' }, 'a run started after the deploy runs the new version')

    await deployAll(p, { broken: `class Nope extends Error {}\nexport default async () => { throw new Nope('always') }` })
    await defineWorkflow(p, 'doomed', { startAt: 'Try', states: { Try: { type: 'task', function: 'broken', retry: [{ errors: ['KDL_ERR_FN_ERROR'], maxAttempts: 2, intervalMs: 10 }], end: true } } })
    const failed = await start(p, 'doomed', {})
    t.equal(failed.status, 500)
    t.match(failed.json, { code: 'KDL_ERR_WF_RUN_FAILED', error: 'Nope', cause: 'always' }, 'the handler\'s error name, matched by KDL_ERR_FN_ERROR')
    t.match((await runOf(p, String(failed.json['run']))).steps[0], { status: 'failed', attempts: 3 }, 'one try and two retries')
  })

  t.test(`${store}: invalid definitions are refused with their codes; payload limits; cancel`, async (t) => {
    const p = await platformOn(t, store, { KINDLING_WORKFLOW_MAX_INPUT_BYTES: 2048, KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES: 1024 })
    const refused = async (def: unknown): Promise<Record<string, unknown>> => {
      const res = await p.api('PUT', '/v1/workflows/bad', def)
      t.equal(res.status, 400)
      return res.json
    }
    t.match(await refused({ startAt: 'A', states: { A: { type: 'task', function: 'f', next: 'Nowhere' } } }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', state: 'A', field: 'next' })
    t.match(await refused({ startAt: 'A', states: { A: { type: 'task', function: 'f' } } }), { code: 'KDL_ERR_WF_MISSING_NEXT', state: 'A' })
    t.match(await refused({ startAt: 'A', states: { A: { type: 'pass', next: 'B' }, B: { type: 'pass', next: 'A' } } }), { code: 'KDL_ERR_WF_NO_EXIT' })
    t.match(await refused({ startAt: 'A', states: { A: { type: 'pass', output: '$$.(', end: true } } }), { code: 'KDL_ERR_WF_BAD_EXPRESSION', state: 'A', field: 'output' })
    t.equal((await p.api('GET', '/v1/workflows/bad')).status, 404, 'nothing refused was stored')
    // YAML, as `kindling wf apply` and curl users send it.
    const yaml = await request(`${p.url}/v1/workflows/echo`, {
      method: 'PUT', headers: { 'content-type': 'application/yaml' },
      body: 'startAt: Echo\nstates:\n  Echo:\n    type: task\n    function: echo\n    end: true\n',
    })
    t.equal(yaml.statusCode, 201, await yaml.body.text())

    await deployAll(p, {
      echo: `export default async (e) => e.json`,
      big: `export default async () => ({ blob: 'x'.repeat(4000) })`,
      slow: `export default async () => { await new Promise((r) => setTimeout(r, 4000)); return {} }`,
    })
    const tooBig = await start(p, 'echo', { pad: 'y'.repeat(3000) })
    t.equal(tooBig.status, 413)
    t.equal(tooBig.json['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE', 'an input over KINDLING_WORKFLOW_MAX_INPUT_BYTES is refused before any run')
    const stepTooBig = await start(p, 'echo', { pad: 'y'.repeat(1500) })
    t.match(stepTooBig.json, { code: 'KDL_ERR_WF_RUN_FAILED', error: 'KDL_ERR_WF_PAYLOAD_TOO_LARGE' }, 'a step input over KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES fails the run')
    await defineWorkflow(p, 'bigout', { startAt: 'Big', states: { Big: { type: 'task', function: 'big', catch: [{ errors: ['KDL_ERR_WF_PAYLOAD_TOO_LARGE'], next: 'Small' }], end: true }, Small: { type: 'pass', result: 'caught', end: true } } })
    t.same((await start(p, 'bigout', {})).json, 'caught', 'an answer over the limit is a run error catch can route')

    // Cancel: a run in a long wait (parked: out of memory) and one in a long call.
    await defineWorkflow(p, 'sleepy', { startAt: 'Nap', states: { Nap: { type: 'wait', seconds: 3600, next: 'Echo' }, Echo: { type: 'task', function: 'echo', end: true } } })
    const napping = String((await start(p, 'sleepy', {}, '?async=true')).json['id'])
    await waitFor(async () => (await runOf(p, napping))['wakeAt'] !== undefined, 'the waiting run to park')
    t.equal(p.workflows.engine.running, 0, 'a parked run holds nothing in memory')
    const c1 = await p.api('POST', `/v1/runs/${napping}/cancel`)
    t.match(c1, { status: 200, json: { status: 'cancelled', error: { error: 'KDL_ERR_WF_RUN_CANCELLED' } } })
    t.match(await p.api('POST', `/v1/runs/${napping}/cancel`), { status: 409, json: { code: 'KDL_ERR_WF_RUN_FINISHED' } })
    t.match((await runOf(p, napping)).steps, [{ id: 'Nap', status: 'cancelled' }], 'the wait shows cancelled, the next step never ran')

    await defineWorkflow(p, 'stuck', { startAt: 'Slow', states: { Slow: { type: 'task', function: 'slow', end: true } } })
    const syncCall = start(p, 'stuck', {}, '?wait=60000')
    const busy = await waitFor(async () => {
      const runs = (await p.api('GET', '/v1/workflows/stuck/runs')).json['runs'] as Array<{ id: string }>
      const r = runs[0] === undefined ? undefined : await runOf(p, runs[0].id)
      return r?.steps[0]?.attempts === 1 ? r : undefined
    }, 'the slow call to start')
    t.match(await p.api('POST', `/v1/workflows/stuck/runs/${String(busy['id'])}/cancel`), { status: 200, json: { status: 'cancelled' } })
    const answer = await syncCall
    t.match(answer, { status: 409, json: { code: 'KDL_ERR_WF_RUN_CANCELLED' } }, 'the sync caller learns of the cancel at once')
    t.match(await p.api('POST', '/v1/runs/nope-123/cancel'), { status: 404, json: { code: 'KDL_ERR_WF_RUN_NOT_FOUND' } })
    t.match(await start(p, 'nosuch', {}), { status: 404, json: { code: 'KDL_ERR_WF_NOT_FOUND' } })
  })

  t.test(`${store}: loops name each visit; a loop that does not end hits the step limit; a timestamp wait; a runaway expression fails its step`, async (t) => {
    const p = await platformOn(t, store, { KINDLING_WORKFLOW_MAX_STEPS: 40 })
    const loop = (until: string): unknown => ({
      startAt: 'Count',
      states: {
        Count: { type: 'pass', output: '{ "n": n + 1 }', next: 'Check' },
        Check: { type: 'choice', choices: [{ condition: until, next: 'Later' }], default: 'Count' },
        Later: { type: 'wait', timestamp: '{% $fromMillis($millis() + 300) %}', next: 'Done' },
        Done: { type: 'succeed' },
      },
    })
    await defineWorkflow(p, 'loop', loop('n >= 3'))
    const t0 = Date.now()
    const res = await start(p, 'loop', { n: 0 })
    t.same(res.json, { n: 3 })
    t.ok(Date.now() - t0 >= 300, 'the timestamp wait waited')
    const run = await runOf(p, String(res.headers['x-kindling-run-id']))
    t.same(run.steps.map((s) => s.id), ['Count', 'Check', 'Count@2', 'Check@2', 'Count@3', 'Check@3', 'Later', 'Done'], 'each visit of a state is its own step')

    await defineWorkflow(p, 'forever', loop('n > 1000000'))
    const endless = await start(p, 'forever', { n: 0 })
    t.match(endless.json, { code: 'KDL_ERR_WF_RUN_FAILED', error: 'KDL_ERR_WF_STEP_LIMIT' }, 'a loop that does not end stops at KINDLING_WORKFLOW_MAX_STEPS')

    await defineWorkflow(p, 'hostile', { startAt: 'Spin', states: { Spin: { type: 'pass', output: '( $f := function($x) { $f($x + 1) }; $f(0) )', end: true } } })
    const spun = await start(p, 'hostile', {})
    t.match(spun.json, { code: 'KDL_ERR_WF_RUN_FAILED', error: 'KDL_ERR_WF_EXPRESSION_FAILED' }, 'a runaway recursion fails its step, the platform goes on')
    const events = (await p.api('GET', '/v1/events')).json['events'] as Array<{ type: string; data?: { workflow?: string } }>
    t.ok(events.some((e) => e.type === 'workflow.failed' && e.data?.workflow === 'hostile'), 'a failed run is an event')
  })
}
