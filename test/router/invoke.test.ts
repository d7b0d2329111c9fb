import t from 'tap'
import type { Pool } from 'undici'
import type { InvokeCall, InvokeResult } from '../../common/invoke.js'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// The in-process invoke (issue 12): a workflow step calls a function through the router's instance table,
// on a real platform (process backend), beside HTTP calls to the same functions.

/**
 * Each instance's own token, drawn once when its module loads (persistent mode keeps it): which instance
 * answered. Not process.pid: as root every instance has its own pid namespace, so pids repeat.
 */
const INSTANCE = 'const instance = Math.random().toString(36).slice(2)\n'

const ECHO = `${INSTANCE}export default async (event, context) => ({
  status: Number(event.query.status ?? 200),
  headers: { 'content-type': 'application/json', 'x-echo': 'yes' },
  body: JSON.stringify({ method: event.method, path: event.path, query: event.query, headers: event.headers, json: event.json, instance, version: context.version }),
})`

function call(over: Partial<InvokeCall> = {}): InvokeCall {
  return { method: 'GET', path: '/', headers: {}, body: Buffer.alloc(0), maxResponseBytes: 1 << 20, ...over }
}

function json(res: InvokeResult): Record<string, any> {
  return JSON.parse(res.body.toString('utf8')) as Record<string, any>
}

async function deployed(p: TestPlatform, name: string, body: Record<string, unknown>): Promise<void> {
  const res = await p.deploy(name, body)
  if (res.status !== 200 && res.status !== 201) throw new Error(`deploy of ${name} answered ${res.status}: ${JSON.stringify(res.json)}`)
}

