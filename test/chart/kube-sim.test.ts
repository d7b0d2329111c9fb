import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { Pool, request } from 'undici'
import { KUBECTL, startSim } from '../fixtures/kube.js'
import { waitFor } from '../fixtures/wait.js'
import { CHART, helm } from './chart.js'

// Issue 13, the chart for real: `helm template` once, the output applied with kubectl to a kube-sim of its own
// (1 management, 2 runtime, 1 quarantine node). The pods run the platform image as the stand-in maps it (this
// checkout's bin/kindling.mjs: `npm test` builds dist/ first), reach each other through the Services (cluster IPs,
// Endpoints, the names in their hosts files) and the API through their service-account kubeconfig.
//   - every component comes up Ready: one controller leading, the standby live, two routers, Redis, an agent per
//     runtime and quarantine node;
//   - a function deployed through the API Service and invoked through the router Service, both routers serving it;
//   - a CPU hog throttled by the agent of its node (its container's CFS quota file on the host shows it), then
//     quarantined: its pod replaced by one on the quarantine node;
//   - the leader killed (force delete: SIGKILL, no hand-over) under warm calls: the standby leads, no warm call lost,
//     and the API answers again through the same Service.

// Seven workloads start as processes on two cores, beside the suite's other files: more than the default file timeout.
t.setTimeout(480_000)

const NS = 'kindling'
const HELLO = "export default async () => ({ status: 200, headers: { 'content-type': 'text/plain' }, body: 'hello from the cluster' })\n"

interface Pod {
  metadata: { name: string; uid: string; labels?: Record<string, string>; deletionTimestamp?: string }
  spec: { nodeName?: string }
  status: { podIP?: string; phase?: string; qosClass?: string; conditions?: Array<{ type: string; status: string }>; containerStatuses?: Array<{ containerID?: string }> }
}

// Answers, and from a call with ?spin=1 on spins in the background (yielding, so its runtime still answers).
const HOG = `export default async (event) => {
  if (event.query.spin === '1' && !globalThis.spinning) {
    globalThis.spinning = true
    const spin = () => { const end = Date.now() + 50; while (Date.now() < end) {} setImmediate(spin) }
    spin()
  }
  return { status: 200, body: String(process.pid) }
}`

/** The CFS quota file of a pod's first container on the host, where the stand-in's kubelet puts it (cgroupfs layout). */
function cfsQuotaFile(clusterId: string, pod: Pod): string {
  const cid = String(pod.status.containerStatuses?.[0]?.containerID).replace('containerd://', '')
  const qos = pod.status.qosClass === 'Guaranteed' ? 'kubepods' : `kubepods/${String(pod.status.qosClass).toLowerCase()}`
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers')
  return join(v2 ? '/sys/fs/cgroup' : '/sys/fs/cgroup/cpu', 'kube-sim', clusterId, String(pod.spec.nodeName), qos, `pod${pod.metadata.uid}`, cid, v2 ? 'cpu.max' : 'cpu.cfs_quota_us')
}

async function quota(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).trim().split(' ')[0] as string
}

