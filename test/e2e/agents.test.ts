import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { render } from '../chart/chart.js'
import { KUBECTL, startSim, type TestCluster } from '../fixtures/kube.js'
import { startPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 13, the node agent on a cluster stand-in: `kindling agent` as a DaemonSet on the runtime and quarantine nodes
// (the built CLI, image kindling/platform), a platform on the kubernetes backend with KINDLING_AGENT_SELECTOR set, and a
// CPU hog: the guard samples the hog's pod through the agent of its node, throttles it there (its container's CFS quota
// file on the host shows it), quarantines the function onto the quarantine node, and kills the pod that stays outside.

const run = promisify(execFile)
const TOKEN = 'e2e-agent-token-0123456789abcdef'
const SELECTOR = 'app.kubernetes.io/component=agent'
// Spins in the background from its first call with \`x-spin: 1\` on (yielding, so the runtime still answers its health
// checks); a call with \`x-hold: ms\` stays in flight that long, so its instance is busy (a quarantine does not replace
// a busy instance).
const HOG = `export default async (event) => {
  if (!globalThis.spinning && event.headers['x-spin'] === '1') {
    globalThis.spinning = true
    const spin = () => { const end = Date.now() + 50; while (Date.now() < end) {} setImmediate(spin) }
    spin()
  }
  const hold = Number(event.headers['x-hold'] ?? 0)
  if (hold > 0) await new Promise((resolve) => setTimeout(resolve, hold))
  return { pid: process.pid }
}`

// The agents are the built CLI (bin/kindling.mjs → dist/): `npm test` builds it first; alone, run `npm run build`.
if (!existsSync(join(process.cwd(), 'dist', 'cli', 'agent.js'))) throw new Error('test/e2e/agents.test.ts runs the built CLI: npm run build first (npm test does)')

function agentDaemonSet(): string {
  return JSON.stringify(
      {
        apiVersion: 'apps/v1', kind: 'DaemonSet',
        metadata: { name: 'kindling-agent', namespace: 'kindling', labels: { 'app.kubernetes.io/component': 'agent' } },
        spec: {
          selector: { matchLabels: { 'app.kubernetes.io/component': 'agent' } },
          template: {
            metadata: { labels: { 'app.kubernetes.io/component': 'agent' } },
            spec: {
              affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kindling.io/node-role', operator: 'In', values: ['runtime', 'quarantine'] }] }] } } },
              tolerations: [{ key: 'kindling.io/node-role', operator: 'Exists', effect: 'NoSchedule' }],
              securityContext: { runAsUser: 0 },
              containers: [{
                name: 'agent', image: 'kindling/platform:test', args: ['agent'],
                ports: [{ containerPort: 8082, name: 'agent' }],
                env: [
                  { name: 'KINDLING_HOST', value: '0.0.0.0' }, { name: 'KINDLING_AGENT_PORT', value: '8082' },
                  { name: 'KINDLING_AGENT_TOKEN', value: TOKEN }, { name: 'KINDLING_LOG_LEVEL', value: 'warn' },
                  { name: 'KINDLING_NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
                  { name: 'KINDLING_POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
                ],
                readinessProbe: { httpGet: { path: '/healthz', port: 8082 }, periodSeconds: 1 },
              }],
            },
          },
        },
      })
}

async function kubectl(sim: TestCluster, args: string[], input?: string): Promise<string> {
  if (input === undefined) return (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, ...args])).stdout
  return await new Promise((resolve, reject) => {
    const child = spawn(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => { out += String(d) })
    child.stderr.on('data', (d: Buffer) => { err += String(d) })
    child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`kubectl ${args.join(' ')}: ${err}`))))
    child.stdin.end(input)
  })
}

interface Pod {
  metadata: { name: string; uid: string; deletionTimestamp?: string }
  spec: { nodeName?: string }
  status: { qosClass?: string; containerStatuses?: Array<{ containerID?: string }> }
}

async function podsOf(sim: TestCluster, fn: string): Promise<Pod[]> {
  const list = JSON.parse(await kubectl(sim, ['get', 'pods', '-n', 'kindling', '-o', 'json', '-l', `kindling.io/function=${fn}`])) as { items: Pod[] }
  return list.items.filter((p) => p.metadata.deletionTimestamp === undefined)
}

