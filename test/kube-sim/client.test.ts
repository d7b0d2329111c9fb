import { AppsV1Api, CoreV1Api, KubeConfig, PatchStrategy, Watch, makeInformer, setHeaderOptions, type V1Pod } from '@kubernetes/client-node'
import t from 'tap'
import { waitFor } from '../fixtures/wait.js'
import { startSim, type Sim } from './api-fixture.js'

// The stand-in's API server against the real @kubernetes/client-node 1.4 (issue 10): the typed API, the patch
// content types, Watch (ADDED/MODIFIED/DELETED, 410 on a too-old version), an informer that relists after 410,
// and reconnection after an API-server outage (pause/resume).
let sim: Sim
let kc: KubeConfig
let core: CoreV1Api
t.before(async () => {
  sim = await startSim({ historySize: 30 })
  kc = new KubeConfig()
  kc.loadFromString(sim.kubeconfig)
  core = kc.makeApiClient(CoreV1Api)
})
t.teardown(async () => { await sim.stop() })

function pod(name: string, labels: Record<string, string> = {}): V1Pod {
  return { metadata: { name, labels }, spec: { containers: [{ name: 'main', image: 'kindling/runtime-node:1', ports: [{ containerPort: 8888 }] }] } }
}

async function apiCode(p: Promise<unknown>): Promise<{ code: number; body: { reason?: string; message?: string; details?: { causes?: Array<{ field?: string }> } } }> {
  try {
    await p
  } catch (err) {
    const e = err as { code?: number; body?: unknown }
    const body = typeof e.body === 'string' ? JSON.parse(e.body) : e.body
    return { code: e.code ?? -1, body: body as never }
  }
  throw new Error('the call succeeded')
}

t.test('CoreV1Api creates, reads and lists pods by label', async (t) => {
  const created = await core.createNamespacedPod({ namespace: 'default', body: pod('one', { role: 'pool' }) })
  t.match(created.metadata?.uid, /^[0-9a-f-]{36}$/)
  t.equal(created.status?.phase, 'Pending')
  await core.createNamespacedPod({ namespace: 'default', body: { ...pod(''), metadata: { generateName: 'gen-', labels: { role: 'other' } } } })
  const read = await core.readNamespacedPod({ name: 'one', namespace: 'default' })
  t.equal(read.metadata?.resourceVersion, created.metadata?.resourceVersion)
  const pool = await core.listNamespacedPod({ namespace: 'default', labelSelector: 'role=pool' })
  t.same(pool.items.map((p) => p.metadata?.name), ['one'])
  const all = await core.listNamespacedPod({ namespace: 'default', labelSelector: 'role in (pool,other)' })
  t.equal(all.items.length, 2)
  t.match(all.items.find((p) => p.metadata?.name !== 'one')?.metadata?.name, /^gen-[a-z0-9]{5}$/)
  t.ok(Number(pool.metadata?.resourceVersion) >= Number(created.metadata?.resourceVersion), 'the list carries the current version')
  const dup = await apiCode(core.createNamespacedPod({ namespace: 'default', body: pod('one') }))
  t.equal(dup.code, 409)
  t.equal(dup.body.reason, 'AlreadyExists')
  const invalid = await apiCode(core.createNamespacedPod({ namespace: 'default', body: { metadata: { name: 'noimage' }, spec: { containers: [{ name: 'main' }] } } }))
  t.equal(invalid.code, 422)
  t.equal(invalid.body.details?.causes?.[0]?.field, 'spec.containers[0].image')
  const missing = await apiCode(core.readNamespacedPod({ name: 'nope', namespace: 'default' }))
  t.equal(missing.code, 404)
})

