import t, { type Test } from 'tap'
import { DaemonSetController } from '../../kube-sim/controllers/daemonset.js'
import { DeploymentController } from '../../kube-sim/controllers/deployment.js'
import { EventTtl } from '../../kube-sim/controllers/event-ttl.js'
import { PodGarbageCollector } from '../../kube-sim/controllers/podgc.js'
import { ReplicaSetController } from '../../kube-sim/controllers/replicaset.js'
import { controllerOf, kindsOf, type Kinds } from '../../kube-sim/controllers/shared.js'
import { Scheduler } from '../../kube-sim/scheduler.js'
import { MemoryStore } from '../../kube-sim/store.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { waitFor } from '../fixtures/wait.js'

// The stand-in's control loops (issue 10) on a real MemoryStore, without kubelets: pods are bound by the scheduler
// and marked Running/Ready by the test where a kubelet would.

function node(name: string, role: string, extra: { taint?: boolean; cpu?: string; ready?: boolean } = {}): KubeObject {
  return {
    apiVersion: 'v1', kind: 'Node',
    metadata: { name, labels: { 'kindling.io/node-role': role, 'kubernetes.io/hostname': name } },
    spec: extra.taint === true ? { taints: [{ key: 'kindling.io/node-role', value: role, effect: 'NoSchedule' }] } : {},
    status: {
      capacity: { cpu: extra.cpu ?? '4', memory: '8Gi', pods: '110' },
      allocatable: { cpu: extra.cpu ?? '4', memory: '8Gi', pods: '110' },
      conditions: [{ type: 'Ready', status: extra.ready === false ? 'False' : 'True', reason: 'KubeletReady' }],
    },
  }
}

function setup(t: Test) {
  const store = new MemoryStore()
  const kinds = kindsOf(store)
  const parts = [
    new ReplicaSetController({ store, kinds }), new DeploymentController({ store, kinds }),
    new DaemonSetController({ store, kinds }), new PodGarbageCollector({ store, kinds }), new Scheduler({ store, kinds }),
  ]
  for (const p of parts) p.start()
  t.teardown(() => { for (const p of parts) p.stop() })
  store.create(kinds.node, node('kindling-management-0', 'management'))
  store.create(kinds.node, node('kindling-runtime-0', 'runtime', { taint: true }))
  store.create(kinds.node, node('kindling-runtime-1', 'runtime', { taint: true }))
  store.create(kinds.node, node('kindling-quarantine-0', 'quarantine', { taint: true }))
  return { store, kinds }
}

const runtimePodSpec = {
  containers: [{ name: 'runtime', image: 'kindling/runtime-node:1', ports: [{ containerPort: 8888 }] }],
  tolerations: [{ key: 'kindling.io/node-role', operator: 'Equal', value: 'runtime', effect: 'NoSchedule' }],
  nodeSelector: { 'kindling.io/node-role': 'runtime' },
}

function deployment(name: string, replicas: number, spec: object = runtimePodSpec): KubeObject {
  const labels = { 'kindling.io/runtime': 'node', 'kindling.io/managed': 'true' }
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name, namespace: 'default' },
    spec: { replicas, selector: { matchLabels: labels }, template: { metadata: { labels }, spec } },
  }
}

function pods(store: MemoryStore, kinds: Kinds, selector = 'kindling.io/runtime=node'): KubeObject[] {
  return store.list(kinds.pod, { namespace: 'default', labelSelector: selector }).items
}

/** What a kubelet would write: Running and Ready. */
function markReady(store: MemoryStore, kinds: Kinds, pod: KubeObject): void {
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
  store.update(kinds.pod, { ...pod, status: { ...pod.status, phase: 'Running', conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: now }] } }, { subresource: 'status' })
}

