import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { KubeObject } from '../../kube-sim/types.js'
import { startSim, type Sim } from './api-fixture.js'

// The stand-in's API server against the real kubectl v1.34 (issue 10): discovery, apply, server-side printing,
// label, scale, delete, wait, and the errors kubectl shows for a 409, a 422 and a 401.
const DEPLOYMENT = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: main
        image: kindling/runtime-node:1
        ports: [{containerPort: 8888}]
        env: [{name: MODE, value: "one"}]
`

let sim: Sim
t.before(async () => { sim = await startSim() })
t.teardown(async () => { await sim.stop() })

async function manifest(name: string, text: string): Promise<string> {
  const p = join(sim.dir, name)
  await writeFile(p, text)
  return p
}

/** A pod as the stand-in's controllers and kubelet would leave it: owned, bound, running, ready. */
function runningPod(name: string, owner: KubeObject | undefined, node: string, ip: string): KubeObject {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name, namespace: 'default', labels: { app: 'web' }, ...(owner === undefined ? {} : { ownerReferences: [{ apiVersion: owner.apiVersion, kind: owner.kind, name: owner.metadata.name!, uid: owner.metadata.uid!, controller: true }] }) },
    spec: { nodeName: node, containers: [{ name: 'main', image: 'kindling/runtime-node:1' }] },
  }
}

t.test('kubectl apply creates a Deployment, and a second apply with a changed env reconfigures it', async (t) => {
  const file = await manifest('web.yaml', DEPLOYMENT)
  const first = await sim.kubectl('apply', '-f', file)
  t.equal(first.code, 0, first.stderr)
  t.match(first.stdout, 'deployment.apps/web created')
  const stored = sim.store.get(sim.type('deployments', 'apps'), 'default', 'web')
  t.equal(stored?.spec.replicas, 2)
  t.ok(stored?.metadata.annotations?.['kubectl.kubernetes.io/last-applied-configuration'], 'client-side apply keeps its annotation')
  const second = await sim.kubectl('apply', '-f', await manifest('web2.yaml', DEPLOYMENT.replace('value: "one"', 'value: "two"')))
  t.equal(second.code, 0, second.stderr)
  t.match(second.stdout, 'deployment.apps/web configured')
  const after = sim.store.get(sim.type('deployments', 'apps'), 'default', 'web')!
  t.same(after.spec.template.spec.containers[0].env, [{ name: 'MODE', value: 'two' }], 'the strategic merge patch replaced the env entry by its name')
  t.equal(after.metadata.generation, 2, 'the spec change bumped generation')
  const json = await sim.kubectl('get', 'deploy', 'web', '-o', 'json')
  t.equal(json.code, 0, json.stderr)
  const parsed = JSON.parse(json.stdout)
  t.equal(parsed.kind, 'Deployment')
  t.equal(parsed.metadata.uid, after.metadata.uid)
  t.equal(parsed.spec.template.spec.containers[0].image, 'kindling/runtime-node:1')
})

t.test('kubectl get pods -o wide prints the real server\'s columns from its Table', async (t) => {
  const pods = sim.type('pods')
  const rs = sim.store.create(sim.type('replicasets', 'apps'), {
    apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: 'web-1', namespace: 'default' },
    spec: { replicas: 2, selector: { matchLabels: { app: 'web' } }, template: { metadata: { labels: { app: 'web' } }, spec: { containers: [{ name: 'main', image: 'kindling/runtime-node:1' }] } } },
  })
  for (const [i, name] of ['web-1-aaaaa', 'web-1-bbbbb'].entries()) {
    const p = sim.store.create(pods, runningPod(name, rs, `kindling-runtime-${i}`, `127.101.0.${i + 2}`))
    sim.store.update(pods, { ...p, status: { phase: 'Running', podIP: `127.101.0.${i + 2}`, conditions: [{ type: 'Ready', status: 'True' }], containerStatuses: [{ name: 'main', ready: true, restartCount: i, image: 'kindling/runtime-node:1', imageID: '', state: { running: { startedAt: p.metadata.creationTimestamp } } }] } }, { subresource: 'status' })
  }
  const r = await sim.kubectl('get', 'pods', '-o', 'wide')
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout.trim().split('\n')
  t.match(lines[0], /^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\s+IP\s+NODE\s+NOMINATED NODE\s+READINESS GATES$/)
  t.match(lines[1], /^web-1-aaaaa\s+1\/1\s+Running\s+0\s+\d+s\s+127\.101\.0\.2\s+kindling-runtime-0\s+<none>\s+<none>$/)
  t.match(lines[2], /^web-1-bbbbb\s+1\/1\s+Running\s+1\s+\d+s\s+127\.101\.0\.3\s+kindling-runtime-1\s+<none>\s+<none>$/)
  const narrow = await sim.kubectl('get', 'po', '-l', 'app=web', '--field-selector', 'spec.nodeName=kindling-runtime-1')
  t.equal(narrow.code, 0, narrow.stderr)
  t.match(narrow.stdout, /^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\n/)
  t.notMatch(narrow.stdout, 'web-1-aaaaa', 'the field selector narrowed the list')
  t.match(narrow.stdout, 'web-1-bbbbb')
  const deploy = await sim.kubectl('get', 'deploy')
  t.match(deploy.stdout, /^NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE\nweb\s+0\/2\s+0\s+0\s+\d+s\n$/)
})

t.test('kubectl label and scale write through patches and the scale subresource', async (t) => {
  const l = await sim.kubectl('label', 'pod', 'web-1-aaaaa', 'kindling.io/managed=false')
  t.equal(l.code, 0, l.stderr)
  t.match(l.stdout, 'pod/web-1-aaaaa labeled')
  t.equal(sim.store.get(sim.type('pods'), 'default', 'web-1-aaaaa')?.metadata.labels?.['kindling.io/managed'], 'false')
  const bad = await sim.kubectl('label', 'pod', 'web-1-aaaaa', 'bad key=x')
  t.not(bad.code, 0, 'an invalid label is refused')
  const s = await sim.kubectl('scale', 'deploy', 'web', '--replicas=3')
  t.equal(s.code, 0, s.stderr)
  t.equal(sim.store.get(sim.type('deployments', 'apps'), 'default', 'web')?.spec.replicas, 3)
})

t.test('kubectl replace with a stale resourceVersion shows the 409 Conflict', async (t) => {
  const got = await sim.kubectl('get', 'deploy', 'web', '-o', 'json')
  const old = JSON.parse(got.stdout)
  const deployments = sim.type('deployments', 'apps')
  const cur = sim.store.get(deployments, 'default', 'web')!
  sim.store.update(deployments, { ...cur, metadata: { ...cur.metadata, labels: { ...cur.metadata.labels, touched: 'yes' } } })
  old.spec.replicas = 5
  const r = await sim.kubectl('replace', '-f', await manifest('stale.json', JSON.stringify(old)))
  t.not(r.code, 0)
  t.match(r.stderr, 'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply your changes to the latest version and try again')
  t.equal(sim.store.get(deployments, 'default', 'web')?.spec.replicas, 3, 'nothing was written')
})

t.test('an invalid manifest gets the 422 in kubectl\'s words, naming the field', async (t) => {
  const bad = DEPLOYMENT.replace('name: web\n  labels', 'name: bad\n  labels').replace('        image: kindling/runtime-node:1\n', '')
  const r = await sim.kubectl('apply', '-f', await manifest('bad.yaml', bad))
  t.not(r.code, 0)
  t.match(r.stderr, 'The Deployment "bad" is invalid: spec.template.spec.containers[0].image: Required value')
  t.equal(sim.store.get(sim.type('deployments', 'apps'), 'default', 'bad'), undefined)
  const typed = await sim.kubectl('apply', '-f', await manifest('typed.yaml', DEPLOYMENT.replace('name: web\n  labels', 'name: typed\n  labels').replace('replicas: 2', 'replicas: -1')))
  t.not(typed.code, 0)
  t.match(typed.stderr, 'The Deployment "typed" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0')
})

t.test('kubectl wait --for=condition=Ready returns once the pod\'s status says so', async (t) => {
  const pods = sim.type('pods')
  sim.store.create(pods, runningPod('waiter', undefined, 'kindling-runtime-0', '127.101.0.9'))
  const watching = sim.nextWatch('pods')
  const wait = sim.kubectl('wait', '--for=condition=Ready', 'pod/waiter', '--timeout=30s')
  await watching
  const p = sim.store.get(pods, 'default', 'waiter')!
  sim.store.update(pods, { ...p, status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] } }, { subresource: 'status' })
  const r = await wait
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'pod/waiter condition met')
})

t.test('kubectl delete of the Deployment\'s ReplicaSet collects its pods; wait --for=delete sees the bound ones go', async (t) => {
  const pods = sim.type('pods')
  const d = await sim.kubectl('delete', 'rs', 'web-1', '--wait=false')
  t.equal(d.code, 0, d.stderr)
  t.match(d.stdout, 'replicaset.apps "web-1" deleted')
  const terminating = sim.store.get(pods, 'default', 'web-1-bbbbb')
  t.ok(terminating?.metadata.deletionTimestamp, 'the bound pod is terminating, not gone')
  const watching = sim.nextWatch('pods')
  const wait = sim.kubectl('wait', '--for=delete', 'pod/web-1-bbbbb', '--timeout=30s')
  await watching
  // What the pod's kubelet does once its containers have stopped.
  sim.store.delete(pods, 'default', 'web-1-bbbbb', { gracePeriodSeconds: 0 })
  const r = await wait
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'pod/web-1-bbbbb condition met')
  const del = await sim.kubectl('delete', 'deploy', 'web')
  t.equal(del.code, 0, del.stderr)
  t.equal(sim.store.get(sim.type('deployments', 'apps'), 'default', 'web'), undefined)
  const gone = await sim.kubectl('get', 'deploy', 'web')
  t.match(gone.stderr, 'Error from server (NotFound): deployments.apps "web" not found')
})

t.test('kubectl without the token is refused with 401', async (t) => {
  const r = await sim.kubectl('--token', 'wrong', 'get', 'pods')
  t.not(r.code, 0)
  t.match(r.stderr, /You must be logged in to the server|Unauthorized/)
})

t.test('kubectl\'s generators (protobuf bodies) create namespaces, config maps, secrets, service accounts and RBAC objects', async (t) => {
  for (const args of [
    ['create', 'namespace', 'kindling'],
    ['create', 'configmap', 'conf', '-n', 'kindling', '--from-literal=a=b', '--from-literal=c=d'],
    ['create', 'secret', 'generic', 'sec', '-n', 'kindling', '--from-literal=p=secret'],
    ['create', 'serviceaccount', 'runner', '-n', 'kindling'],
    ['create', 'role', 'pods', '-n', 'kindling', '--verb=get,list,watch', '--resource=pods'],
    ['create', 'rolebinding', 'runner-pods', '-n', 'kindling', '--role=pods', '--serviceaccount=kindling:runner'],
  ]) {
    const r = await sim.kubectl(...args)
    t.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`)
  }
  const ns = sim.store.get(sim.type('namespaces'), undefined, 'kindling')
  t.equal(ns?.metadata.labels?.['kubernetes.io/metadata.name'], 'kindling')
  t.same(sim.store.get(sim.type('configmaps'), 'kindling', 'conf')?.data, { a: 'b', c: 'd' })
  t.same(sim.store.get(sim.type('secrets'), 'kindling', 'sec')?.data, { p: Buffer.from('secret').toString('base64') })
  const rb = sim.store.get(sim.type('rolebindings', 'rbac.authorization.k8s.io'), 'kindling', 'runner-pods')
  t.same(rb?.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pods' })
  t.same(rb?.subjects, [{ kind: 'ServiceAccount', name: 'runner', namespace: 'kindling' }])
  const role = sim.store.get(sim.type('roles', 'rbac.authorization.k8s.io'), 'kindling', 'pods')
  t.same(role?.rules, [{ verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['pods'] }])
  const deploy = await sim.kubectl('create', 'deployment', 'gen', '--image=nginx')
  t.not(deploy.code, 0, 'a protobuf kind the stand-in does not decode is refused')
  t.match(deploy.stderr, 'use a manifest with kubectl apply -f')
  const forbidden = await sim.kubectl('delete', 'namespace', 'default')
  t.match(forbidden.stderr, 'Error from server (Forbidden): namespaces "default" is forbidden: this namespace may not be deleted')
})

