import { execFile, spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { Agent, request } from 'undici'
import { KUBECTL, startSim, type TestCluster } from '../fixtures/kube.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 13, "done when": the rendered chart applied with the real kubectl to `kindling kube-sim`. The components come
// up Ready, a function is deployed through the API Service with the CLI and invoked through the router Service, both
// routers serve it, a CPU hog is throttled by the node agent and then quarantined onto the quarantine node, and the
// controller's leader is killed under warm calls without losing one.

const run = promisify(execFile)
const HELM = join(process.cwd(), '.kube-tools', 'bin', 'helm')
const CLI = join(process.cwd(), 'bin', 'kindling.mjs')
const NS = 'kindling'
const RELEASE = 'kindling'

interface Pod { name: string; node: string; ip: string; ready: boolean; labels: Record<string, string>; deleting: boolean }

async function kubectl(sim: TestCluster, ...args: string[]): Promise<string> {
  return (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, ...args], { maxBuffer: 64 * 1024 * 1024 })).stdout
}

async function pods(sim: TestCluster, selector: string): Promise<Pod[]> {
  const items = (JSON.parse(await kubectl(sim, '-n', NS, 'get', 'pods', '-l', selector, '-o', 'json')) as { items: Array<{ metadata: { name: string; labels?: Record<string, string>; deletionTimestamp?: string }; spec: { nodeName?: string }; status: { podIP?: string; conditions?: Array<{ type: string; status: string }> } }> }).items
  return items.map((p) => ({
    name: p.metadata.name, node: p.spec.nodeName ?? '', ip: p.status.podIP ?? '', labels: p.metadata.labels ?? {}, deleting: p.metadata.deletionTimestamp !== undefined,
    ready: p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true,
  }))
}

const component = (c: string): string => `app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=${c}`

async function clusterIP(sim: TestCluster, svc: string): Promise<string> {
  return kubectl(sim, '-n', NS, 'get', 'svc', svc, '-o', 'jsonpath={.spec.clusterIP}')
}

/** One call on a connection of its own (the Service balances connections, as kube-proxy does). */
async function fresh(url: string): Promise<{ status: number; text: string; start: string }> {
  const agent = new Agent({ pipelining: 0 })
  try {
    const res = await request(url, { dispatcher: agent, headers: { connection: 'close' } })
    return { status: res.statusCode, text: await res.body.text(), start: String(res.headers['x-kindling-start'] ?? '') }
  } finally {
    await agent.close()
  }
}

async function cli(env: Record<string, string>, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('close', (code) => resolve({ code: code ?? -1, out, err }))
  })
}

async function invocations(ip: string, fn: string): Promise<number> {
  const res = await request(`http://${ip}:8080/metrics`)
  const text = await res.body.text()
  let n = 0
  for (const line of text.split('\n')) if (line.startsWith('kindling_invocations_total{') && line.includes(`function="${fn}"`)) n += Number(line.split(' ').pop())
  return n
}

