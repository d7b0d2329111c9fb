import t, { type Test } from 'tap'
import { MemoryStore } from '../../kube-sim/store.js'
import { ApiError, type KubeObject, type ResourceType, type WatchEvent } from '../../kube-sim/types.js'

// The stand-in's object store (issue 10): the API semantics the controllers, kubelets and the HTTP API rely on.
function setup() {
  const store = new MemoryStore({ historySize: 50 })
  const T = (resource: string, group = ''): ResourceType => {
    const type = store.types().find((x) => x.resource === resource && x.group === group)
    if (type === undefined) throw new Error(`no ${resource}`)
    return type
  }
  return { store, pods: T('pods'), deployments: T('deployments', 'apps'), replicasets: T('replicasets', 'apps'), configmaps: T('configmaps'), namespaces: T('namespaces') }
}

function pod(name: string, labels: Record<string, string> = {}, extra: Partial<KubeObject> = {}): KubeObject {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels }, spec: { containers: [{ name: 'c', image: 'kindling/runtime-node:1' }] }, ...extra }
}

function apiError(t: Test, fn: () => unknown, code: number, reason: string, message?: RegExp | string): ApiError | undefined {
  try {
    fn()
    t.fail(`expected ${code} ${reason}`)
    return undefined
  } catch (err) {
    t.type(err, ApiError)
    const e = err as ApiError
    t.equal(e.code, code, `code ${code}`)
    t.equal(e.reason, reason, `reason ${reason}`)
    if (message !== undefined) t.match(e.message, message)
    return e
  }
}

t.test('starts with the default, kube-system and kube-public namespaces', async (t) => {
  const { store, namespaces } = setup()
  const names = store.list(namespaces).items.map((n) => n.metadata.name)
  for (const n of ['default', 'kube-system', 'kube-public']) t.ok(names.includes(n), n)
  t.equal(store.get(namespaces, undefined, 'default')?.status?.phase, 'Active')
})

t.test('create sets uid, creationTimestamp, generation 1 and a fresh global resourceVersion; returns copies', async (t) => {
  const { store, pods, configmaps } = setup()
  const before = Number(store.currentVersion())
  const a = store.create(pods, pod('a'))
  const cm = store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, data: { k: 'v' } })
  t.match(a.metadata.uid, /^[0-9a-f-]{36}$/)
  t.not(a.metadata.uid, cm.metadata.uid)
  t.match(a.metadata.creationTimestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
  t.equal(a.metadata.generation, 1)
  t.equal(a.metadata.resourceVersion, String(before + 1))
  t.equal(cm.metadata.resourceVersion, String(before + 2), 'one counter across kinds')
  t.equal(cm.metadata.namespace, 'default', 'a namespaced object without a namespace lands in default')
  t.equal(a.status?.phase, 'Pending', 'a new pod is Pending')
  t.equal(a.status?.qosClass, 'BestEffort')
  const withStatus = store.create(pods, { ...pod('s'), status: { phase: 'Running', podIP: '1.2.3.4' } })
  t.same(withStatus.status, { phase: 'Pending', qosClass: 'BestEffort' }, 'a client\'s status is dropped on create, as the real server does')
  a.metadata.labels = { changed: 'yes' }
  t.same(store.get(pods, 'default', 'a')?.metadata.labels, {}, 'changing a returned object changes nothing stored')
  apiError(t, () => store.create(pods, pod('a')), 409, 'AlreadyExists', 'pods "a" already exists')
  apiError(t, () => store.create(pods, { ...pod('b'), metadata: { name: 'b', namespace: 'nope' } }), 404, 'NotFound', 'namespaces "nope" not found')
})

t.test('generateName appends five random [a-z0-9] characters', async (t) => {
  const { store, pods } = setup()
  const names = new Set<string>()
  for (let i = 0; i < 20; i++) {
    const p = store.create(pods, { ...pod(''), metadata: { generateName: 'pool-', namespace: 'default' } })
    t.match(p.metadata.name, /^pool-[a-z0-9]{5}$/)
    names.add(p.metadata.name!)
  }
  t.equal(names.size, 20, 'names do not repeat')
})