t.test('a CPU hog is throttled by the node agent (its cfs quota file shows it), quarantined onto the quarantine node, then killed', async (t) => {
  const sim = await startSim(t)
  await kubectl(sim, ['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kindling' } }))
  await kubectl(sim, ['apply', '-f', '-'], agentDaemonSet())
  await kubectl(sim, ['rollout', 'status', '-n', 'kindling', 'daemonset/kindling-agent', '--timeout=60s'])
  const agents = JSON.parse(await kubectl(sim, ['get', 'pods', '-n', 'kindling', '-l', SELECTOR, '-o', 'json'])) as { items: Pod[] }
  t.same(agents.items.map((p) => p.spec.nodeName).sort(), ['kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'], 'an agent on each runtime and quarantine node')

  const p = await startPlatform(t, {
    KINDLING_BACKEND: 'kubernetes', KINDLING_KUBECONFIG: sim.kubeconfigPath, KINDLING_POOL_SIZE: 1,
    KINDLING_AGENT_SELECTOR: SELECTOR, KINDLING_AGENT_TOKEN: TOKEN, KINDLING_AGENT_PORT: 8082,
    KINDLING_LOADGUARD_INTERVAL_MS: 500, KINDLING_LOADGUARD_IDLE_EVERY: 1, KINDLING_LOADGUARD_SUSTAIN_SAMPLES: 3,
    KINDLING_LOADGUARD_QUARANTINE_SAMPLES: 4, KINDLING_LOADGUARD_KILL_SAMPLES: 4, KINDLING_LOADGUARD_COOLDOWN_MS: 600_000,
  })
  t.equal((await p.deploy('hog', { runtime: 'node', code: HOG, mode: 'persistent', cpu: 0.5, maxInstances: 1, timeoutMs: 120_000 })).status, 201)
  t.equal((await p.invoke('hog')).status, 200, 'the hog answers (calm so far)')
  const [pod] = await waitFor(async () => { const x = await podsOf(sim, 'hog'); return x.length === 1 && x }, 'the hog\'s one pod')
  if (pod === undefined) throw new Error('no pod')
  t.match(pod.spec.nodeName, /^kindling-runtime-\d$/, 'it runs on a runtime node')
  const cid = String(pod.status.containerStatuses?.[0]?.containerID).replace('containerd://', '')
  const qos = pod.status.qosClass === 'Guaranteed' ? 'kubepods' : `kubepods/${String(pod.status.qosClass).toLowerCase()}`
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers')
  const groupDir = join(v2 ? '/sys/fs/cgroup' : '/sys/fs/cgroup/cpu', 'kube-sim', sim.id, String(pod.spec.nodeName), qos, `pod${pod.metadata.uid}`, cid)
  const quotaFile = join(groupDir, v2 ? 'cpu.max' : 'cpu.cfs_quota_us')
  const quota = async (): Promise<string> => (await readFile(quotaFile, 'utf8')).trim().split(' ')[0] as string
  t.equal(await quota(), '50000', 'the container starts with its 0.5-core quota')
  // Now it spins, and a call is held in flight while the guard steps: the instance serves it throughout, so only the kill ends it.
  const held = p.invoke('hog', { headers: { 'x-spin': '1', 'x-hold': '90000' } })

  const events = async (type: string): Promise<Array<Record<string, any>>> =>
    ((await p.api('GET', '/v1/events?limit=500')).json['events'] as Array<Record<string, any>>).filter((e) => e['type'] === type && e['function'] === 'hog')
  const [throttle] = await waitFor(async () => { const e = await events('loadguard-throttle'); return e.length > 0 && e }, 'loadguard-throttle', 30_000, 100)
  t.ok(throttle, `throttled: ${JSON.stringify(throttle?.['data'])}`)
  t.equal(throttle?.['data']['reason'], 'cpu')
  const lowered = Math.round(Number(throttle?.['data']['throttledToCores']) * 100_000)
  t.ok(lowered > 0 && lowered < 50_000, `a lowered quota (${lowered} µs)`)
  t.equal(await quota(), String(lowered), `the pod container's cfs quota file on the host shows the lowered quota (${quotaFile})`)

  await waitFor(async () => (await events('loadguard-quarantine')).length > 0, 'loadguard-quarantine', 30_000, 100)
  t.pass('quarantined after the throttle')
  // Still spinning against its lowered quota: the last step, the pod is killed (deleted).
  const [kill] = await waitFor(async () => { const e = await events('loadguard-kill'); return e.length > 0 && e }, 'loadguard-kill', 30_000, 100)
  t.equal(kill?.['instance'], throttle?.['instance'], 'the throttled instance is the one killed')
  await waitFor(async () => !(await podsOf(sim, 'hog')).some((x) => x.metadata.uid === pod.metadata.uid), 'the killed pod gone', 30_000, 100)
  const ended = await held
  t.equal(ended.status, 502, 'the call held on the killed instance fails')
  t.match(ended.text, /KDL_ERR_FN_CRASHED/)
  // A quarantined function's serving pod is replaced once a call on it ends; its new pods start on the quarantine node.
  await waitFor(async () => {
    const res = await p.invoke('hog')
    const pods = await podsOf(sim, 'hog')
    // (the replacement is calm: it was not asked to spin)
    return res.status === 200 && pods.length > 0 && pods.every((x) => x.spec.nodeName === 'kindling-quarantine-0')
  }, 'the hog\'s pods on the quarantine node', 60_000, 200)
  const wide = await kubectl(sim, ['get', 'pods', '-n', 'kindling', '-o', 'wide', '-l', 'kindling.io/function=hog', '--no-headers'])
  for (const line of wide.trim().split('\n').filter((l) => !/Terminating/.test(l))) t.match(line, /kindling-quarantine-0/, `kubectl -o wide: ${line.split(/\s+/)[0]} on the quarantine node`)
})

