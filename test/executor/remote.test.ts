import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { request } from 'undici'
import { startEmbedded, startPlatform as startRole } from '../../embedded/main.js'
import { startPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 13: a cluster router (KINDLING_ROLE=router) asks a controller's executor for instances over the network;
// the lease names the instance's address and the router calls the instance itself.

const quiet = pino({ level: process.env['KINDLING_TEST_LOG'] ?? 'silent' })
const TOKEN = 'router-token-0123456789'

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  const res = await request(url, { headers })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

async function startRouter(tt: { teardown(fn: () => unknown): void }, executorUrl: string, token = TOKEN): Promise<{ url: string; close(): Promise<void> }> {
  const r = await startRole({ env: {}, overrides: { KINDLING_ROLE: 'router', KINDLING_PORT: 0, KINDLING_EXECUTOR_URL: executorUrl, KINDLING_EXECUTOR_TOKEN: token }, log: quiet })
  tt.teardown(() => r.close())
  return r
}

t.test('a router serves a controller\'s functions: cold then warm, new versions, errors passed through', async (t) => {
  const c = await startPlatform(t, { KINDLING_ROLE: 'controller', KINDLING_EXECUTOR_PORT: 0, KINDLING_EXECUTOR_TOKEN: TOKEN })
  t.ok(c.executorPort, 'the controller listens for routers')
  const router = await startRouter(t, `http://127.0.0.1:${c.executorPort}`)
  await waitFor(async () => (await get(`${router.url}/readyz`)).status === 200, 'the router is ready once connected')
  t.equal((await get(`${router.url}/healthz`)).status, 200)

  t.equal((await c.deploy('hi', { runtime: 'node', code: 'export default (e) => ({ v: 1, q: e.query.q ?? null })' })).status, 201)
  const first = await get(`${router.url}/fn/hi?q=a`)
  t.equal(first.status, 200, first.text)
  t.same(JSON.parse(first.text), { v: 1, q: 'a' })
  t.not(first.headers['x-kindling-start'], 'warm')
  const second = await get(`${router.url}/fn/hi`)
  t.equal(second.headers['x-kindling-start'], 'warm', 'the second call is served from the router\'s own table')
  const before = (await c.api('GET', '/v1/pools')).json
  t.ok(before, 'pools answer')

  // A deploy on the controller reaches the router over the event stream: the next call runs the new version.
  t.equal((await c.deploy('hi', { runtime: 'node', code: 'export default () => ({ v: 2 })' })).status, 200)
  await waitFor(async () => JSON.parse((await get(`${router.url}/fn/hi`)).text).v === 2, 'the router routes to version 2')

  const missing = await get(`${router.url}/fn/nope`)
  t.equal(missing.status, 404)
  t.equal(JSON.parse(missing.text).code, 'KDL_ERR_FN_NOT_FOUND', 'the controller\'s error crosses the network with its code')
})

t.test('ephemeral instances are given back over the network and destroyed', async (t) => {
  const c = await startPlatform(t, { KINDLING_ROLE: 'controller', KINDLING_EXECUTOR_PORT: 0, KINDLING_EXECUTOR_TOKEN: TOKEN })
  const router = await startRouter(t, `http://127.0.0.1:${c.executorPort}`)
  await waitFor(async () => (await get(`${router.url}/readyz`)).status === 200, 'router ready')
  await c.deploy('once', { runtime: 'node', code: 'const id = Math.random(); export default () => id', mode: 'ephemeral' })
  const a = await get(`${router.url}/fn/once`)
  t.equal(a.status, 200)
  await waitFor(() => c.executor.instancesOf('once')['leased'] === undefined || c.executor.instancesOf('once')['leased'] === 0, 'the ephemeral instance left the controller')
  const b = await get(`${router.url}/fn/once`)
  t.equal(b.status, 200)
  t.not(b.text, a.text, 'another instance (another module) served the second call')
  t.not(b.headers['x-kindling-start'], 'warm')
})

t.test('a wrong token is refused: the router is not ready and says why', async (t) => {
  const c = await startPlatform(t, { KINDLING_ROLE: 'controller', KINDLING_EXECUTOR_PORT: 0, KINDLING_EXECUTOR_TOKEN: TOKEN })
  const router = await startRouter(t, `http://127.0.0.1:${c.executorPort}`, 'wrong-token-0123456789')
  const ready = await get(`${router.url}/readyz`)
  t.equal(ready.status, 503)
  t.match(JSON.parse(ready.text).reason, /not connected to the controller/)
  await c.deploy('x', { runtime: 'node', code: 'export default () => 1' })
  const call = await get(`${router.url}/fn/x`)
  t.equal(call.status, 401)
  t.equal(JSON.parse(call.text).code, 'KDL_ERR_UNAUTHORIZED')
})

t.test('the controller away: cold calls answer 503 KDL_ERR_CONTROLLER_UNAVAILABLE; back, the router hands over and serves', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-remote-'))
  const overrides = { KINDLING_ROLE: 'controller', KINDLING_PORT: 0, KINDLING_EXECUTOR_PORT: 0, KINDLING_EXECUTOR_TOKEN: TOKEN, KINDLING_DATA_DIR: dir, KINDLING_POOL_SIZE: 1 }
  const running: Array<{ close(): Promise<void> }> = []
  t.teardown(async () => {
    for (const p of running) await p.close()
    await rm(dir, { recursive: true, force: true })
  })
  const first = await startEmbedded({ env: {}, overrides, log: quiet })
  running.push(first)
  const port = first.executorPort!
  const router = await startRouter(t, `http://127.0.0.1:${port}`)
  await waitFor(async () => (await get(`${router.url}/readyz`)).status === 200, 'router ready')
  await request(`${first.url}/v1/functions/keep`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: 'export default () => "kept"', mode: 'persistent' }) }).then((r) => r.body.text())
  t.equal((await get(`${router.url}/fn/keep`)).text, 'kept')
  running.splice(running.indexOf(first), 1)
  await first.close()
  await waitFor(async () => JSON.parse((await get(`${router.url}/readyz`)).text).controller === 'away', 'the router notices the controller is gone')
  t.equal((await get(`${router.url}/readyz`)).status, 200, 'the router stays Ready: its warm calls need no controller')
  const cold = await get(`${router.url}/fn/other`)
  t.equal(cold.status, 503)
  t.equal(JSON.parse(cold.text).code, 'KDL_ERR_CONTROLLER_UNAVAILABLE')
  t.equal(cold.headers['retry-after'], '1')

  // The same controller comes back on the same port (the process backend's instances died with the first one:
  // the hand-over finds them gone, the router drops them, and the next call gets a new instance).
  const second = await startEmbedded({ env: {}, overrides: { ...overrides, KINDLING_EXECUTOR_PORT: port }, log: quiet })
  running.push(second)
  await waitFor(async () => JSON.parse((await get(`${router.url}/readyz`)).text).controller === 'connected', 'the router reconnects')
  const again = await get(`${router.url}/fn/keep`)
  t.equal(again.status, 200, again.text)
  t.equal(again.text, 'kept')
})