t.test('a stale update is a 409 Conflict worded as the real server words it; a current one bumps the version', async (t) => {
  const { store, pods } = setup()
  const a = store.create(pods, pod('a', { x: '1' }))
  const b = store.update(pods, { ...a, metadata: { ...a.metadata, labels: { x: '2' } } })
  t.ok(Number(b.metadata.resourceVersion) > Number(a.metadata.resourceVersion))
  t.equal(b.metadata.generation, 1, 'a label change leaves generation alone')
  apiError(t, () => store.update(pods, { ...a, metadata: { ...a.metadata, labels: { x: '3' } } }), 409, 'Conflict',
    'Operation cannot be fulfilled on pods "a": the object has been modified; please apply your changes to the latest version and try again')
  const c = store.update(pods, { ...b, metadata: { ...b.metadata, resourceVersion: undefined }, spec: { ...b.spec, activeDeadlineSeconds: 10 } })
  t.equal(c.metadata.generation, 2, 'a spec change bumps generation')
  t.equal(store.update(pods, c).metadata.resourceVersion, c.metadata.resourceVersion, 'a no-op update writes nothing')
  apiError(t, () => store.update(pods, pod('missing')), 404, 'NotFound', 'pods "missing" not found')
})

t.test('update keeps the status; the status subresource writes only the status', async (t) => {
  const { store, pods } = setup()
  const a = store.create(pods, pod('a'))
  const s = store.update(pods, { ...a, status: { phase: 'Running' }, metadata: { ...a.metadata, labels: { ignored: 'yes' } } }, { subresource: 'status' })
  t.equal(s.status.phase, 'Running')
  t.same(s.metadata.labels, {}, 'metadata from a status write is ignored')
  const u = store.update(pods, { ...s, status: { phase: 'Failed' } })
  t.equal(u.status.phase, 'Running', 'a plain update cannot change the status')
})

t.test('list by label selector (equality and set-based) and field selector', async (t) => {
  const { store, pods } = setup()
  store.create(pods, pod('a', { app: 'x', tier: 'web' }))
  store.create(pods, pod('b', { app: 'y', tier: 'web' }))
  store.create(pods, pod('c', { app: 'z' }, { spec: { nodeName: 'n1', containers: [{ name: 'c', image: 'i' }] } }))
  const names = (sel: string, field?: string) => store.list(pods, { namespace: 'default', labelSelector: sel, fieldSelector: field }).items.map((p) => p.metadata.name)
  t.same(names('app=x'), ['a'])
  t.same(names('app!=x'), ['b', 'c'])
  t.same(names('app in (x,z)'), ['a', 'c'])
  t.same(names('app notin (x,z),tier'), ['b'])
  t.same(names('!tier'), ['c'])
  t.same(names('', 'spec.nodeName=n1'), ['c'])
  t.same(names('', 'spec.nodeName='), ['a', 'b'], 'an unset field reads as empty')
  t.same(names('tier=web', 'metadata.name!=a'), ['b'])
  t.same(store.list(pods, { namespace: 'kube-system' }).items, [], 'the namespace narrows the list')
  apiError(t, () => names('app in (x'), 400, 'BadRequest')
})

t.test('a watch from a resourceVersion replays what followed it, then follows; selectors turn relabels into DELETED/ADDED', async (t) => {
  const { store, pods } = setup()
  const a = store.create(pods, pod('a', { managed: 'true' }))
  const from = a.metadata.resourceVersion
  store.create(pods, pod('b', { managed: 'true' }))
  const seen: string[] = []
  const stop = store.watch(pods, { namespace: 'default', resourceVersion: from, labelSelector: 'managed=true' }, (e) => seen.push(`${e.type} ${e.object.metadata.name}`))
  t.same(seen, ['ADDED b'], 'the replay has only the change after the version')
  const b = store.get(pods, 'default', 'b')!
  store.update(pods, { ...b, metadata: { ...b.metadata, labels: { managed: 'false' } } })
  const a2 = store.get(pods, 'default', 'a')!
  store.update(pods, { ...a2, metadata: { ...a2.metadata, labels: { managed: 'true', other: '1' } } })
  store.delete(pods, 'default', 'a')
  t.same(seen, ['ADDED b', 'DELETED b', 'MODIFIED a', 'DELETED a'])
  stop()
  store.create(pods, pod('c', { managed: 'true' }))
  t.equal(seen.length, 4, 'nothing after the stop')
})