t.test('the chart on kube-sim: Ready, deploy through the API Service, two routers, a throttled then quarantined hog, a leader killed under warm calls', async (t) => {
  const sim = await startSim(t, { management: 1, runtime: 2, quarantine: 1 })
  await kubectl(sim, 'create', 'namespace', NS)
  const values = join(sim.dataDir, 'values.yaml')
  await writeFile(values, [
    'config:',
    '  KINDLING_LEADER_LEASE_MS: "4000"',
    '  KINDLING_POOL_SIZE: "2"',
    '  KINDLING_LOADGUARD_INTERVAL_MS: "250"',
    '  KINDLING_LOADGUARD_MIN_SAMPLES: "4"',
    '  KINDLING_LOADGUARD_SUSTAIN_SAMPLES: "3"',
    '  KINDLING_LOADGUARD_QUARANTINE_SAMPLES: "3"',
    '  KINDLING_LOADGUARD_CPU_CEILING: "0.5"',
    '',
  ].join('\n'))
  const rendered = (await run(HELM, ['template', RELEASE, 'charts/kindling', '-n', NS, '-f', values], { maxBuffer: 64 * 1024 * 1024 })).stdout
  await writeFile(join(sim.dataDir, 'rendered.yaml'), rendered)
  await kubectl(sim, '-n', NS, 'apply', '-f', join(sim.dataDir, 'rendered.yaml'))

  // ── Ready ──
  await waitFor(async () => (await pods(sim, component('redis'))).some((p) => p.ready), 'redis Ready', 60_000, 250)
  await waitFor(async () => (await pods(sim, component('controller'))).filter((p) => p.ready).length === 1, 'one controller (the leader) Ready', 90_000, 250)
  await waitFor(async () => (await pods(sim, component('router'))).filter((p) => p.ready).length === 2, 'two routers Ready', 60_000, 250)
  await waitFor(async () => (await pods(sim, component('agent'))).filter((p) => p.ready).length === 3, 'an agent Ready on each runtime and quarantine node', 60_000, 250)
  const controllers = await pods(sim, component('controller'))
  t.equal(controllers.length, 2, 'two controller replicas')
  t.ok(controllers.every((p) => p.node === 'kindling-management-0'), 'the control plane runs on the management node')
  t.ok((await pods(sim, component('router'))).every((p) => p.node === 'kindling-management-0'), 'routers on the management node')
  t.same((await pods(sim, component('agent'))).map((p) => p.node).sort(), ['kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'], 'agents on the runtime and quarantine nodes only')
  const standby = controllers.find((p) => !p.ready)!
  const standbyReady = await request(`http://${standby.ip}:8080/readyz`)
  t.equal(standbyReady.statusCode, 503, 'the standby answers not ready')
  await standbyReady.body.text()

  // ── Deploy through the API Service with the CLI, invoke through the router Service ──
  const token = Buffer.from(await kubectl(sim, '-n', NS, 'get', 'secret', `${RELEASE}-secret`, '-o', 'jsonpath={.data.KINDLING_API_TOKEN}'), 'base64').toString('utf8')
  t.ok(token.length >= 16, 'the chart generated an API token')
  const api = `http://${await clusterIP(sim, `${RELEASE}-api`)}`
  const routerUrl = `http://${await clusterIP(sim, `${RELEASE}-router`)}`
  const env = { KINDLING_URL: api, KINDLING_API_TOKEN: token }
  const code = join(sim.dataDir, 'hello.mjs')
  await writeFile(code, 'const id = Math.random().toString(36).slice(2); export default (e) => ({ id, hello: e.query.name ?? "world" })\n')
  const deployed = await cli(env, 'fn', 'deploy', 'hello', '--runtime', 'node', '--code', code, '--mode', 'persistent', '--prewarm', '1')
  t.equal(deployed.code, 0, `${deployed.out}${deployed.err}`)
  const unauth = await request(`${api}/v1/functions`)
  t.equal(unauth.statusCode, 401, 'the API Service wants the token')
  await unauth.body.text()

  const first = await fresh(`${routerUrl}/fn/hello?name=chart`)
  t.equal(first.status, 200, first.text)
  t.equal(JSON.parse(first.text).hello, 'chart')
  for (let i = 0; i < 40; i++) t.equal((await fresh(`${routerUrl}/fn/hello`)).status, 200)
  const routers = await pods(sim, component('router'))
  const perRouter = await Promise.all(routers.map((r) => invocations(r.ip, 'hello')))
  t.ok(perRouter.every((n) => n > 0), `both routers served calls through the Service (${perRouter.join(', ')})`)
  const fnPods = await pods(sim, 'kindling.io/function=hello')
  t.ok(fnPods.length >= 1 && fnPods.every((p) => /^kindling-runtime-\d$/.test(p.node)), 'the function\'s pods run on runtime nodes only')

  // ── The leader killed under warm calls ──
  const leader = (await pods(sim, component('controller'))).find((p) => p.ready)!
  const answers: Array<{ status: number; text: string }> = []
  let stop = false
  const keepAlive = new Agent({ connections: 2 })
  const client = async (): Promise<void> => {
    while (!stop) {
      const res = await request(`${routerUrl}/fn/hello`, { dispatcher: keepAlive })
      answers.push({ status: res.statusCode, text: await res.body.text() })
    }
  }
  const clients = [client(), client()]
  await waitFor(() => answers.length >= 20, 'warm calls flowing')
  await kubectl(sim, '-n', NS, 'delete', 'pod', leader.name, '--grace-period=0', '--force', '--wait=false')
  const killedAt = answers.length
  await waitFor(async () => (await pods(sim, component('controller'))).some((p) => p.ready && p.name !== leader.name && !p.deleting), 'the standby leads', 60_000, 250)
  await waitFor(() => answers.length > killedAt + 100, 'warm calls after the hand-over', 30_000)
  stop = true
  await Promise.all(clients)
  await keepAlive.close()
  t.same(answers.filter((a) => a.status !== 200), [], `every one of ${answers.length} warm calls answered 200 across the leader's death`)
  const holder = await kubectl(sim, '-n', NS, 'get', 'lease', `${RELEASE}-controller`, '-o', 'jsonpath={.spec.holderIdentity}')
  t.notMatch(holder, leader.name, 'the Lease names the new leader')
  // The new leader serves the API: a new version deployed through it reaches the routers.
  const v2 = join(sim.dataDir, 'hello2.mjs')
  await writeFile(v2, 'export default () => ({ v: 2 })\n')
  const redeployed = await cli(env, 'fn', 'deploy', 'hello', '--runtime', 'node', '--code', v2, '--mode', 'persistent')
  t.equal(redeployed.code, 0, `${redeployed.out}${redeployed.err}`)
  await waitFor(async () => JSON.parse((await fresh(`${routerUrl}/fn/hello`)).text).v === 2, 'version 2 through the router Service', 30_000)
})