const ready = (p: Pod): boolean => p.metadata.deletionTimestamp === undefined && p.status.phase === 'Running' && (p.status.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True')

t.test('the chart on kube-sim: Ready components, a function through the Services, a hog throttled and quarantined, a leader killed under warm calls', async (t) => {
  const sim = await startSim(t)
  const kubectl = (args: readonly string[], input?: string): Promise<string> => new Promise((resolve, reject) => {
    const child = execFile(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, ...args], { timeout: 60_000, maxBuffer: 32 << 20 }, (err, stdout, stderr) => (err ? reject(new Error(`kubectl ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout)))
    if (input !== undefined) child.stdin?.end(input)
  })
  const pods = async (component: string): Promise<Pod[]> => (JSON.parse(await kubectl(['get', 'pods', '-n', NS, '-l', `app.kubernetes.io/component=${component}`, '-o', 'json'])) as { items: Pod[] }).items
  const clusterIP = async (svc: string): Promise<string> => (await kubectl(['get', 'service', '-n', NS, svc, '-o', 'jsonpath={.spec.clusterIP}'])).trim()

  // helm template once, then kubectl apply the file (the reference design's habit; kubectl keeps the history).
  // A quick load guard (a sample every 500 ms, throttle after 3 outside, quarantine after 4 more; no kill) and a short Lease.
  const config = {
    KINDLING_LEADER_LEASE_MS: 4000, KINDLING_LOADGUARD_INTERVAL_MS: 500, KINDLING_LOADGUARD_IDLE_EVERY: 1, KINDLING_LOADGUARD_SUSTAIN_SAMPLES: 3,
    KINDLING_LOADGUARD_QUARANTINE_SAMPLES: 4, KINDLING_LOADGUARD_KILL_SAMPLES: 100_000, KINDLING_LOADGUARD_COOLDOWN_MS: 600_000,
  }
  const rendered = await helm('template', 'kindling', CHART, '-n', NS, ...Object.entries(config).flatMap(([k, v]) => ['--set-string', `config.${k}=${v}`]))
  t.equal(rendered.code, 0, `helm template renders (${rendered.stderr.trim()})`)
  const file = join(sim.dataDir, 'kindling.yaml')
  await writeFile(file, rendered.stdout)
  await kubectl(['create', 'namespace', NS])
  await kubectl(['apply', '-f', file])

  // ── Every component Ready ──
  const components = async (): Promise<Record<string, number>> => {
    const out: Record<string, number> = {}
    for (const c of ['controller', 'router', 'redis', 'agent']) out[c] = (await pods(c)).filter(ready).length
    return out
  }
  await waitFor(async () => {
    const c = await components()
    return c['controller'] === 1 && c['router'] === 2 && c['redis'] === 1 && c['agent'] === 3 ? c : undefined
  }, 'the controller leading, two routers, Redis and three agents Ready', 180_000).catch(async (err: unknown) => {
    t.comment(await kubectl(['get', 'pods', '-n', NS, '-o', 'wide']))
    for (const c of ['controller', 'router']) for (const p of await pods(c)) t.comment(`${p.metadata.name}:\n${(await kubectl(['logs', '-n', NS, p.metadata.name]).catch(String)).split('\n').filter((l) => !l.includes('"level":30')).slice(-8).join('\n')}`)
    throw err
  })
  const controllers = await pods('controller')
  t.equal(controllers.length, 2, 'two controller replicas run')
  t.equal(controllers.filter(ready).length, 1, 'exactly one of them (the leader) is Ready: the standby is live, not Ready')
  const leader = controllers.find(ready)!
  const nodes = new Map((JSON.parse(await kubectl(['get', 'nodes', '-o', 'json'])) as { items: Array<{ metadata: { name: string; labels: Record<string, string> } }> }).items.map((n) => [n.metadata.name, n.metadata.labels['kindling.io/node-role']]))
  for (const c of ['controller', 'router', 'redis']) {
    t.same([...new Set((await pods(c)).map((p) => nodes.get(p.spec.nodeName ?? '')))], ['management'], `the ${c} pods are on the management node`)
  }
  t.same((await pods('agent')).map((p) => nodes.get(p.spec.nodeName ?? '')).sort(), ['quarantine', 'runtime', 'runtime'], 'an agent on each runtime and quarantine node, none on the management node')
  const lease = JSON.parse(await kubectl(['get', 'lease', '-n', NS, 'kindling-controller', '-o', 'json'])) as { spec: { holderIdentity: string } }
  t.ok(lease.spec.holderIdentity.startsWith(leader.metadata.name), `the Ready controller holds the Lease (${lease.spec.holderIdentity})`)

  // ── A function through the API Service, calls through the router Service ──
  const secret = JSON.parse(await kubectl(['get', 'secret', '-n', NS, 'kindling-secret', '-o', 'json'])) as { data: Record<string, string> }
  const token = Buffer.from(secret.data['KINDLING_API_TOKEN']!, 'base64').toString()
  const api = `http://${await clusterIP('kindling-api')}`
  const router = `http://${await clusterIP('kindling-router')}`
  const deploy = async (name: string): Promise<number> => {
    const r = await request(`${api}/v1/functions/${name}`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: HELLO }) })
    await r.body.text()
    return r.statusCode
  }
  t.equal(await deploy('hello'), 201, 'a function is deployed through the API Service')
  const unauth = await request(`${api}/v1/functions`)
  await unauth.body.text()
  t.equal(unauth.statusCode, 401, 'the API Service wants the Secret\'s token')

  // A new connection per call: the Service spreads them over both routers.
  for (let i = 0; i < 12; i++) {
    const r = await request(`${router}/fn/hello`, { reset: true })
    const body = await r.body.text()
    if (r.statusCode !== 200 || body !== 'hello from the cluster') t.fail(`call ${i} through the router Service: ${r.statusCode} ${body}`)
  }
  const served: Record<string, number> = {}
  for (const p of (await pods('router')).filter(ready)) {
    const m = await (await request(`http://${p.status.podIP}:8080/metrics`)).body.text()
    served[p.metadata.name] = [...m.matchAll(/^kindling_invocations_total\{[^}]*function="hello"[^}]*code="200"[^}]*\} (\d+)/gm)].reduce((n, x) => n + Number(x[1]), 0)
  }
  t.equal(Object.keys(served).length, 2, 'two routers')
  t.ok(Object.values(served).every((n) => n > 0), `both routers served the function (${JSON.stringify(served)})`)
  t.equal(Object.values(served).reduce((a, b) => a + b, 0), 12, 'every call through the Service was counted by one router')
  const fnPods = (JSON.parse(await kubectl(['get', 'pods', '-n', NS, '-l', 'kindling.io/function=hello', '-o', 'json'])) as { items: Pod[] }).items
  t.ok(fnPods.length > 0 && fnPods.every((p) => nodes.get(p.spec.nodeName ?? '') === 'runtime'), `the function's pods are on runtime nodes (${fnPods.map((p) => p.spec.nodeName).join(', ')})`)

  // ── A CPU hog: throttled by the agent of its node, then quarantined onto the quarantine node ──
  const api2 = async (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => { // eslint-disable-line @typescript-eslint/no-explicit-any
    const r = await request(`${api}${path}`, { method: method as 'GET', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
    const text = await r.body.text()
    return { status: r.statusCode, json: text === '' ? undefined : JSON.parse(text) }
  }
  t.equal((await api2('PUT', '/v1/functions/hog', { runtime: 'node', code: HOG, mode: 'persistent', cpu: 0.5, maxInstances: 1 })).status, 201, 'the hog is deployed')
  const hogPods = async (): Promise<Pod[]> => (JSON.parse(await kubectl(['get', 'pods', '-n', NS, '-l', 'kindling.io/function=hog', '-o', 'json'])) as { items: Pod[] }).items.filter((p) => p.metadata.deletionTimestamp === undefined)
  // One keep-alive connection, so one router: the hog's one instance (maxInstances 1) stays with it while the guard
  // watches (another router would have it handed over when idle).
  const hogClient = new Pool(router, { connections: 1 })
  t.teardown(() => hogClient.close())
  const hogCall = async (path: string): Promise<{ status: number; text: string }> => {
    const r = await hogClient.request({ path, method: 'GET' })
    return { status: r.statusCode, text: await r.body.text() }
  }
  const first = await hogCall('/fn/hog')
  t.equal(first.status, 200, `the hog answers (${first.text})`)
  const [hogPod] = await waitFor(async () => { const x = await hogPods(); return x.length === 1 && x }, 'the hog\'s pod', 30_000)
  t.equal(nodes.get(hogPod!.spec.nodeName ?? ''), 'runtime', 'it runs on a runtime node')
  const quotaFile = cfsQuotaFile(sim.id, hogPod!)
  t.equal(await quota(quotaFile), '50000', 'its container starts with its 0.5-core quota')
  const spin = await hogCall('/fn/hog?spin=1')
  t.equal(spin.status, 200, `the hog starts spinning (${spin.text})`)
  const events = async (type: string): Promise<Array<Record<string, any>>> => // eslint-disable-line @typescript-eslint/no-explicit-any
    ((await api2('GET', '/v1/events?limit=500')).json.events as Array<Record<string, any>>).filter((e) => e['type'] === type && e['function'] === 'hog') // eslint-disable-line @typescript-eslint/no-explicit-any
  const [throttle] = await waitFor(async () => { const e = await events('loadguard-throttle'); return e.length > 0 && e }, 'loadguard-throttle', 60_000, 200)
  const lowered = Math.round(Number(throttle!['data']['throttledToCores']) * 100_000)
  t.ok(lowered > 0 && lowered < 50_000, `throttled by the controller's guard (${JSON.stringify(throttle!['data'])})`)
  t.equal(await quota(quotaFile), String(lowered), 'the agent of its node lowered the pod container\'s CFS quota on the host')
  await waitFor(async () => (await events('loadguard-quarantine')).length > 0 || undefined, 'loadguard-quarantine', 60_000, 200)
  t.pass('quarantined after the throttle')
  // A quarantined function's pod is replaced once a call on it ends; the new one starts on the quarantine node.
  const moved = await waitFor(async () => {
    const r = await hogCall('/fn/hog')
    const x = await hogPods()
    return r.status === 200 && x.length > 0 && x.every((p) => nodes.get(p.spec.nodeName ?? '') === 'quarantine') && x
  }, 'the hog\'s pods on the quarantine node', 60_000, 250)
  t.ok(moved.length > 0, `the hog now runs on the quarantine node (${moved.map((p) => `${p.metadata.name}@${p.spec.nodeName}`).join(', ')})`)

  // ── The leader killed under warm calls ──
  const pool = new Pool(router, { connections: 4 })
  t.teardown(() => pool.close())
  let stop = false
  const failures: string[] = []
  let calls = 0
  const loop = async (): Promise<void> => {
    while (!stop) {
      try {
        const r = await pool.request({ path: '/fn/hello', method: 'GET' })
        const body = await r.body.text()
        if (r.statusCode !== 200) failures.push(`${r.statusCode} ${body.slice(0, 200)}`)
      } catch (err) {
        failures.push(String(err))
      }
      calls++
    }
  }
  const loops = [loop(), loop(), loop(), loop()]
  await waitFor(() => calls >= 200 || undefined, 'warm calls under way', 20_000)
  await kubectl(['delete', 'pod', '-n', NS, leader.metadata.name, '--grace-period=0', '--force'])
  const before = calls
  const next = await waitFor(async () => (await pods('controller')).find((p) => ready(p) && p.metadata.name !== leader.metadata.name), 'the standby leading (Ready)', 60_000)
  const atTakeover = calls
  await waitFor(() => calls >= atTakeover + 200 || undefined, 'warm calls after the hand-over', 20_000)
  stop = true
  await Promise.all(loops)
  t.same(failures.slice(0, 5), [], `no warm call failed while the leader died and the standby took over (${calls} calls, ${atTakeover - before} during the hand-over)`)
  const newLease = JSON.parse(await kubectl(['get', 'lease', '-n', NS, 'kindling-controller', '-o', 'json'])) as { spec: { holderIdentity: string } }
  t.ok(newLease.spec.holderIdentity.startsWith(next.metadata.name), `the new leader holds the Lease (${newLease.spec.holderIdentity})`)
  await waitFor(async () => ((await pods('controller')).filter((p) => p.metadata.deletionTimestamp === undefined).length === 2) || undefined, 'the ReplicaSet replacing the killed replica', 60_000)
  t.pass('the Deployment brings the controller back to two replicas')

  // The API through the same Service reaches the new leader: a second function deploys and answers.
  await waitFor(async () => (await deploy('hello-again')) === 201 || undefined, 'a deploy through the API Service after the hand-over', 30_000)
  const again = await request(`${router}/fn/hello-again`, { reset: true })
  t.equal(await again.body.text(), 'hello from the cluster', 'a function deployed after the hand-over answers through the router Service')
})