t.test('a watch without a version starts with the current state as ADDED; events keep version order across writes made in callbacks', async (t) => {
  const { store, pods, configmaps } = setup()
  store.create(pods, pod('a'))
  const versions: number[] = []
  const names: string[] = []
  store.watch(pods, {}, (e) => {
    names.push(`${e.type} ${e.object.metadata.name}`)
    if (e.type === 'ADDED' && e.object.metadata.name === 'b') store.create(pods, pod('from-callback'))
  })
  const record = (e: WatchEvent) => versions.push(Number(e.object.metadata.resourceVersion))
  store.watch(pods, { resourceVersion: store.currentVersion() }, record)
  store.watch(configmaps, { resourceVersion: store.currentVersion() }, record)
  store.create(pods, pod('b'))
  store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } })
  t.same(names, ['ADDED a', 'ADDED b', 'ADDED from-callback'])
  t.equal(versions.length, 3)
  t.same(versions, [...versions].sort((x, y) => x - y), 'the second watcher saw b before the write made in the first one\'s callback')
})

t.test('a watch from a version older than the history is 410 Gone', async (t) => {
  const { store, configmaps } = setup()
  const first = store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c0' } })
  for (let i = 1; i < 60; i++) store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: `c${i}` } })
  const e = apiError(t, () => store.watch(configmaps, { resourceVersion: first.metadata.resourceVersion }, () => undefined), 410, 'Expired', /^too old resource version: \d+ \(\d+\)$/)
  t.equal(e?.status().code, 410)
  const recent = String(Number(store.currentVersion()) - 10)
  const seen: string[] = []
  store.watch(configmaps, { resourceVersion: recent }, (ev) => seen.push(ev.object.metadata.name!))
  t.equal(seen.length, 10, 'a version within the history replays')
})

t.test('bookmarks carry the current resourceVersion', async (t) => {
  const store = new MemoryStore({ bookmarkIntervalMs: 20 })
  const cms = store.types().find((x) => x.resource === 'configmaps')!
  // The store's bookmark timer does not hold the process open: this one does, until the bookmark comes.
  const keepAlive = setTimeout(() => undefined, 10_000)
  const got = await new Promise<WatchEvent>((resolve) => {
    const stop = store.watch(cms, { allowWatchBookmarks: true, resourceVersion: store.currentVersion() }, (e) => { stop(); resolve(e) })
  })
  clearTimeout(keepAlive)
  t.equal(got.type, 'BOOKMARK')
  t.equal(got.object.metadata.resourceVersion, store.currentVersion())
  t.equal(got.object.kind, 'ConfigMap')
})

function owned(name: string, owner: KubeObject, extra: Partial<KubeObject> = {}): KubeObject {
  return { ...pod(name, {}, extra), metadata: { name, namespace: 'default', ownerReferences: [{ apiVersion: owner.apiVersion, kind: owner.kind, name: owner.metadata.name!, uid: owner.metadata.uid!, controller: true }] } }
}

function replicaSet(name: string): KubeObject {
  return {
    apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name, namespace: 'default' },
    spec: { replicas: 1, selector: { matchLabels: { app: name } }, template: { metadata: { labels: { app: name } }, spec: { containers: [{ name: 'c', image: 'i' }] } } },
  }
}