t.test('kubectl drain cordons the node and evicts its pods (protobuf Evictions), which terminate gracefully', async (t) => {
  const pods = sim.type('pods')
  const nodes = sim.type('nodes')
  sim.store.create(nodes, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'kindling-runtime-7' }, status: { conditions: [{ type: 'Ready', status: 'True' }] } })
  for (const name of ['d1', 'd2']) sim.store.create(pods, runningPod(name, undefined, 'kindling-runtime-7', '127.101.7.1'))
  const graces: Array<number | undefined> = []
  // The node's kubelet: a terminating pod's containers stop at once, then it removes the pod.
  const stop = sim.store.watch(pods, { fieldSelector: 'spec.nodeName=kindling-runtime-7' }, (e) => {
    if (e.type !== 'MODIFIED' || e.object.metadata.deletionTimestamp === undefined) return
    graces.push(e.object.metadata.deletionGracePeriodSeconds)
    sim.store.delete(pods, 'default', e.object.metadata.name!, { gracePeriodSeconds: 0 })
  })
  const r = await sim.kubectl('drain', 'kindling-runtime-7', '--force', '--timeout=30s')
  stop()
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'node/kindling-runtime-7 cordoned')
  t.match(r.stdout, 'pod/d1 evicted')
  t.match(r.stdout, 'node/kindling-runtime-7 drained')
  t.equal(sim.store.get(nodes, undefined, 'kindling-runtime-7')?.spec?.unschedulable, true)
  t.same(graces, [30, 30], 'each eviction was a graceful delete with the pod\'s grace period')
  t.equal(sim.store.list(pods, { fieldSelector: 'spec.nodeName=kindling-runtime-7' }).items.length, 0)
  const nodesOut = await sim.kubectl('get', 'nodes', 'kindling-runtime-7')
  t.match(nodesOut.stdout, /kindling-runtime-7\s+Ready,SchedulingDisabled\s+<none>/)
})

t.test('kubectl delete --dry-run=server (dryRun in the DeleteOptions body) deletes nothing', async (t) => {
  const cms = sim.type('configmaps')
  sim.store.create(cms, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'keep' } })
  const r = await sim.kubectl('delete', 'configmap', 'keep', '--dry-run=server')
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /configmap "keep" deleted.*\(server dry run\)/)
  t.ok(sim.store.get(cms, 'default', 'keep'), 'still there')
  const real = await sim.kubectl('delete', 'configmap', 'keep')
  t.equal(real.code, 0, real.stderr)
  t.equal(sim.store.get(cms, 'default', 'keep'), undefined)
})