t.test('patches with the merge, JSON and strategic content types; a stale resourceVersion in a patch is 409', async (t) => {
  const before = await core.readNamespacedPod({ name: 'one', namespace: 'default' })
  const merged = await core.patchNamespacedPod({ name: 'one', namespace: 'default', body: { metadata: { labels: { claimed: 'yes', role: null } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch))
  t.same(merged.metadata?.labels, { claimed: 'yes' }, 'null removes a key')
  const jsonPatched = await core.patchNamespacedPod({ name: 'one', namespace: 'default', body: [{ op: 'add', path: '/metadata/annotations', value: { a: '1' } }] }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch))
  t.same(jsonPatched.metadata?.annotations, { a: '1' })
  const strategic = await core.patchNamespacedPod({
    name: 'one', namespace: 'default',
    body: { spec: { containers: [{ name: 'main', image: 'kindling/runtime-node:2' }] } },
  }, setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch))
  t.equal(strategic.spec?.containers[0]?.image, 'kindling/runtime-node:2')
  t.same(strategic.spec?.containers[0]?.ports, [{ containerPort: 8888, protocol: 'TCP' }], 'the container was merged by its name, keeping its ports')
  // The claim of issue 10: a relabel guarded by the version read before; someone else's write in between wins.
  const stale = await apiCode(core.patchNamespacedPod({ name: 'one', namespace: 'default', body: { metadata: { resourceVersion: before.metadata?.resourceVersion, labels: { 'kindling.io/managed': 'false' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)))
  t.equal(stale.code, 409)
  t.match(stale.body.message, 'Operation cannot be fulfilled on pods "one": the object has been modified')
  const fresh = await core.patchNamespacedPod({ name: 'one', namespace: 'default', body: { metadata: { resourceVersion: strategic.metadata?.resourceVersion, labels: { 'kindling.io/managed': 'false' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch))
  t.equal(fresh.metadata?.labels?.['kindling.io/managed'], 'false')
  const applied = await core.patchNamespacedPod({ name: 'applied', namespace: 'default', fieldManager: 'test', body: { apiVersion: 'v1', kind: 'Pod', ...pod('applied') } }, setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply))
  t.ok(applied.metadata?.uid, 'server-side apply creates what does not exist')
})

t.test('the scale subresource of a Deployment', async (t) => {
  const apps = kc.makeApiClient(AppsV1Api)
  await apps.createNamespacedDeployment({ namespace: 'default', body: { metadata: { name: 'd' }, spec: { replicas: 1, selector: { matchLabels: { app: 'd' } }, template: { metadata: { labels: { app: 'd' } }, spec: { containers: [{ name: 'c', image: 'i' }] } } } } })
  const scale = await apps.readNamespacedDeploymentScale({ name: 'd', namespace: 'default' })
  t.equal(scale.spec?.replicas, 1)
  t.equal(scale.status?.selector, 'app=d')
  await apps.replaceNamespacedDeploymentScale({ name: 'd', namespace: 'default', body: { metadata: { name: 'd', namespace: 'default' }, spec: { replicas: 4 } } })
  t.equal((await apps.readNamespacedDeployment({ name: 'd', namespace: 'default' })).spec?.replicas, 4)
})

t.test('a Watch sees ADDED, MODIFIED and DELETED after its version; a too-old version is an ERROR event with 410', async (t) => {
  const from = (await core.listNamespacedPod({ namespace: 'default' })).metadata!.resourceVersion!
  const events: string[] = []
  let ended: unknown = 'running'
  const controller = await new Watch(kc).watch('/api/v1/namespaces/default/pods', { resourceVersion: from, labelSelector: 'w=1' }, (type, obj: V1Pod) => events.push(`${type} ${obj.metadata?.name}`), (err) => { ended = err })
  await core.createNamespacedPod({ namespace: 'default', body: pod('watched', { w: '1' }) })
  await core.patchNamespacedPod({ name: 'watched', namespace: 'default', body: { metadata: { annotations: { x: 'y' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch))
  await core.deleteNamespacedPod({ name: 'watched', namespace: 'default' })
  await waitFor(() => events.length >= 3, 'three watch events')
  t.same(events, ['ADDED watched', 'MODIFIED watched', 'DELETED watched'])
  controller.abort()

  // Push the first version out of the history (30 changes kept).
  for (let i = 0; i < 40; i++) await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: `fill-${i}` } } })
  const got: Array<{ type: string; code?: number; reason?: string }> = []
  let done = false
  await new Watch(kc).watch('/api/v1/namespaces/default/pods', { resourceVersion: from }, (type, obj: { code?: number; reason?: string }) => got.push({ type, code: obj.code, reason: obj.reason }), () => { done = true })
  await waitFor(() => done, 'the too-old watch to end')
  t.same(got, [{ type: 'ERROR', code: 410, reason: 'Expired' }])
  await waitFor(() => ended !== 'running', 'the aborted first watch to end')
})

t.test('an informer lists, follows, relists after 410, and reconnects after an outage', async (t) => {
  const pods = sim.type('pods')
  const listFn = () => core.listNamespacedPod({ namespace: 'default', labelSelector: 'inf=1' })
  const informer = makeInformer(kc, '/api/v1/namespaces/default/pods', listFn, 'inf=1')
  const added: string[] = []
  const deleted: string[] = []
  const errors: unknown[] = []
  informer.on('add', (p) => added.push(p.metadata!.name!))
  informer.on('delete', (p) => deleted.push(p.metadata!.name!))
  informer.on('error', (err) => errors.push(err))
  sim.store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'i-before', labels: { inf: '1' } }, spec: { containers: [{ name: 'c', image: 'i' }] } })
  let watching = sim.nextWatch('pods')
  await informer.start()
  await watching
  t.same(added, ['i-before'], 'the list')
  sim.store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'i-live', labels: { inf: '1' } }, spec: { containers: [{ name: 'c', image: 'i' }] } })
  await waitFor(() => added.includes('i-live'), 'the informer to see i-live')

  // The outage: the informer's watch drops (an error to its handlers); meanwhile the history moves on.
  sim.api.pause()
  await waitFor(() => errors.length > 0, 'the informer to report the dropped watch')
  sim.store.delete(pods, 'default', 'i-before')
  sim.store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'i-during', labels: { inf: '1' } }, spec: { containers: [{ name: 'c', image: 'i' }] } })
  const cms = sim.type('configmaps')
  for (let i = 0; i < 40; i++) sim.store.create(cms, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: `outage-${i}` } })
  const refused = await apiCode(core.listNamespacedPod({ namespace: 'default' })).catch((err: unknown) => ({ code: -2, body: { message: String(err) } }))
  t.not(refused.code, 200, 'calls fail during the outage')

  // Back: restarted from its last version, the informer's watch gets 410, relists, and catches up.
  sim.api.resume()
  watching = sim.nextWatch('pods')
  await informer.start()
  await waitFor(() => added.includes('i-during') && deleted.includes('i-before'), 'the informer to relist after 410', 15_000)
  await watching
  t.same(informer.list('default').map((p) => p.metadata?.name).sort(), ['i-during', 'i-live'])
  sim.store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'i-after', labels: { inf: '1' } }, spec: { containers: [{ name: 'c', image: 'i' }] } })
  await waitFor(() => added.includes('i-after'), 'the informer to follow again')
  await informer.stop()
})