t.test('deleting an owner (Background) deletes its dependents after it; Orphan removes their reference instead', async (t) => {
  const { store, pods, replicasets } = setup()
  const rs = store.create(replicasets, replicaSet('rs'))
  store.create(pods, owned('p1', rs))
  store.create(pods, owned('p2', rs, { spec: { nodeName: 'n1', containers: [{ name: 'c', image: 'i' }] } }))
  store.create(pods, pod('unrelated'))
  const order: string[] = []
  store.watch(pods, { resourceVersion: store.currentVersion() }, (e) => order.push(`${e.type} ${e.object.metadata.name}`))
  store.watch(replicasets, { resourceVersion: store.currentVersion() }, (e) => order.push(`${e.type} ${e.object.metadata.name}`))
  store.delete(replicasets, 'default', 'rs')
  t.same(order, ['DELETED rs', 'DELETED p1', 'MODIFIED p2'], 'the owner goes first; the bound pod starts terminating')
  t.equal(store.get(pods, 'default', 'p1'), undefined)
  t.ok(store.get(pods, 'default', 'p2')?.metadata.deletionTimestamp, 'the bound dependent is terminating')
  t.ok(store.get(pods, 'default', 'unrelated'))

  const rs2 = store.create(replicasets, replicaSet('rs2'))
  store.create(pods, owned('q1', rs2))
  store.delete(replicasets, 'default', 'rs2', { propagationPolicy: 'Orphan' })
  const q1 = store.get(pods, 'default', 'q1')
  t.ok(q1, 'the orphaned pod stays')
  t.equal(q1?.metadata.ownerReferences, undefined, 'without its owner reference')
})

t.test('a pod bound to a node is deleted gracefully; the grace-0 delete (the kubelet) removes it; an unbound pod goes at once', async (t) => {
  const { store, pods } = setup()
  store.create(pods, pod('unbound'))
  t.equal(store.delete(pods, 'default', 'unbound').metadata.name, 'unbound')
  t.equal(store.get(pods, 'default', 'unbound'), undefined)
  store.create(pods, pod('bound', {}, { spec: { nodeName: 'n1', terminationGracePeriodSeconds: 12, containers: [{ name: 'c', image: 'i' }] } }))
  const d = store.delete(pods, 'default', 'bound')
  t.ok(d.metadata.deletionTimestamp)
  t.equal(d.metadata.deletionGracePeriodSeconds, 12, 'the grace period is the pod\'s terminationGracePeriodSeconds')
  t.ok(store.get(pods, 'default', 'bound'), 'it stays until its kubelet removes it')
  t.equal(store.delete(pods, 'default', 'bound', { gracePeriodSeconds: 5 }).metadata.deletionGracePeriodSeconds, 5, 'a shorter grace period shortens it')
  t.equal(store.delete(pods, 'default', 'bound', { gracePeriodSeconds: 20 }).metadata.deletionGracePeriodSeconds, 5, 'a longer one does not lengthen it')
  store.delete(pods, 'default', 'bound', { gracePeriodSeconds: 0 })
  t.equal(store.get(pods, 'default', 'bound'), undefined)
  store.create(pods, pod('d2', {}, { spec: { nodeName: 'n1', containers: [{ name: 'c', image: 'i' }] } }))
  t.equal(store.delete(pods, 'default', 'd2').metadata.deletionGracePeriodSeconds, 30, 'the default grace period is 30 s')
})

t.test('finalizers hold a deletion until they are cleared', async (t) => {
  const { store, configmaps } = setup()
  store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'f', finalizers: ['example.com/hold'] } })
  const d = store.delete(configmaps, 'default', 'f')
  t.ok(d.metadata.deletionTimestamp)
  const held = store.get(configmaps, 'default', 'f')!
  t.ok(held, 'still there')
  apiError(t, () => store.update(configmaps, { ...held, metadata: { ...held.metadata, finalizers: ['example.com/hold', 'x/y'] } }), 422, 'Invalid', /metadata\.finalizers: Forbidden: no new finalizers can be added/)
  store.update(configmaps, { ...held, metadata: { ...held.metadata, finalizers: [] } })
  t.equal(store.get(configmaps, 'default', 'f'), undefined, 'gone once the finalizers are cleared')
})