/** The value of one sample of `/metrics` (0 when the series does not exist yet). */
async function metric(p: TestPlatform, series: string): Promise<number> {
  const text = await fetch(`${p.url}/metrics`).then((r) => r.text())
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

t.test('the in-process invoke', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'echo', { runtime: 'node', mode: 'persistent', code: ECHO })

  t.test('sends method, path with query, headers and body, and returns the answer whole', async (t) => {
    const before = Date.now()
    const res = await p.inProcess('echo', call({
      method: 'POST',
      path: '/orders?id=1&tag=a&tag=b',
      headers: { 'content-type': 'application/json', 'x-kindling-workflow-run': 'run-1', 'x-kindling-workflow-step': 'charge', 'x-kindling-workflow-attempt': '2', 'x-custom': 'hi' },
      body: Buffer.from(JSON.stringify({ amount: 42 })),
      timeoutMs: 5000,
    }))
    const after = Date.now()
    t.equal(res.error, undefined, 'the function answered: no platform error')
    t.equal(res.status, 200)
    t.equal(res.version, 1)
    t.equal(res.headers['x-echo'], 'yes', "the function's own headers come back")
    t.match(res.headers['content-type'], /^application\/json/)
    t.equal(res.headers['x-kindling-version'], '1')
    t.match(res.headers['x-kindling-start'], /^(warm|prewarmed|specialized|cold)$/)
    const got = json(res)
    t.equal(got['method'], 'POST')
    t.equal(got['path'], '/orders')
    t.same(got['query'], { id: '1', tag: ['a', 'b'] })
    t.same(got['json'], { amount: 42 })
    const h = got['headers'] as Record<string, string>
    t.equal(h['x-kindling-workflow-run'], 'run-1', "the platform's own x-kindling-* headers reach the function")
    t.equal(h['x-kindling-workflow-step'], 'charge')
    t.equal(h['x-kindling-workflow-attempt'], '2')
    t.equal(h['x-custom'], 'hi')
    t.equal(h['content-length'], String(Buffer.byteLength(JSON.stringify({ amount: 42 }))), 'the body goes with its length')
    t.equal(h['x-kindling-invocation-id'], res.headers['x-kindling-invocation-id'], 'the invocation id the function saw is the answer\'s')
    const deadline = Number(h['x-kindling-deadline-ms'])
    t.ok(deadline >= before + 5000 && deadline <= after + 5000, `the deadline is the call's own bound (${deadline - before} ms after the call began)`)

    const created = await p.inProcess('echo', call({ path: '/?status=201' }))
    t.equal(created.status, 201, "the function's status comes back as it is")
    t.equal(created.error, undefined)
  })

  t.test('is served by the same instances as HTTP calls', async (t) => {
    const http = await p.invoke('echo')
    t.equal(http.status, 200)
    const res = await p.inProcess('echo', call())
    t.equal(res.headers['x-kindling-start'], 'warm', 'the call after an HTTP call is warm')
    t.equal(json(res)['instance'], (http.json() as Record<string, unknown>)['instance'], 'on the instance that served the HTTP call')
    const back = await p.invoke('echo')
    t.equal(back.headers['x-kindling-start'], 'warm')
    t.equal((back.json() as Record<string, unknown>)['instance'], json(res)['instance'], 'and an HTTP call after it stays there')
  })

  t.test('routes name@N to version N and name@alias to the alias, like /fn/name@N', async (t) => {
    const answering = (text: string): string => `export default async () => ({ text: ${JSON.stringify(text)} })`
    await deployed(p, 'pin', { runtime: 'node', code: answering('one') })
    t.equal((await p.api('PUT', '/v1/functions/pin/aliases/stable', { version: 1 })).status, 200)
    await deployed(p, 'pin', { runtime: 'node', code: answering('two') })
    const latest = await p.inProcess('pin', call())
    t.same({ version: latest.version, text: json(latest)['text'] }, { version: 2, text: 'two' }, 'the bare name serves the new deploy')
    const pinned = await p.inProcess('pin@1', call())
    t.same({ version: pinned.version, text: json(pinned)['text'], header: pinned.headers['x-kindling-version'] }, { version: 1, text: 'one', header: '1' }, 'pin@1 is served by version 1')
    const aliased = await p.inProcess('pin@stable', call())
    t.same({ version: aliased.version, text: json(aliased)['text'] }, { version: 1, text: 'one' }, 'pin@stable by what the alias names')
    const missing = await p.inProcess('pin@9', call())
    t.equal(missing.error?.code, 'KDL_ERR_VERSION_NOT_FOUND')
    t.equal(missing.version, undefined)
  })

  t.test('answers KDL_ERR_FN_NOT_FOUND (404) for an unknown function, with no version', async (t) => {
    const res = await p.inProcess('nope', call())
    t.equal(res.error?.code, 'KDL_ERR_FN_NOT_FOUND')
    t.equal(res.status, 404)
    t.equal(res.version, undefined)
    t.match(json(res), { statusCode: 404, code: 'KDL_ERR_FN_NOT_FOUND' }, 'the body is the error as /fn/nope answers it')
    t.match(res.headers['content-type'], /^application\/json/)
  })

  t.test("returns a handler's throw as the function's own answer (500, handled), not a platform error", async (t) => {
    await deployed(p, 'throws', { runtime: 'node', code: 'export default () => { throw new Error("nope") }' })
    const res = await p.inProcess('throws', call())
    t.equal(res.status, 500)
    t.equal(res.error, undefined)
    t.equal(res.headers['x-kindling-error'], 'handled')
    t.equal(res.version, 1)
    t.match(json(res), { code: 'KDL_ERR_FN_ERROR', message: 'nope' })
  })

  t.test('a call bounded below the function timeout answers KDL_ERR_FN_TIMEOUT and the next call runs on a fresh instance', async (t) => {
    await deployed(p, 'hang', { runtime: 'node', mode: 'persistent', timeoutMs: 30_000, code: `${INSTANCE}export default (e) => e.query.hang ? new Promise(() => {}) : instance` })
    const first = await p.inProcess('hang', call())
    t.equal(first.status, 200)
    const timeouts = await metric(p, 'kindling_invocations_total{function="hang",version="1",code="KDL_ERR_FN_TIMEOUT"}')
    const t0 = performance.now()
    const res = await p.inProcess('hang', call({ path: '/?hang=1', timeoutMs: 300 }))
    const ms = performance.now() - t0
    t.equal(res.error?.code, 'KDL_ERR_FN_TIMEOUT')
    t.equal(res.status, 504)
    t.equal(res.version, 1)
    t.equal(res.headers['x-kindling-error'], 'unhandled')
    t.equal(res.headers['x-kindling-version'], '1')
    t.match(res.error?.message, /within 300 ms/, "the message names the call's bound, not the function's")
    t.match(json(res), { code: 'KDL_ERR_FN_TIMEOUT' })
    t.ok(ms >= 300 && ms < 15_000, `ended by the call's bound (${Math.round(ms)} ms), not the function's 30 s`)
    t.equal(await metric(p, 'kindling_invocations_total{function="hang",version="1",code="KDL_ERR_FN_TIMEOUT"}'), timeouts + 1, 'the timeout is counted')
    const next = await p.inProcess('hang', call())
    t.equal(next.status, 200)
    t.not(next.headers['x-kindling-start'], 'warm', 'the hung instance was not reused')
    t.not(next.body.toString(), first.body.toString(), 'another instance answered')
  })

  t.test('a function that exits mid-call answers KDL_ERR_FN_CRASHED and the next call works', async (t) => {
    await deployed(p, 'exits', { runtime: 'node', mode: 'persistent', code: `${INSTANCE}export default (e) => { if (e.query.die) process.exit(3); return instance }` })
    const before = await p.inProcess('exits', call())
    t.equal(before.status, 200)
    const res = await p.inProcess('exits', call({ path: '/?die=1' }))
    t.equal(res.error?.code, 'KDL_ERR_FN_CRASHED')
    t.equal(res.status, 502)
    t.equal(res.version, 1)
    t.equal(res.headers['x-kindling-error'], 'unhandled')
    const after = await p.inProcess('exits', call())
    t.equal(after.status, 200)
    t.not(after.body.toString(), before.body.toString(), 'a new instance serves the next call')
  })

  t.test('an answer over maxResponseBytes fails with KDL_ERR_PAYLOAD_TOO_LARGE and the instance serves on', async (t) => {
    await deployed(p, 'big', {
      runtime: 'node', mode: 'persistent',
      code: `${INSTANCE}export default (e) => {
  if (e.query.n === undefined) return instance
  const body = 'x'.repeat(Number(e.query.n))
  return e.query.chunked ? { status: 200, headers: { 'transfer-encoding': 'chunked' }, body } : body
}`,
    })
    const limit = 1024
    const whole = await p.inProcess('big', call({ path: `/?n=${limit}`, maxResponseBytes: limit }))
    t.equal(whole.status, 200)
    t.equal(whole.body.length, limit, 'an answer of exactly the limit comes back whole')
    const home = (await p.inProcess('big', call())).body.toString()
    // Requests the router's connection pools to big's instances still have under way (undici's own count).
    const underWay = (): number => [...p.pools.instances()].filter((i) => i.fn === 'big').reduce((n, i) => n + (i.dispatcher as Pool).stats.running, 0)

    for (const [what, query] of [['announced by its content-length', ''], ['sent chunked', '&chunked=1']] as const) {
      // Far more than the socket buffers hold: an answer left unread would hold its connection open.
      const res = await p.inProcess('big', call({ path: `/?n=${4 << 20}${query}`, maxResponseBytes: limit }))
      t.equal(res.error?.code, 'KDL_ERR_PAYLOAD_TOO_LARGE', what)
      t.equal(res.status, 413, what)
      t.equal(res.version, 1, what)
      t.match(json(res), { code: 'KDL_ERR_PAYLOAD_TOO_LARGE' }, what)
      const next = await p.inProcess('big', call())
      t.equal(next.status, 200, `${what}: the following call succeeds`)
      t.equal(next.headers['x-kindling-start'], 'warm', `${what}: warm`)
      t.equal(next.body.toString(), home, `${what}: on the same instance, which finished its work and was kept`)
      // A refused answer left unread would stay under way, its connection held, for as long as the instance lives.
      await waitFor(() => underWay() === 0, `${what}: no request left under way on the instance`)
    }
    // The instance's connection pool still serves calls one after the other and side by side, HTTP ones too.
    const burst = await Promise.all([...Array(4).keys()].map(() => p.inProcess('big', call({ path: '/?n=10' }))))
    t.same(burst.map((r) => [r.status, r.body.length]), Array(4).fill([200, 10]))
    const http = await p.invoke('big', { path: '?n=10' })
    t.same([http.status, http.text.length], [200, 10])
  })

  t.test('in-process calls count in the metrics and the dashboard like HTTP calls', async (t) => {
    const ok = 'kindling_invocations_total{function="echo",version="1",code="200"}'
    const timed = 'kindling_invocation_duration_seconds_count{function="echo",version="1"}'
    const stats = async (): Promise<number> => ((await p.api('GET', '/v1/stats')).json['functions'] as Record<string, { totals: { calls: number } }>)['echo']?.totals.calls ?? 0
    const [ok0, timed0, calls0] = [await metric(p, ok), await metric(p, timed), await stats()]
    t.ok(ok0 > 0, 'the earlier calls of echo were counted already')
    for (let i = 0; i < 3; i++) t.equal((await p.inProcess('echo', call())).status, 200)
    t.equal(await metric(p, ok), ok0 + 3, `${ok} counts the three calls`)
    t.equal(await metric(p, timed), timed0 + 3, 'and times them')
    t.equal(await stats(), calls0 + 3, 'GET /v1/stats counts them')
    const unknown = 'kindling_invocations_total{function="",version="",code="KDL_ERR_FN_NOT_FOUND"}'
    const unknown0 = await metric(p, unknown)
    await p.inProcess('nothing-here', call())
    t.equal(await metric(p, unknown), unknown0 + 1, 'an unknown name is counted without its name as a label')
  })
})
