import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, readdir, readlink, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node'
import { pino } from 'pino'
import t from 'tap'
import type { Dispatcher } from 'undici'
import type { InstanceExit, InstanceHandle, InstanceRequest } from '../../common/backend.js'
import { CodeServer } from '../../backends/kubernetes/code-server.js'
import { KubernetesBackend } from '../../backends/kubernetes/kubernetes.js'
import { startCluster, type Cluster } from '../../kube-sim/cluster.js'
import { PoolManager } from '../../poolmgr/pool-manager.js'
import { dispatcherFor, load } from '../../protocol/runtime-client.js'
import { writeCodeDir } from '../fixtures/code.js'
import { waitFor } from '../fixtures/wait.js'
import { SIM_ROOT } from '../fixtures/kube.js'

// Issue 10: the kubernetes backend against the cluster stand-in, end to end — real client-node, a real API server,
// pods that are real runtime servers on loopback pod IPs, kubectl reading back where they landed.

const run = promisify(execFile)
const NS = 'kindling'
const POOL = { runtime: 'node', size: 3, memoryMb: 128, cpu: 0.25 }

const dir = await mkdtemp(join(SIM_ROOT, 'kdl-kube-'))
// The pods run as nobody (runAsUser 65534): their emptyDirs under the stand-in's data directory must be reachable.
await chmod(dir, 0o711)
const cluster: Cluster = await startCluster({ dataDir: join(dir, 'cluster'), nodes: { management: 1, runtime: 2, quarantine: 1 }, nodeCpu: 8, nodeMemoryMi: 8192 })
const kubeconfigPath = join(dir, 'kubeconfig')
await cluster.writeKubeconfig(kubeconfigPath)
const kc = new KubeConfig()
kc.loadFromString(cluster.kubeconfig())
// The stand-in serves HTTPS with a self-signed certificate; a kubeconfig without its CA is trusted as it is.
const insecure = kc.getCurrentCluster()?.caData === undefined
if (insecure) {
  const c = kc.getCurrentCluster()!
  kc.loadFromOptions({ clusters: [{ ...c, skipTLSVerify: true }], users: kc.users, contexts: kc.contexts, currentContext: kc.currentContext })
}
const core = kc.makeApiClient(CoreV1Api)
const codeServer = new CodeServer({ secret: randomBytes(32), workDir: join(dir, 'archives') })
const codeOrigin = await codeServer.start({ host: '127.0.0.1', port: 0 })
const platformId = randomBytes(6).toString('hex')
const exits: InstanceExit[] = []

function backendFor(): KubernetesBackend {
  const b = new KubernetesBackend({ platformId, kubeConfig: kc, runtimeImage: 'kindling/runtime-node:test', codeServer, codeOrigin, startTimeoutMs: 30_000, apiTimeoutMs: 3_000 })
  b.onExit((e) => exits.push(e))
  return b
}
const backend = backendFor()

t.teardown(async () => {
  await backend.close().catch(() => {})
  await backend.deletePools().catch(() => {})
  await codeServer.close()
  await cluster.stop()
  await rm(dir, { recursive: true, force: true })
})

let seq = 0
function request(over: Partial<InstanceRequest> = {}): InstanceRequest {
  return { id: `kdl-t${++seq}-${randomBytes(3).toString('hex')}`, runtime: 'node', pool: 'fn:hello', memoryMb: 128, cpu: 0.25, pidsLimit: 64, network: 'none', ...over }
}

async function pods(selector: string): Promise<V1Pod[]> {
  return (await core.listNamespacedPod({ namespace: NS, labelSelector: `kindling.io/platform=${platformId},${selector}` })).items
}
const ready = (p: V1Pod): boolean => p.metadata?.deletionTimestamp === undefined && p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true
async function readyPool(): Promise<V1Pod[] | undefined> {
  const pool = (await pods('kindling.io/managed=true')).filter(ready)
  return pool.length === POOL.size ? pool : undefined
}
async function podOf(id: string): Promise<V1Pod | undefined> {
  return (await pods(`kindling.io/instance=${id}`))[0]
}