t.test('a Deployment gets one ReplicaSet labelled pod-template-hash and its pods land on runtime nodes only', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.deployment, deployment('pool', 3))
  const bound = await waitFor(() => { const p = pods(store, kinds); return p.length === 3 && p.every((x) => x.spec?.nodeName) && p }, '3 bound pods')
  const sets = store.list(kinds.replicaSet, { namespace: 'default' }).items
  t.equal(sets.length, 1)
  const rs = sets[0] as KubeObject
  t.match(rs.metadata.name, /^pool-[a-z0-9]{10}$/)
  t.equal(rs.metadata.labels?.['pod-template-hash'], String(rs.metadata.name).slice(5))
  t.equal(rs.spec.selector.matchLabels['pod-template-hash'], rs.metadata.labels?.['pod-template-hash'])
  t.equal(controllerOf(rs)?.kind, 'Deployment')
  for (const p of bound) {
    t.match(p.spec?.nodeName, /^kindling-runtime-[01]$/)
    t.match(p.metadata.name, new RegExp(`^${String(rs.metadata.name)}-[a-z0-9]{5}$`))
    t.equal(controllerOf(p)?.uid, rs.metadata.uid)
    t.ok(p.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'PodScheduled' && c.status === 'True'))
  }
  t.equal(new Set(bound.map((p) => p.spec?.nodeName)).size, 2, 'pods without requests still spread over both runtime nodes')
  for (const p of bound) markReady(store, kinds, p)
  const d = await waitFor(() => { const x = store.get(kinds.deployment, 'default', 'pool'); return x?.status?.availableReplicas === 3 && x }, 'an available deployment')
  t.equal(d.status.readyReplicas, 3)
  t.equal(d.status.updatedReplicas, 3)
  t.equal(d.status.observedGeneration, d.metadata.generation)
  t.match(d.status.conditions, [{ type: 'Available', status: 'True', reason: 'MinimumReplicasAvailable' }, { type: 'Progressing', status: 'True', reason: 'NewReplicaSetAvailable' }])
})

t.test('a relabelled pod is orphaned (owner reference removed) and replaced; the replacement is adopted', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.deployment, deployment('pool', 2))
  const [first] = await waitFor(() => { const p = pods(store, kinds); return p.length === 2 && p }, '2 pods')
  const claimed = store.update(kinds.pod, { ...first!, metadata: { ...first!.metadata, labels: { ...first!.metadata.labels, 'kindling.io/managed': 'false', 'kindling.io/function': 'hello' } } })
  const orphan = await waitFor(() => { const p = store.get(kinds.pod, 'default', String(claimed.metadata.name)); return p !== undefined && p.metadata.ownerReferences === undefined && p }, 'the claimed pod orphaned')
  t.equal(orphan.metadata.labels?.['kindling.io/function'], 'hello', 'the pod lives on')
  const pool = await waitFor(() => { const p = pods(store, kinds, 'kindling.io/managed=true'); return p.length === 2 && p.every((x) => controllerOf(x) !== undefined) && p }, 'the pool refilled to 2')
  t.notOk(pool.some((p) => p.metadata.name === claimed.metadata.name))
  // An orphan that matches again is adopted (and the surplus deleted).
  store.update(kinds.pod, { ...orphan, metadata: { ...orphan.metadata, labels: { ...orphan.metadata.labels, 'kindling.io/managed': 'true' } } })
  await waitFor(() => { const p = pods(store, kinds, 'kindling.io/managed=true').filter((x) => x.metadata.deletionTimestamp === undefined); return p.length === 2 && p }, 'back to 2 after adoption')
})

t.test('scaling a Deployment and changing its template rolls to a new ReplicaSet', async (t) => {
  const { store, kinds } = setup(t)
  const d0 = store.create(kinds.deployment, deployment('pool', 2))
  const ready = setInterval(() => { for (const p of pods(store, kinds)) if (p.status?.phase !== 'Running' && p.spec?.nodeName) markReady(store, kinds, p) }, 20)
  t.teardown(() => clearInterval(ready))
  await waitFor(() => store.get(kinds.deployment, 'default', 'pool')?.status?.availableReplicas === 2, 'available')
  const d1 = store.get(kinds.deployment, 'default', 'pool') as KubeObject
  const spec = structuredClone(d1.spec)
  spec.template.spec.containers[0].image = 'kindling/runtime-node:2'
  store.update(kinds.deployment, { ...d1, spec })
  const done = await waitFor(() => {
    const d = store.get(kinds.deployment, 'default', 'pool')
    return d?.status?.observedGeneration === d?.metadata.generation && d?.status?.updatedReplicas === 2 && d.status.replicas === 2 && d.status.availableReplicas === 2 && d
  }, 'the rollout finished', 15_000)
  t.equal(done.metadata.annotations?.['deployment.kubernetes.io/revision'], '2')
  const sets = store.list(kinds.replicaSet, { namespace: 'default' }).items
  t.equal(sets.length, 2, 'the old set is kept as history')
  t.same(sets.map((s) => s.spec.replicas).sort(), [0, 2])
  t.equal(done.metadata.generation, 2)
  t.ok(d0.metadata.uid)
  t.ok(pods(store, kinds).every((p) => p.spec.containers[0].image === 'kindling/runtime-node:2' || p.metadata.deletionTimestamp !== undefined))
})

