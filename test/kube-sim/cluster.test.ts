import { execFile } from 'node:child_process'
import { access, chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startCluster, type Cluster } from '../../kube-sim/cluster.js'
import { kindsOf } from '../../kube-sim/controllers/shared.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { waitFor } from '../fixtures/wait.js'
import { SIM_ROOT } from '../fixtures/kube.js'

// The whole stand-in (issue 10) through real kubectl: a pool Deployment of the runtime image lands on runtime nodes
// only, Running and Ready, reachable on podIP:8888; a removed node takes its pods with it and the pool refills
// on another; a DaemonSet gets one pod per node it tolerates; stop() leaves no process and no cgroup behind.

const run = promisify(execFile)
const KUBECTL = new URL('../../.kube-tools/bin/kubectl', import.meta.url).pathname

function poolManifest(replicas: number): string {
  const labels = { 'kindling.io/runtime': 'node', 'kindling.io/managed': 'true', 'kindling.io/platform': 'test' }
  return JSON.stringify({
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'pool-node', namespace: 'default' },
    spec: {
      replicas, selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          automountServiceAccountToken: false,
          securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
          tolerations: [{ key: 'kindling.io/node-role', operator: 'Equal', value: 'runtime', effect: 'NoSchedule' }],
          nodeSelector: { 'kindling.io/node-role': 'runtime' },
          terminationGracePeriodSeconds: 2,
          containers: [{
            name: 'runtime', image: 'kindling/runtime-node:0.1',
            ports: [{ containerPort: 8888, name: 'http' }],
            env: [{ name: 'KINDLING_LISTEN', value: 'tcp:0.0.0.0:8888' }],
            readinessProbe: { httpGet: { path: '/_/health', port: 8888 }, periodSeconds: 1 },
            resources: { requests: { cpu: '100m', memory: '64Mi' }, limits: { cpu: '1', memory: '256Mi' } },
            securityContext: { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
            volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, { name: 'code', mountPath: '/code' }],
          }],
          volumes: [{ name: 'tmp', emptyDir: {} }, { name: 'code', emptyDir: {} }],
        },
      },
    },
  })
}

function httpGet(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    request(url, { agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject).end()
  })
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