/** `kubectl get pods -o wide`: pod name → node, as an operator reads it. */
async function nodesByKubectl(): Promise<Map<string, string>> {
  const { stdout } = await run(join(process.cwd(), '.kube-tools/bin/kubectl'), ['--kubeconfig', kubeconfigPath, ...(insecure ? ['--insecure-skip-tls-verify'] : []), 'get', 'pods', '-n', NS, '-o', 'wide', '-l', `kindling.io/platform=${platformId}`])
  const [header, ...rows] = stdout.trim().split('\n')
  const cols = header!.split(/\s{2,}/)
  const nodeAt = cols.indexOf('NODE')
  return new Map(rows.map((r) => { const c = r.split(/\s{2,}/); return [c[0]!, c[nodeAt]!] }))
}

async function invoke(client: Dispatcher, body: string): Promise<{ status: number; text: string }> {
  const res = await client.request({ method: 'POST', path: '/', headers: { 'x-kindling-invocation-id': `inv-${randomBytes(4).toString('hex')}`, 'content-type': 'text/plain' }, body })
  return { status: res.statusCode, text: await res.body.text() }
}

t.test('the pool Deployment fills with Ready pods on the runtime nodes only', async (t) => {
  await backend.setGenericPool(POOL)
  const pool = await waitFor(readyPool, 'three Ready pool pods', 30_000)
  t.equal(pool.length, 3)
  const onNodes = await nodesByKubectl()
  for (const p of pool) t.match(onNodes.get(p.metadata!.name!), /^kindling-runtime-[01]$/, `${p.metadata!.name} is on a runtime node (kubectl -o wide)`)
  const c = pool[0]!.spec!.containers[0]!
  t.match(c.resources, { requests: { memory: '128Mi', cpu: '250m' }, limits: { memory: '128Mi', cpu: '250m' } }, 'requests = limits from the runtime')
  t.match(c.securityContext, { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } })
  t.equal(pool[0]!.spec!.automountServiceAccountToken, false)
  t.ok(c.env?.some((e) => e.name === 'KINDLING_WARMUP' && e.value === '1'), 'pool pods warm their request path while they wait')
  t.ok(c.env?.some((e) => e.name === 'KINDLING_CODE_ORIGIN' && e.value === codeOrigin), 'and fetch code from the code server only')
  await backend.setGenericPool(POOL)
  t.equal((await pods('kindling.io/managed=true')).length, 3, 'setting the same pool again changes nothing')
})

let claimed: InstanceHandle
t.test('start() claims a Ready pool pod by relabelling it, and the ReplicaSet refills the pool', async (t) => {
  const before = new Set((await waitFor(readyPool, 'a full pool', 30_000)).map((p) => p.metadata!.name))
  const req = request()
  claimed = await backend.start(req)
  t.equal(claimed.pooled, true, 'a warm claim, not a new pod')
  const pod = (await podOf(req.id))!
  t.ok(before.has(pod.metadata!.name), 'the instance is one of the pool pods')
  t.match(pod.metadata!.labels, { 'kindling.io/managed': 'false', 'kindling.io/instance': req.id, 'kindling.io/function': 'hello' })
  t.same(claimed.address, { host: pod.status!.podIP, port: 8888 }, 'reached on podIP:8888')
  const refilled = await waitFor(readyPool, 'the pool to refill', 30_000)
  t.notOk(refilled.some((p) => p.metadata!.name === pod.metadata!.name), 'the claimed pod left the pool')
  await waitFor(async () => ((await podOf(req.id))?.metadata?.ownerReferences ?? []).length === 0, 'the ReplicaSet to release the claimed pod')
  t.same((await backend.list()).map((x) => x.id), [req.id], 'list() shows the claimed instance')
  t.equal((await backend.list())[0]?.pool, 'fn:hello')
})