t.test('an untolerated pod stays Pending with PodScheduled=False/Unschedulable and the real message', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.pod, {
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'stray', namespace: 'default' },
    spec: { containers: [{ name: 'c', image: 'kindling/runtime-node:1' }], nodeSelector: { 'kindling.io/node-role': 'runtime' } },
  })
  const p = await waitFor(() => { const x = store.get(kinds.pod, 'default', 'stray'); return x?.status?.conditions?.length > 0 && x }, 'a condition')
  t.equal(p.status.phase, 'Pending')
  t.equal(p.spec.nodeName, undefined)
  t.match(p.status.conditions, [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable' }])
  t.equal(p.status.conditions[0].message,
    "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {kindling.io/node-role: quarantine}, 2 node(s) had untolerated taint {kindling.io/node-role: runtime}.")
  t.ok(store.list(kinds.event, { namespace: 'default' }).items.some((e) => e.reason === 'FailedScheduling'), 'a FailedScheduling event')
  // A node it fits appears: the pod is retried and bound.
  store.create(kinds.node, node('kindling-runtime-9', 'runtime'))
  const bound = await waitFor(() => store.get(kinds.pod, 'default', 'stray')?.spec?.nodeName, 'bound once a node fits')
  t.equal(bound, 'kindling-runtime-9')
})

t.test('requests beyond what any node has left stay Pending with Insufficient cpu; limits count as requests', async (t) => {
  const { store, kinds } = setup(t)
  const big = (name: string, cpu: string, asLimit = false): KubeObject => ({
    apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels: { big: 'yes' } },
    spec: { ...runtimePodSpec, containers: [{ name: 'c', image: 'kindling/runtime-node:1', resources: asLimit ? { limits: { cpu, memory: '1Gi' } } : { requests: { cpu } } }] },
  })
  store.create(kinds.pod, big('a', '3'))
  store.create(kinds.pod, big('b', '3500m', true))
  await waitFor(() => ['a', 'b'].every((n) => store.get(kinds.pod, 'default', n)?.spec?.nodeName), 'a and b bound')
  t.not(store.get(kinds.pod, 'default', 'a')?.spec.nodeName, store.get(kinds.pod, 'default', 'b')?.spec.nodeName, 'on different nodes')
  store.create(kinds.pod, big('c', '2'))
  const c = await waitFor(() => { const x = store.get(kinds.pod, 'default', 'c'); return x?.status?.conditions?.length > 0 && x }, 'c judged')
  t.equal(c.spec.nodeName, undefined)
  t.equal(c.status.conditions[0].message,
    "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {kindling.io/node-role: quarantine}, 2 Insufficient cpu.")
  // Pod a finishes: its cpu is free again and c is bound where a was.
  const a = store.get(kinds.pod, 'default', 'a') as KubeObject
  store.update(kinds.pod, { ...a, status: { ...a.status, phase: 'Succeeded' } }, { subresource: 'status' })
  t.equal(await waitFor(() => store.get(kinds.pod, 'default', 'c')?.spec?.nodeName, 'c bound'), a.spec.nodeName)
})