t.test('maxInstances across routers: an idle instance is handed over to the router that needs it, state and all; a busy one is not (429)', async (t) => {
  const c = await startPlatform(t, { KINDLING_ROLE: 'controller', KINDLING_EXECUTOR_PORT: 0, KINDLING_EXECUTOR_TOKEN: TOKEN })
  const url = `http://127.0.0.1:${c.executorPort}`
  const r1 = await startRouter(t, url)
  const r2 = await startRouter(t, url)
  for (const r of [r1, r2]) await waitFor(async () => (await get(`${r.url}/readyz`)).status === 200, 'router ready')
  const code = `let n = 0
export default async (e) => {
  n++
  const hold = Number(e.query.hold ?? 0)
  if (hold > 0) await new Promise((r) => setTimeout(r, hold))
  return { pid: process.pid, n }
}`
  await c.deploy('one', { runtime: 'node', code, mode: 'persistent', maxInstances: 1 })
  const call = async (r: { url: string }, q = ''): Promise<{ status: number; json: { pid?: number; n?: number; code?: string; message?: string } }> => {
    const res = await get(`${r.url}/fn/one${q}`)
    return { status: res.status, json: JSON.parse(res.text) }
  }
  const a = await call(r1)
  t.equal(a.status, 200, 'the first router gets the one instance')
  const b = await call(r2)
  t.equal(b.status, 200, 'the second router gets it too: the first had it idle and handed it over')
  t.same(b.json, { pid: a.json.pid, n: 2 }, 'the same process, its state kept (a persistent function\'s counter)')
  t.same((await call(r1)).json, { pid: a.json.pid, n: 3 }, 'and back to the first router')

  // Busy on the first router: the second cannot have it and is told so.
  const held = call(r1, '?hold=4000')
  const refused = await waitFor(async () => { const x = await call(r2); return x.status === 429 && x }, 'the second router refused while the first router\'s call runs', 10_000)
  t.equal(refused.json.code, 'KDL_ERR_SATURATED')
  t.match(refused.json.message, /across the routers, none of them idle/)
  t.equal((await held).status, 200, 'the held call ends on its instance')
})