t.test('the chart\'s agent DaemonSet runs `kindling agent` on the runtime and quarantine nodes: Ready, /healthz, samples with the Secret\'s token', async (t) => {
  const sim = await startSim(t)
  const objs = await render({ release: 'kdl', namespace: 'kindling' })
  const wanted = objs.filter((o) => (o.kind === 'ConfigMap' && o.metadata.name === 'kdl-kindling-config') || (o.kind === 'Secret' && o.metadata.name === 'kdl-kindling-secret') ||
    (o.metadata.labels?.['app.kubernetes.io/component'] === 'agent' && (o.kind === 'DaemonSet' || o.kind === 'ServiceAccount')))
  t.same(wanted.map((o) => o.kind).sort(), ['ConfigMap', 'DaemonSet', 'Secret', 'ServiceAccount'], 'the agent\'s objects of the chart')
  await kubectl(sim, ['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kindling' } }))
  for (const o of wanted) await kubectl(sim, ['apply', '-f', '-'], JSON.stringify(o))
  const ds = wanted.find((o) => o.kind === 'DaemonSet')?.metadata.name as string
  await kubectl(sim, ['rollout', 'status', '-n', 'kindling', `daemonset/${ds}`, '--timeout=90s'])
  const selector = (objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'kdl-kindling-config')?.['data'] as Record<string, string>)['KINDLING_AGENT_SELECTOR'] as string
  const pods = (JSON.parse(await kubectl(sim, ['get', 'pods', '-n', 'kindling', '-l', selector, '-o', 'json'])) as { items: Array<Pod & { status: { podIP: string } }> }).items
  t.same(pods.map((p) => p.spec.nodeName).sort(), ['kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'], 'KINDLING_AGENT_SELECTOR finds one agent per runtime and quarantine node')
  const token = Buffer.from(String((wanted.find((o) => o.kind === 'Secret')?.['data'] as Record<string, string>)['KINDLING_AGENT_TOKEN']), 'base64').toString()
  for (const pod of pods) {
    const health = await fetch(`http://${pod.status.podIP}:8082/healthz`)
    t.match(await health.json(), { ok: true, node: pod.spec.nodeName, podIP: pod.status.podIP, cgroup: { root: '/sys/fs/cgroup' } }, `${pod.spec.nodeName}: /healthz`)
    const unauth = await fetch(`http://${pod.status.podIP}:8082/v1/sample`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"pods":[]}' })
    t.equal(unauth.status, 401, `${pod.spec.nodeName}: no token, 401`)
  }
  // The agent samples a pod of the stand-in (here, another agent's own pod) by its UID.
  const [a, b] = pods as [Pod & { status: { podIP: string } }, Pod]
  const res = await fetch(`http://${a.status.podIP}:8082/v1/sample`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ pods: [{ uid: b.metadata.uid, containerId: b.status.containerStatuses?.[0]?.containerID }] }),
  })
  const body = await res.json() as { pods: Array<{ uid: string; stats?: { cpuUsageNs: number; pids: number }; limits?: { cpuCores: number } }> }
  t.equal(res.status, 200)
  t.equal(body.pods[0]?.uid, b.metadata.uid)
  t.ok((body.pods[0]?.stats?.cpuUsageNs ?? 0) > 0 && (body.pods[0]?.stats?.pids ?? 0) > 0, 'counters of a running agent container')
  t.equal(body.pods[0]?.limits?.cpuCores, 0.5, 'its 500m limit, as the chart sets it')
})