t.test('prepareCode hands the pod its code; the function loads and answers on the pod', async (t) => {
  const code = join(dir, 'code-hello')
  await writeCodeDir(code, { 'index.mjs': 'export default async (event) => ({ hello: event.body, pid: process.pid })' })
  const inside = await backend.prepareCode(claimed.id, code)
  const client = dispatcherFor(claimed.address)
  t.teardown(() => client.close())
  await load(client, { codeDir: inside, entrypoint: 'index.mjs', function: 'hello', version: 1, env: {} }, 10_000)
  const res = await invoke(client, 'world')
  t.equal(res.status, 200)
  t.match(JSON.parse(res.text), { hello: 'world' })
})

t.test('two claimers on one pool each get distinct pods', async (t) => {
  const other = backendFor()
  t.teardown(() => other.close())
  await other.setGenericPool(POOL)
  await waitFor(readyPool, 'a full pool', 30_000)
  // Both see the same three Ready pods: six claims, three from each, race for them.
  const reqs = Array.from({ length: 6 }, () => request({ pool: 'fn:race' }))
  const handles = await Promise.all(reqs.map((r, i) => (i % 2 === 0 ? backend : other).start(r)))
  const names = await Promise.all(reqs.map(async (r) => (await podOf(r.id))?.metadata?.name))
  t.equal(new Set(names).size, 6, 'six instances, six pods')
  for (const [i, r] of reqs.entries()) t.equal((await podOf(r.id))?.metadata?.labels?.['kindling.io/instance'], r.id, `pod of ${r.id} carries its id only`)
  t.ok(handles.filter((h) => h.pooled === true).length >= 1, 'some came from the pool')
  t.equal(new Set(handles.map((h) => 'host' in h.address ? h.address.host : '')).size, 6, 'six addresses')
  await Promise.all(reqs.map((r, i) => (i % 2 === 0 ? backend : other).stop(r.id)))
})

t.test('two claims of the same pool pod at once: one wins, the other takes the next pod after its 409', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const spy = { debug: (o: object, msg: string) => lines.push({ ...o, msg }), info: () => {}, warn: () => {}, error: () => {} }
  const a = new KubernetesBackend({ platformId, kubeConfig: kc, runtimeImage: 'kindling/runtime-node:test', codeServer, codeOrigin, startTimeoutMs: 30_000, log: spy })
  const b = new KubernetesBackend({ platformId, kubeConfig: kc, runtimeImage: 'kindling/runtime-node:test', codeServer, codeOrigin, startTimeoutMs: 30_000, log: spy })
  t.teardown(async () => { await a.close(); await b.close() })
  await Promise.all([a.setGenericPool(POOL), b.setGenericPool(POOL)])
  await waitFor(readyPool, 'a full pool', 30_000)
  // Both copies of the pool are the same: both pick its oldest pod first.
  const [ra, rb] = [request({ pool: 'fn:race2' }), request({ pool: 'fn:race2' })]
  const [ha, hb] = await Promise.all([a.start(ra), b.start(rb)])
  t.ok(ha.pooled && hb.pooled, 'both claimed a pool pod')
  t.not((await podOf(ra.id))?.metadata?.name, (await podOf(rb.id))?.metadata?.name, 'not the same one')
  t.ok(lines.some((l) => l['msg'] === 'claim lost a race'), 'one of them got the 409 and moved on')
})

t.test('a quarantine start lands on the quarantine node', async (t) => {
  const req = request({ pool: 'fn:noisy', quarantine: true })
  const h = await backend.start(req)
  t.equal(h.pooled, false, 'a quarantined function never gets a pool pod')
  const pod = (await podOf(req.id))!
  t.equal((await nodesByKubectl()).get(pod.metadata!.name!), 'kindling-quarantine-0')
  t.match(pod.spec!.tolerations, [{ key: 'kindling.io/node-role', value: 'quarantine', effect: 'NoSchedule' }])
  const onNodes = await nodesByKubectl()
  t.notOk([...onNodes.values()].some((n) => n.startsWith('kindling-management-')), 'nothing of the user\'s on a management node')
  await backend.stop(req.id)
})