t.test('a write that breaks the published schema or the server\'s rules is 422 Invalid naming the field', async (t) => {
  const { store, pods, deployments } = setup()
  const noImage = apiError(t, () => store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [{ name: 'c' }] } }), 422, 'Invalid',
    'Pod "x" is invalid: spec.containers[0].image: Required value')
  t.same(noImage?.details?.causes, [{ reason: 'FieldValueRequired', field: 'spec.containers[0].image', message: 'Required value' }])
  const wrongType = apiError(t, () => store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [{ name: 'c', image: 5 }] } }), 422, 'Invalid')
  t.equal(wrongType?.details?.causes?.[0]?.field, 'spec.containers[0].image')
  t.equal(wrongType?.details?.causes?.[0]?.reason, 'FieldValueInvalid')
  apiError(t, () => store.create(pods, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: {} }), 422, 'Invalid', 'spec.containers: Required value')
  apiError(t, () => store.create(pods, pod('Bad_Name')), 422, 'Invalid', /^Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain/)
  apiError(t, () => store.create(pods, { ...pod(''), metadata: {} }), 422, 'Invalid', 'metadata.name: Required value: name or generateName is required')
  const d = {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd' },
    spec: { selector: { matchLabels: { app: 'a' } }, template: { metadata: { labels: { app: 'b' } }, spec: { containers: [{ name: 'c', image: 'i' }] } } },
  }
  apiError(t, () => store.create(deployments, d), 422, 'Invalid', /spec.template.metadata.labels: Invalid value: .*`selector` does not match template `labels`/)
  apiError(t, () => store.create(deployments, { ...d, spec: { template: d.spec.template } }), 422, 'Invalid', 'Deployment "d" is invalid: spec.selector: Required value')
  const ok = store.create(deployments, { ...d, spec: { ...d.spec, template: { ...d.spec.template, metadata: { labels: { app: 'a' } } } } })
  t.equal(ok.spec.replicas, 1, 'defaults are filled')
})

t.test('deleting a namespace deletes what is in it', async (t) => {
  const { store, pods, namespaces, configmaps } = setup()
  store.create(namespaces, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'tmp' } })
  store.create(configmaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c', namespace: 'tmp' } })
  store.create(pods, { ...pod('p'), metadata: { name: 'p', namespace: 'tmp' } })
  store.delete(namespaces, undefined, 'tmp')
  t.equal(store.list(configmaps, { namespace: 'tmp' }).items.length, 0)
  t.equal(store.list(pods, { namespace: 'tmp' }).items.length, 0)
  t.equal(store.get(namespaces, undefined, 'tmp'), undefined)
})

t.test('a pod\'s spec is immutable but for images, deadlines, added tolerations; nodeName may be set once (the in-process binding)', async (t) => {
  const { store, pods } = setup()
  const p = store.create(pods, pod('imm'))
  const image = store.update(pods, { ...p, spec: { ...p.spec, containers: [{ ...p.spec.containers[0], image: 'kindling/runtime-node:2' }], tolerations: [{ key: 'k', operator: 'Exists' }] } })
  t.equal(image.spec.containers[0].image, 'kindling/runtime-node:2')
  const bound = store.update(pods, { ...image, spec: { ...image.spec, nodeName: 'n1' } })
  t.equal(bound.spec.nodeName, 'n1')
  apiError(t, () => store.update(pods, { ...bound, spec: { ...bound.spec, nodeName: 'n2' } }), 422, 'Invalid', /^Pod "imm" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers\[\*\]\.image`/)
  apiError(t, () => store.update(pods, { ...bound, spec: { ...bound.spec, restartPolicy: 'Never' } }), 422, 'Invalid')
  apiError(t, () => store.update(pods, { ...bound, spec: { ...bound.spec, tolerations: [] } }), 422, 'Invalid', undefined)
  const reordered = JSON.parse(JSON.stringify(bound, (_k, v) => (v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).reverse()) : v)))
  t.equal(store.update(pods, reordered).metadata.resourceVersion, bound.metadata.resourceVersion, 'the same spec in another key order is no change')
})
