import { connect } from 'node:tls'
import t from 'tap'
import { Agent, request } from 'undici'
import { strategicMergePatch } from '../../kube-sim/api/patch.js'
import { waitFor } from '../fixtures/wait.js'
import { startSim, type Sim } from './api-fixture.js'

// The stand-in's API server over raw HTTP (issue 10): what kubectl and client-node do not exercise by themselves —
// discovery documents, auth, subresources, dry run, deletecollection, Tables, watch bookmarks and timeouts, pause.
let sim: Sim
let agent: Agent
t.before(async () => {
  sim = await startSim({ bookmarkIntervalMs: 50, logs: (ns, pod, c) => `log of ${ns}/${pod}/${c}\nsecond\n` })
  agent = new Agent({ connect: { ca: sim.api.ca } })
})
t.teardown(async () => {
  await agent.close()
  await sim.stop()
})

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const r = await request(`${sim.api.url}${path}`, {
    method: method as 'GET', dispatcher: agent,
    headers: { authorization: `Bearer ${sim.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  })
  const text = await r.body.text()
  let json: any // eslint-disable-line @typescript-eslint/no-explicit-any
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: r.statusCode, headers: r.headers, text, json }
}

const pod = (name: string, extra: Record<string, unknown> = {}) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, labels: { app: 'x' } }, spec: { containers: [{ name: 'c', image: 'i' }], ...extra } })

t.test('discovery: version, legacy documents and the aggregated v2 list', async (t) => {
  const v = await call('GET', '/version')
  t.match(v.json.gitVersion, /^v1\.34\./)
  const core = await call('GET', '/api/v1')
  t.equal(core.json.kind, 'APIResourceList')
  const pods = core.json.resources.find((r: { name: string }) => r.name === 'pods')
  t.same(pods.shortNames, ['po'])
  t.ok(core.json.resources.some((r: { name: string }) => r.name === 'pods/binding'))
  const groups = await call('GET', '/apis')
  t.ok(groups.json.groups.some((g: { name: string }) => g.name === 'apps'))
  const agg = await call('GET', '/apis', undefined, { accept: 'application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json' })
  t.match(agg.headers['content-type'], 'as=APIGroupDiscoveryList')
  const apps = agg.json.items.find((i: { metadata: { name: string } }) => i.metadata.name === 'apps')
  t.ok(apps.versions[0].resources.some((r: { resource: string; subresources: Array<{ subresource: string }> }) => r.resource === 'deployments' && r.subresources.some((s) => s.subresource === 'scale')))
  t.equal((await call('GET', '/healthz')).text, 'ok')
  t.equal((await call('GET', '/apis/nope.io/v1')).status, 404)
})

t.test('a request without the token gets a 401 Status; an unknown path a 404 Status', async (t) => {
  const r = await request(`${sim.api.url}/api/v1/pods`, { dispatcher: agent })
  t.equal(r.statusCode, 401)
  t.match(await r.body.json(), { kind: 'Status', reason: 'Unauthorized', code: 401 })
  const nf = await call('GET', '/api/v1/namespaces/default/nothings')
  t.equal(nf.status, 404)
  t.equal(nf.json.kind, 'Status')
})

t.test('binding sets the node once; eviction deletes gracefully; log answers the hook\'s text', async (t) => {
  t.equal((await call('POST', '/api/v1/namespaces/default/pods', pod('b1'))).status, 201)
  const bind = await call('POST', '/api/v1/namespaces/default/pods/b1/binding', { apiVersion: 'v1', kind: 'Binding', metadata: { name: 'b1' }, target: { kind: 'Node', name: 'kindling-runtime-0' } })
  t.equal(bind.status, 201)
  t.equal(sim.store.get(sim.type('pods'), 'default', 'b1')?.spec.nodeName, 'kindling-runtime-0')
  const again = await call('POST', '/api/v1/namespaces/default/pods/b1/binding', { target: { kind: 'Node', name: 'kindling-runtime-1' } })
  t.equal(again.status, 409)
  t.match(again.json.message, 'is already assigned to node "kindling-runtime-0"')
  const log = await call('GET', '/api/v1/namespaces/default/pods/b1/log?tailLines=1')
  t.equal(log.text, 'second\n')
  t.equal((await call('GET', '/api/v1/namespaces/default/pods/b1/log')).text, 'log of default/b1/c\nsecond\n')
  const ev = await call('POST', '/api/v1/namespaces/default/pods/b1/eviction', { apiVersion: 'policy/v1', kind: 'Eviction', metadata: { name: 'b1' } })
  t.equal(ev.status, 201)
  t.ok(sim.store.get(sim.type('pods'), 'default', 'b1')?.metadata.deletionTimestamp, 'the evicted bound pod terminates')
})

t.test('dryRun=All answers the result and stores nothing', async (t) => {
  const r = await call('POST', '/api/v1/namespaces/default/pods?dryRun=All', pod('dry'))
  t.equal(r.status, 201)
  t.equal(r.json.spec.restartPolicy, 'Always', 'defaults are in the answer')
  t.equal(sim.store.get(sim.type('pods'), 'default', 'dry'), undefined)
  const bad = await call('POST', '/api/v1/namespaces/default/pods?dryRun=All', { ...pod('dry'), spec: { containers: [{ name: 'c' }] } })
  t.equal(bad.status, 422, 'a dry run validates')
})

t.test('deletecollection deletes what the selector picks', async (t) => {
  for (const n of ['dc1', 'dc2']) await call('POST', '/api/v1/namespaces/default/configmaps', { metadata: { name: n, labels: { batch: 'a' } } })
  await call('POST', '/api/v1/namespaces/default/configmaps', { metadata: { name: 'dc3', labels: { batch: 'b' } } })
  const r = await call('DELETE', '/api/v1/namespaces/default/configmaps?labelSelector=batch%3Da')
  t.equal(r.status, 200)
  t.same(sim.store.list(sim.type('configmaps'), { labelSelector: 'batch' }).items.map((c) => c.metadata.name), ['dc3'])
})

t.test('a Table has the printer\'s columns and the object or its metadata per row', async (t) => {
  await call('POST', '/api/v1/namespaces/default/pods', pod('tab'))
  const accept = 'application/json;as=Table;v=v1;g=meta.k8s.io,application/json'
  const meta = await call('GET', '/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dtab', undefined, { accept })
  t.equal(meta.json.kind, 'Table')
  t.same(meta.json.columnDefinitions.map((c: { name: string }) => c.name), ['Name', 'Ready', 'Status', 'Restarts', 'Age', 'IP', 'Node', 'Nominated Node', 'Readiness Gates'])
  t.same(meta.json.rows[0].cells.slice(0, 4), ['tab', '0/1', 'Pending', 0])
  t.equal(meta.json.rows[0].object.kind, 'PartialObjectMetadata')
  const full = await call('GET', '/api/v1/namespaces/default/pods/tab?includeObject=Object', undefined, { accept })
  t.equal(full.json.rows[0].object.kind, 'Pod')
  const other = await call('GET', '/apis/coordination.k8s.io/v1/namespaces/default/leases', undefined, { accept })
  t.same(other.json.columnDefinitions.map((c: { name: string }) => c.name), ['Name', 'Age'])
})

t.test('a watch stream sends bookmarks when allowed and ends after timeoutSeconds', async (t) => {
  const started = Date.now()
  const rv = sim.store.currentVersion()
  const r = await call('GET', `/api/v1/namespaces/default/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=${rv}`)
  const events = r.text.trim().split('\n').map((l) => JSON.parse(l))
  t.ok(events.length >= 1)
  t.ok(events.every((e: { type: string }) => e.type === 'BOOKMARK'), 'nothing changed: bookmarks only')
  t.equal(events[0].object.metadata.resourceVersion, rv)
  t.ok(Date.now() - started >= 900, 'the stream lasted its timeout')
  const bad = await call('GET', '/api/v1/namespaces/default/pods?watch=1&labelSelector=a%20in%20(b')
  t.equal(bad.status, 400, 'a bad selector is a plain 400, not a stream')
  t.equal(bad.json.reason, 'BadRequest')
})

t.test('a strategic merge patch merges by key, deletes with $patch, and orders by $setElementOrder', async (t) => {
  const live = { spec: { containers: [{ name: 'a', image: '1', env: [{ name: 'X', value: '1' }, { name: 'Y', value: '2' }] }, { name: 'b', image: '1' }], tolerations: [{ key: 'k' }] }, metadata: { finalizers: ['f1'] } }
  const out = strategicMergePatch(live, {
    spec: {
      '$setElementOrder/containers': [{ name: 'b' }, { name: 'a' }],
      containers: [{ name: 'a', env: [{ name: 'Y', $patch: 'delete' }, { name: 'Z', value: '3' }] }],
      tolerations: [{ key: 'other' }],
    },
    metadata: { finalizers: ['f2'] },
  })
  t.same(out.spec.containers, [{ name: 'b', image: '1' }, { name: 'a', image: '1', env: [{ name: 'X', value: '1' }, { name: 'Z', value: '3' }] }])
  t.same(out.spec.tolerations, [{ key: 'other' }], 'a list without a merge key is replaced')
  t.same(out.metadata.finalizers, ['f1', 'f2'], 'finalizers merge as a set')
})

t.test('pause drops open watches and refuses connections until resume', async (t) => {
  const r = await request(`${sim.api.url}/api/v1/namespaces/default/pods?watch=true`, { dispatcher: agent, headers: { authorization: `Bearer ${sim.token}` } })
  t.equal(r.statusCode, 200)
  const ended = r.body.text().then(() => 'cut', () => 'cut')
  sim.api.pause()
  let deadline: NodeJS.Timeout | undefined
  const still = new Promise<string>((resolve) => { deadline = setTimeout(() => resolve('still open after 5 s'), 5000) })
  t.equal(await Promise.race([ended, still]), 'cut', 'the open watch is cut')
  clearTimeout(deadline)
  const refused = await new Promise<string>((resolve) => {
    const s = connect({ host: '127.0.0.1', port: sim.api.port, ca: sim.api.ca }, () => resolve('connected'))
    s.on('error', () => resolve('refused'))
    s.on('close', () => resolve('refused'))
  })
  t.equal(refused, 'refused')
  sim.api.resume()
  await waitFor(async () => (await call('GET', '/version').catch(() => ({ status: 0 }))).status === 200, 'the server to answer again')
  t.pass('serving again')
})

t.test('malformed bodies are 400s; a patch of an unknown content type is 415', async (t) => {
  const bad = await call('POST', '/api/v1/namespaces/default/configmaps', '{"metadata":')
  t.equal(bad.status, 400)
  t.match(bad.json.message, 'json parse error')
  const yaml = await call('PATCH', '/api/v1/namespaces/default/configmaps/x?fieldManager=t', 'a: [', { 'content-type': 'application/apply-patch+yaml' })
  t.equal(yaml.status, 400)
  t.match(yaml.json.message, 'yaml parse error')
  const plain = await call('PATCH', '/api/v1/namespaces/default/pods/tab', '{}', { 'content-type': 'application/json' })
  t.equal(plain.status, 415)
  t.equal(plain.json.reason, 'UnsupportedMediaType')
  const created = await call('PATCH', '/api/v1/namespaces/default/configmaps/applied?fieldManager=t', 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  k: v\n', { 'content-type': 'application/apply-patch+yaml' })
  t.equal(created.status, 201, 'server-side apply of a new object creates it')
  const merged = await call('PATCH', '/api/v1/namespaces/default/configmaps/applied?fieldManager=t', 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  k2: v2\n', { 'content-type': 'application/apply-patch+yaml' })
  t.same(merged.json.data, { k: 'v', k2: 'v2' }, 'and of an existing one merges (no field ownership)')
})