t.test('other limits get a bare pod of their own, with those limits', async (t) => {
  const req = request({ memoryMb: 192 })
  const h = await backend.start(req)
  t.equal(h.pooled, false)
  const pod = (await podOf(req.id))!
  t.same(pod.metadata!.ownerReferences ?? [], [], 'owned by nobody')
  t.match(pod.spec!.containers[0]!.resources, { limits: { memory: '192Mi' } })
  await backend.stop(req.id)
  await waitFor(async () => (await podOf(req.id)) === undefined, 'the pod to go')
  await backend.stop(req.id)
  t.pass('stopping it again resolves')
})

t.test('runtime pods carry the labels the chart\'s NetworkPolicies select: managed-by on every one, network=egress on egress ones', async (t) => {
  const plain = request({ memoryMb: 160 })
  const egress = request({ memoryMb: 160, network: 'egress' })
  await backend.start(plain)
  await backend.start(egress)
  const p = (await podOf(plain.id))!
  const e = (await podOf(egress.id))!
  t.equal(p.metadata!.labels!['app.kubernetes.io/managed-by'], 'kindling')
  t.equal(p.metadata!.labels!['kindling.io/network'], undefined, 'no egress label without egress')
  t.equal(e.metadata!.labels!['kindling.io/network'], 'egress')
  await backend.stop(plain.id)
  await backend.stop(egress.id)
})

t.test('close(keep) leaves those pods running; another backend of the platform adopts them (a leader failover)', async (t) => {
  const first = backendFor()
  await first.setGenericPool(POOL)
  const kept = request()
  const dropped = request({ memoryMb: 160 })
  const h = await first.start(kept)
  await first.start(dropped)
  await first.close(new Set([kept.id]))
  await waitFor(async () => { const p = await podOf(dropped.id); return p === undefined || p.metadata?.deletionTimestamp !== undefined }, 'the other pod to be deleted')
  const pod = await podOf(kept.id)
  t.ok(pod !== undefined && pod.metadata?.deletionTimestamp === undefined, 'the kept pod still runs')
  const next = backendFor()
  t.teardown(() => next.close())
  const adopted = await next.adopt(kept.id)
  t.ok(adopted, 'adopted')
  t.same(adopted!.address, h.address, 'at the address the first backend handed out')
  t.equal(await next.adopt(dropped.id), undefined, 'a deleted pod is not adopted')
  t.equal(await next.adopt('kdl-000000000000'), undefined, 'nor an unknown instance')
  t.same((await next.list()).map((x) => x.id).filter((id) => id === kept.id), [kept.id], 'listed as its instance')
  await next.stop(kept.id)
  await waitFor(async () => (await podOf(kept.id)) === undefined, 'the adopted pod is stopped like its own')
})