t.test('a DaemonSet gets one pod per matching, tolerated node, pinned by node affinity; a new node gets one too', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.daemonSet, {
    apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: { name: 'agent', namespace: 'default' },
    spec: {
      selector: { matchLabels: { app: 'agent' } },
      template: {
        metadata: { labels: { app: 'agent' } },
        spec: {
          containers: [{ name: 'a', image: 'kindling/runtime-node:1' }],
          tolerations: [{ key: 'kindling.io/node-role', operator: 'Exists', effect: 'NoSchedule' }],
          affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kindling.io/node-role', operator: 'NotIn', values: ['management'] }] }] } } },
        },
      },
    },
  })
  const placed = await waitFor(() => { const p = pods(store, kinds, 'app=agent'); return p.length === 3 && p.every((x) => x.spec?.nodeName) && p }, '3 daemon pods bound')
  t.same(placed.map((p) => p.spec.nodeName).sort(), ['kindling-quarantine-0', 'kindling-runtime-0', 'kindling-runtime-1'])
  for (const p of placed) {
    t.match(p.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms, [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: [p.spec.nodeName] }] }])
  }
  store.create(kinds.node, node('kindling-runtime-2', 'runtime', { taint: true }))
  await waitFor(() => pods(store, kinds, 'app=agent').some((p) => p.spec?.nodeName === 'kindling-runtime-2'), 'a pod on the new node')
  const ds = await waitFor(() => { const x = store.get(kinds.daemonSet, 'default', 'agent'); return x?.status?.desiredNumberScheduled === 4 && x?.status?.currentNumberScheduled === 4 && x }, 'status counts 4')
  t.equal(ds.status.numberMisscheduled, 0)
})

t.test('pods of a deleted node are deleted by the pod GC and their ReplicaSet recreates them elsewhere', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.deployment, deployment('pool', 4))
  const before = await waitFor(() => { const p = pods(store, kinds); return p.length === 4 && p.every((x) => x.spec?.nodeName) && p }, '4 bound pods')
  const victims = before.filter((p) => p.spec.nodeName === 'kindling-runtime-0').map((p) => p.metadata.name)
  t.ok(victims.length > 0)
  store.delete(kinds.node, undefined, 'kindling-runtime-0')
  const after = await waitFor(() => { const p = pods(store, kinds); return p.length === 4 && p.every((x) => x.spec?.nodeName === 'kindling-runtime-1') && p }, 'all 4 on the other runtime node')
  t.notOk(after.some((p) => victims.includes(p.metadata.name)), 'the vanished node\'s pods are gone')
})

t.test('events expire after their TTL, and the oldest go first beyond the cap', async (t) => {
  const store = new MemoryStore()
  const kinds = kindsOf(store)
  const ttl = new EventTtl({ store, kinds, ttlMs: 60_000, maxEvents: 3 })
  ttl.start()
  t.teardown(() => ttl.stop())
  const event = (name: string): KubeObject => ({
    apiVersion: 'v1', kind: 'Event', metadata: { name, namespace: 'default' },
    involvedObject: { kind: 'Pod', name: 'p', namespace: 'default' }, reason: 'Test', message: name, type: 'Normal',
  })
  for (const n of ['e1', 'e2', 'e3', 'e4', 'e5']) store.create(kinds.event, event(n))
  await waitFor(() => store.list(kinds.event, { namespace: 'default' }).items.length === 3, 'the cap enforced')
  t.same(store.list(kinds.event, { namespace: 'default' }).items.map((e) => e.metadata.name), ['e3', 'e4', 'e5'])
  ttl.sweep(Date.now() + 60_001)
  t.same(store.list(kinds.event, { namespace: 'default' }).items, [], 'expired')
})

t.test('scaling down deletes the not-ready pod first', async (t) => {
  const { store, kinds } = setup(t)
  store.create(kinds.deployment, deployment('pool', 3))
  const three = await waitFor(() => { const p = pods(store, kinds); return p.length === 3 && p.every((x) => x.spec?.nodeName) && p }, '3 bound pods')
  const [a, b, c] = three as [KubeObject, KubeObject, KubeObject]
  markReady(store, kinds, a)
  markReady(store, kinds, c)
  const d = store.get(kinds.deployment, 'default', 'pool') as KubeObject
  store.update(kinds.deployment, { ...d, spec: { ...d.spec, replicas: 2 } })
  // No kubelet here: the deleted (bound) pod stays, terminating.
  const left = await waitFor(() => { const p = pods(store, kinds).filter((x) => x.metadata.deletionTimestamp === undefined); return p.length === 2 && p }, 'scaled to 2')
  t.same(left.map((p) => p.metadata.name).sort(), [a.metadata.name, c.metadata.name].sort(), `the not-ready ${String(b.metadata.name)} went`)
})