t.test('the stand-in through kubectl: pool on runtime nodes, node removal, a DaemonSet, a clean stop', async (t) => {
  const dir = await mkdtemp(join(SIM_ROOT, 'kube-sim-cluster-'))
  // The pods run as 65534: they pass through the test's directory as through a user's usual one.
  await chmod(dir, 0o711)
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'echo.mjs'), "console.log('hello from ' + process.env.POD_NAME); setInterval(() => {}, 1000)")
  const cluster: Cluster = await startCluster({
    dataDir: join(dir, 'data'), nodes: { management: 1, runtime: 2, quarantine: 1 }, backoffBaseMs: 200,
    images: { 'test/echo': [process.execPath, join(dir, 'echo.mjs')] },
  })
  t.teardown(() => cluster.stop())
  const kubeconfig = join(dir, 'kubeconfig')
  await cluster.writeKubeconfig(kubeconfig)
  t.equal((await stat(kubeconfig)).mode & 0o777, 0o600, 'the kubeconfig is written 0600')
  const kubectl = async (...args: string[]): Promise<string> => (await run(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { timeout: 60_000 })).stdout
  const kubectlIn = async (input: string, ...args: string[]): Promise<string> => new Promise((resolve, reject) => {
    const child = execFile(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)))
    child.stdin?.end(input)
  })
  const kinds = kindsOf(cluster.store)

  const nodes = JSON.parse(await kubectl('get', 'nodes', '-o', 'json')).items as KubeObject[]
  t.same(nodes.map((n) => n.metadata.name).sort(), ['kindling-management-0', 'kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'])
  const rt = nodes.find((n) => n.metadata.name === 'kindling-runtime-0') as KubeObject
  t.match(rt.metadata.labels, { 'kindling.io/node-role': 'runtime', 'node-role.kubernetes.io/runtime': '', 'kubernetes.io/hostname': 'kindling-runtime-0' })
  t.same(rt.spec.taints, [{ key: 'kindling.io/node-role', value: 'runtime', effect: 'NoSchedule' }])
  t.same((nodes.find((n) => n.metadata.name === 'kindling-management-0') as KubeObject).spec.taints, undefined, 'management nodes: label only')

  await kubectlIn(poolManifest(4), 'apply', '-f', '-')
  await kubectl('rollout', 'status', 'deployment/pool-node', '--timeout=60s')
  const wide = await kubectl('get', 'pods', '-o', 'wide', '-l', 'kindling.io/managed=true')
  const rows = wide.trim().split('\n').slice(1).map((l) => l.split(/\s+/))
  t.equal(rows.length, 4, wide)
  for (const r of rows) {
    t.equal(r[1], '1/1', `${r[0]} ready`)
    t.equal(r[2], 'Running')
    t.match(r[6], /^kindling-runtime-[01]$/, `${r[0]} on a runtime node`)
  }
  const pods = cluster.store.list(kinds.pod, { labelSelector: 'kindling.io/managed=true' }).items
  for (const p of pods) t.equal(await httpGet(`http://${String(p.status.podIP)}:8888/_/health`), 200, `GET /_/health on ${String(p.status.podIP)}:8888`)
  t.equal(new Set(pods.map((p) => p.status.podIP)).size, 4, 'every pod has its own address')

  // A claim relabels a pool pod: the ReplicaSet orphans it (it keeps running) and starts a replacement.
  const claimed = pods[0] as KubeObject
  const claimedPid = cluster.kubelet(String(claimed.spec.nodeName))?.containerPid(String(claimed.status.containerStatuses[0].containerID)) as number
  await kubectl('label', 'pod', String(claimed.metadata.name), 'kindling.io/managed=false', 'kindling.io/function=hello', '--overwrite')
  await waitFor(() => {
    const pool = cluster.store.list(kinds.pod, { labelSelector: 'kindling.io/managed=true' }).items
    return pool.length === 4 && pool.every((p) => p.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True'))
  }, 'the pool refilled after the claim', 30_000)
  const orphan = JSON.parse(await kubectl('get', 'pod', String(claimed.metadata.name), '-o', 'json')) as KubeObject
  t.equal(orphan.metadata.ownerReferences, undefined, 'the claimed pod is orphaned')
  t.equal(orphan.status.phase, 'Running')
  t.ok(alive(claimedPid), 'and its container still runs')
  t.equal(await httpGet(`http://${String(orphan.status.podIP)}:8888/_/health`), 200)
  await kubectl('delete', 'pod', String(claimed.metadata.name), '--wait=true', '--timeout=30s')
  t.notOk(alive(claimedPid), 'deleting the claimed pod stops its container')
  const refreshed = cluster.store.list(kinds.pod, { labelSelector: 'kindling.io/managed=true' }).items
  pods.splice(0, pods.length, ...refreshed)

  // A node vanishes: its containers die at once, the pod GC deletes its pods, the pool refills on the other runtime node.
  const victims = pods.filter((p) => p.spec.nodeName === 'kindling-runtime-0')
  t.ok(victims.length > 0, 'some pods were on runtime-0')
  const victimPids = victims.map((p) => cluster.kubelet('kindling-runtime-0')?.containerPid(String(p.status.containerStatuses[0].containerID)) as number)
  await cluster.removeNode('kindling-runtime-0')
  for (const pid of victimPids) t.notOk(alive(pid), `container ${pid} of the removed node is dead`)
  await waitFor(() => {
    const now = cluster.store.list(kinds.pod, { labelSelector: 'kindling.io/managed=true' }).items
    return now.length === 4 && now.every((p) => p.spec.nodeName === 'kindling-runtime-1' && p.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True'))
  }, 'the pool refilled on kindling-runtime-1', 30_000)
  const names = (await kubectl('get', 'pods', '-o', 'name')).trim().split('\n')
  for (const v of victims) t.notOk(names.includes(`pod/${String(v.metadata.name)}`), `${String(v.metadata.name)} is gone`)

  // A node added later gets pool pods again once the pool grows.
  t.equal(await cluster.addNode('runtime'), 'kindling-runtime-0', 'the freed name is reused')

  // A DaemonSet tolerating every taint runs on every node.
  await kubectlIn(JSON.stringify({
    apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: { name: 'agent', namespace: 'default' },
    spec: {
      selector: { matchLabels: { app: 'agent' } },
      template: {
        metadata: { labels: { app: 'agent' } },
        spec: {
          tolerations: [{ operator: 'Exists' }],
          containers: [{ name: 'a', image: 'kindling/runtime-node:0.1', ports: [{ containerPort: 8888 }], env: [{ name: 'KINDLING_LISTEN', value: 'tcp:0.0.0.0:8888' }] }],
        },
      },
    },
  }), 'apply', '-f', '-')
  await kubectl('rollout', 'status', 'daemonset/agent', '--timeout=60s')
  const agents = cluster.store.list(kinds.pod, { labelSelector: 'app=agent' }).items
  t.same(agents.map((p) => p.spec.nodeName).sort(), ['kindling-management-0', 'kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'])
  t.ok(agents.every((p) => p.status.phase === 'Running'))

  // kubectl logs reads the kubelet's capture.
  await kubectlIn(JSON.stringify({
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'echo', namespace: 'default' },
    spec: { containers: [{ name: 'echo', image: 'test/echo', env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }] }] },
  }), 'apply', '-f', '-')
  await kubectl('wait', '--for=condition=Ready', 'pod/echo', '--timeout=30s')
  t.equal(await waitFor(async () => (await kubectl('logs', 'echo')) || undefined, 'echo logs'), 'hello from echo\n')
  const echo = cluster.store.get(kinds.pod, 'default', 'echo') as KubeObject
  t.equal(echo.spec.nodeName, 'kindling-management-0', 'a pod with no tolerations lands on the untainted management node')

  const allPids = ['kindling-management-0', 'kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'].flatMap((n) => cluster.kubelet(n)?.pids() ?? [])
  if (allPids.length < 9) {
    for (const p of cluster.store.list(kinds.pod).items) t.comment(`${String(p.metadata.name)} on ${String(p.spec.nodeName)}: ${JSON.stringify(p.status?.containerStatuses?.[0]?.state)}`)
  }
  t.equal(allPids.length, 9, '4 pool pods, 4 agents and echo are running')
  await cluster.stop()
  for (const pid of allPids) t.notOk(alive(pid), `pid ${pid} stopped`)
  await t.rejects(access(`/sys/fs/cgroup/memory/kube-sim/${cluster.id}`), 'the cluster\'s cgroups are removed')
})