t.test('a pod no node can take fails its start with the scheduler\'s reason, and is removed', async (t) => {
  const b = new KubernetesBackend({ platformId, kubeConfig: kc, runtimeImage: 'kindling/runtime-node:test', codeServer, codeOrigin, startTimeoutMs: 3_000 })
  t.teardown(() => b.close())
  const req = request({ memoryMb: 64 * 1024 })
  await t.rejects(b.start(req), { code: 'KDL_ERR_BACKEND', message: /not ready within 3000 ms: phase Pending; PodScheduled=False \(Unschedulable: / })
  await waitFor(async () => (await podOf(req.id)) === undefined, 'the unschedulable pod to be deleted')
})

t.test('a pod deleted behind the backend\'s back is reported killed', async (t) => {
  const req = request()
  await backend.start(req)
  const pod = (await podOf(req.id))!
  await core.deleteNamespacedPod({ name: pod.metadata!.name!, namespace: NS })
  const exit = await waitFor(() => exits.find((e) => e.id === req.id), 'the exit report')
  t.equal(exit.reason, 'killed')
  t.equal(await backend.exitReason(req.id), 'killed')
})

t.test('an instance over its memory limit is reported oom, one that exits is reported crashed', async (t) => {
  const code = join(dir, 'code-exits')
  await writeCodeDir(code, { 'index.mjs': `export default async (event) => {
    if (event.body === 'exit') process.exit(3)
    const keep = []
    for (;;) { keep.push(Buffer.alloc(8 << 20, 1)); await new Promise((r) => setImmediate(r)) }
  }` })
  for (const [body, reason] of [['grow', 'oom'], ['exit', 'crashed']] as const) {
    const req = request({ pool: 'fn:exits' })
    const h = await backend.start(req)
    const client = dispatcherFor(h.address)
    await load(client, { codeDir: await backend.prepareCode(req.id, code), entrypoint: 'index.mjs', function: 'exits', version: 1, env: {} }, 10_000)
    const answer = await invoke(client, body).catch((err: unknown) => err as Error)
    t.ok(answer instanceof Error, `the call that ends it (${body}) gets no answer: ${JSON.stringify(answer)}`)
    await client.close()
    const exit = await waitFor(() => exits.find((e) => e.id === req.id), `the exit of ${req.id}`, 20_000)
    t.equal(exit.reason, reason, `${body}: ${reason}`)
    t.equal(await backend.exitReason(req.id), reason)
    await waitFor(async () => { const p = await podOf(req.id); return p === undefined || p.metadata?.deletionTimestamp !== undefined }, 'the dead instance\'s pod to be removed')
  }
})

t.test('a pool manager on the backend: the runtime\'s pool is the Deployment, a call\'s instance is claimed from it and loads through the code fetch', async (t) => {
  const b = backendFor()
  const pools = new PoolManager({ backend: b, log: pino({ level: 'silent' }), pidsLimit: 64 })
  t.teardown(() => pools.close())
  pools.setRuntime({ name: 'node', poolSize: POOL.size, memoryMb: POOL.memoryMb, cpu: POOL.cpu })
  await waitFor(readyPool, 'a full pool', 30_000)
  const { inst, started } = await pools.takeOrStart('pm', 'node', { memoryMb: 128, cpu: 0.25, network: 'none' })
  t.equal(started, false, 'claimed, not started')
  const code = join(dir, 'code-pm')
  await writeCodeDir(code, { 'index.mjs': 'export default async (event) => ({ hello: event.body })' })
  await pools.load(inst, { name: 'pm', version: 1, runtime: 'node', entrypoint: 'index.mjs', mode: 'persistent', env: {} } as never, code)
  const res = await invoke(inst.dispatcher, 'pm')
  t.equal(res.status, 200)
  t.match(JSON.parse(res.text), { hello: 'pm' })
  t.equal(inst.handle.pooled, true)
  const snap = await waitFor(() => { const x = pools.snapshot().find((s) => s.pool === 'generic:node'); return x?.idle === POOL.size ? x : undefined }, 'the snapshot to show the refilled pool')
  t.match(snap, { target: POOL.size, starting: 0 }, 'the pool manager shows the Deployment\'s pool, keeping none of its own')
  t.notOk([...pools.instances()].some((i) => i.state === 'generic'), 'no generic instance of the pool manager\'s')
})

t.test('while the API server is away a claimed pod keeps answering, claims fail with KDL_ERR_BACKEND, and the watch resumes', async (t) => {
  const client = dispatcherFor(claimed.address)
  t.teardown(() => client.close())
  await cluster.api.pause()
  const until = Date.now() + 5_000
  let answered = 0
  const failed: string[] = []
  try {
    await t.rejects(backend.start(request()), { code: 'KDL_ERR_BACKEND', message: /unreachable/ }, 'a start needs the API, and says it is unreachable')
    while (Date.now() < until) {
      const res = await invoke(client, `n${answered}`)
      if (res.status !== 200 || JSON.parse(res.text).hello !== `n${answered}`) failed.push(`${res.status} ${res.text}`)
      answered++
    }
  } finally {
    await cluster.api.resume()
  }
  t.same(failed, [], 'every call during the outage was answered')
  t.ok(answered > 10, `the warm pod answered ${answered} calls during the outage`)
  // The watch is back: a deletion after the outage reaches the exit listeners.
  const pod = (await podOf(claimed.id))!
  await core.deleteNamespacedPod({ name: pod.metadata!.name!, namespace: NS })
  const exit = await waitFor(() => exits.find((e) => e.id === claimed.id), 'the exit report after the outage', 20_000)
  t.equal(exit.reason, 'killed')
  const again = await backend.start(request())
  t.ok(again.pooled, 'claims work again')
  await backend.stop(again.id)
})

t.test('a watch that comes back too old for the server\'s history (410 Gone) relists and reports the pod that went meanwhile', async (t) => {
  const said: string[] = []
  const log = { debug: () => {}, info: (_o: object, msg: string) => said.push(msg), warn: (_o: object, msg: string) => said.push(msg), error: () => {} }
  const b = new KubernetesBackend({ platformId, kubeConfig: kc, runtimeImage: 'kindling/runtime-node:test', codeServer, codeOrigin, startTimeoutMs: 30_000, apiTimeoutMs: 3_000, log })
  b.onExit((e) => exits.push(e))
  t.teardown(() => b.close())
  await b.setGenericPool(POOL)
  const req = request()
  await b.start(req)
  const pod = (await podOf(req.id))!
  const store = cluster.store
  const podType = store.type('', 'v1', 'pods')!
  const cmType = store.type('', 'v1', 'configmaps')!
  cluster.api.pause()
  try {
    // Behind the outage: the held pod is deleted, and more changes happen than the server keeps for watches (1000).
    store.delete(podType, NS, pod.metadata!.name!, { gracePeriodSeconds: 0 })
    for (let i = 0; i < 1100; i++) store.create(cmType, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: `churn-${i}`, namespace: NS }, data: { i: String(i) } })
  } finally {
    cluster.api.resume()
  }
  const exit = await waitFor(() => exits.find((e) => e.id === req.id), 'the relist to report the deleted pod', 20_000)
  t.equal(exit.reason, 'killed')
  t.ok(said.includes('pod watch too old (410 Gone); relisting'), 'it came from a relist after 410 Gone')
  const again = await b.start(request())
  t.ok(again.pooled, 'claims from the relisted pool')
  await b.stop(again.id)
  for (let i = 0; i < 1100; i++) store.delete(cmType, NS, `churn-${i}`)
})

