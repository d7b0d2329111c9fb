import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { request } from 'undici'
import { startEmbedded, startPlatform, type Embedded } from '../../embedded/main.js'
import { SIM_ROOT, startSim } from '../fixtures/kube.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 13, the controllers of a cluster in one test process: two controllers elect a leader on the stand-in's
// Lease; a router asks the leader for instances. The leader stops: the standby takes over, the router hands its
// instances over, and the warm calls made meanwhile all succeed — on the same instance.

const quiet = pino({ level: process.env['KINDLING_TEST_LOG'] ?? 'silent' })
const TOKEN = 'failover-token-0123456789'

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0))
    })
  })
}

async function call(url: string): Promise<{ status: number; text: string; start: string }> {
  const res = await request(url)
  return { status: res.statusCode, text: await res.body.text(), start: String(res.headers['x-kindling-start'] ?? '') }
}

t.test('leader failover: the standby leads, the router hands over, no warm call is lost', async (t) => {
  const sim = await startSim(t)
  const redis = await startRedis(t)
  const executorPort = await freePort()
  const base = {
    KINDLING_ROLE: 'controller', KINDLING_BACKEND: 'kubernetes', KINDLING_KUBECONFIG: sim.kubeconfigPath, KINDLING_STORE: 'redis', KINDLING_REDIS_URL: redis.url,
    KINDLING_LEADER_LEASE: 'kindling-controller', KINDLING_LEADER_LEASE_MS: 3000, KINDLING_PLATFORM_ID: 'failover', KINDLING_EXECUTOR_TOKEN: TOKEN,
    // Both would listen on the one executor port a Service would front: only the leader binds it.
    KINDLING_EXECUTOR_PORT: executorPort, KINDLING_PORT: 0, KINDLING_POOL_SIZE: 1,
  }
  const dirs = [await mkdtemp(join(SIM_ROOT, 'kdl-ctl-a-')), await mkdtemp(join(SIM_ROOT, 'kdl-ctl-b-'))]
  const started: Embedded[] = []
  t.teardown(async () => {
    for (const e of started.reverse()) await e.close()
    for (const d of dirs) await rm(d, { recursive: true, force: true })
  })
  // The namespace must exist for the Lease: the first leader creates it with its pools, so create it up front.
  const { execFile } = await import('node:child_process')
  const { promisify } = await import('node:util')
  const { KUBECTL } = await import('../fixtures/kube.js')
  await promisify(execFile)(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'create', 'namespace', 'kindling'])

  const a = await startEmbedded({ env: {}, overrides: { ...base, KINDLING_DATA_DIR: dirs[0]! }, log: quiet })
  started.push(a)
  let b: Embedded | undefined
  const bStarted = startEmbedded({ env: {}, overrides: { ...base, KINDLING_DATA_DIR: dirs[1]! }, log: quiet }).then((e) => { b = e; started.push(e); return e })
  const router = await startPlatform({ env: {}, overrides: { KINDLING_ROLE: 'router', KINDLING_PORT: 0, KINDLING_EXECUTOR_URL: `http://127.0.0.1:${executorPort}`, KINDLING_EXECUTOR_TOKEN: TOKEN }, log: quiet })
  t.teardown(() => router.close())
  await waitFor(async () => (await request(`${router.url}/readyz`).then(async (r) => { await r.body.text(); return r.statusCode })) === 200, 'the router reaches the leader', 20_000)

  const dep = await request(`${a.url}/v1/functions/keep`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: 'const id = Math.random(); export default () => id', mode: 'persistent' }) })
  t.equal(dep.statusCode, 201, await dep.body.text())
  const first = await call(`${router.url}/fn/keep`)
  t.equal(first.status, 200)
  const warm = await call(`${router.url}/fn/keep`)
  t.equal(warm.start, 'warm')
  t.equal(warm.text, first.text)
  t.equal(b, undefined, 'the second controller stands by')

  // Two clients keep calling while the leader stops.
  const answers: Array<{ status: number; text: string; start: string }> = []
  let stop = false
  const client = async (): Promise<void> => { while (!stop) answers.push(await call(`${router.url}/fn/keep`)) }
  const clients = [client(), client()]
  await waitFor(() => answers.length >= 20, 'calls flowing')
  await a.close()
  started.splice(started.indexOf(a), 1)
  const before = answers.length
  const next = await bStarted
  t.ok(next.executorPort === executorPort, 'the new leader serves the routers on the same port')
  await waitFor(() => answers.length > before + 50, 'calls go on after the hand-over', 20_000)
  // The router hands its instance over to the new leader: it is leased there now.
  await waitFor(() => (next.executor.instancesOf('keep')['leased'] ?? 0) >= 1, 'the new leader holds the router\'s instance')
  stop = true
  await Promise.all(clients)
  const failed = answers.filter((x) => x.status !== 200)
  t.same(failed, [], 'every call during the failover answered 200')
  t.ok(answers.every((x) => x.text === first.text), 'every call ran on the one instance the first leader started')

  // The new leader is a full controller: a deploy through it reaches the router.
  const up = await request(`${next.url}/v1/functions/keep`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: 'export default () => "v2"', mode: 'persistent' }) })
  t.equal(up.statusCode, 200, await up.body.text())
  await waitFor(async () => (await call(`${router.url}/fn/keep`)).text === 'v2', 'the router routes to the new version')
})