t.test('close() deletes the pods it holds and leaves the pools', async (t) => {
  const b = backendFor()
  await b.setGenericPool(POOL)
  const req = request()
  await b.start(req)
  await b.close()
  await waitFor(async () => { const p = await podOf(req.id); return p === undefined || p.metadata?.deletionTimestamp !== undefined }, 'the held pod to be deleted')
  t.ok(await waitFor(readyPool, 'the pool to stay full', 30_000), 'the Deployment is still there')
})

t.test('a runtime node removed takes its pods with it: held ones are reported killed, the pool refills on the other node', async (t) => {
  await waitFor(readyPool, 'a full pool', 30_000)
  const reqs = [request(), request()]
  for (const r of reqs) await backend.start(r)
  const node = (await podOf(reqs[0]!.id))!.spec!.nodeName!
  t.match(node, /^kindling-runtime-/)
  // Bounded: a removal that never finishes fails here instead of at the file's timeout.
  const removed = await Promise.race([cluster.removeNode(node).then(() => 'removed'), new Promise((r) => setTimeout(() => r('still removing after 20 s'), 20_000).unref())])
  t.equal(removed, 'removed', `the stand-in removed ${node}`)
  const lost = await waitFor(() => exits.find((e) => e.id === reqs[0]!.id), 'the exit of the pod on the removed node', 20_000)
  t.equal(lost.reason, 'killed')
  const pool = await waitFor(async () => { const p = await readyPool(); return p?.every((x) => x.spec?.nodeName !== node) ? p : undefined }, 'the pool to refill on the node left', 30_000)
  t.equal(pool.length, 3)
  for (const r of reqs) await backend.stop(r.id)
})

t.test('stopping the stand-in leaves no pod process behind', async (t) => {
  await backend.close()
  await backend.deletePools()
  await cluster.stop()
  const left: number[] = []
  for (const pid of (await readdir('/proc')).filter((d) => /^\d+$/.test(d))) {
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '')
    if (cwd.startsWith(dir)) left.push(Number(pid))
  }
  for (const pid of left) process.kill(pid, 'SIGKILL')
  t.same(left, [], 'every runtime process of the pods is gone')
})
