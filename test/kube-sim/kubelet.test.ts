import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { detectCgroups } from '../../cgroups/index.js'
import { kindsOf, type Kinds } from '../../kube-sim/controllers/shared.js'
import { defaultImages } from '../../kube-sim/kubelet/images.js'
import { Kubelet } from '../../kube-sim/kubelet/kubelet.js'
import { reserveNodeSubnet } from '../../kube-sim/kubelet/subnet.js'
import { MemoryStore } from '../../kube-sim/store.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { waitFor } from '../fixtures/wait.js'
import { SIM_ROOT } from '../fixtures/kube.js'

// The stand-in's kubelet (issue 10) on one node, pods bound to it directly (no scheduler): containers are real
// processes on the pod's own loopback address, in cgroups with the container's limits.

const REPO = new URL('../..', import.meta.url).pathname
const SCRIPTS: Record<string, string> = {
  // Prints its environment and the identity it runs as, then stays up.
  'env.mjs': `import { writeFileSync } from 'node:fs'
let wrote = false
if (process.env.TMPDIR) { writeFileSync(process.env.TMPDIR + '/probe', 'x'); wrote = true }
console.log(JSON.stringify({ env: process.env, uid: process.getuid(), gid: process.getgid(), cwd: process.cwd(), wrote })); setInterval(() => {}, 1000)`,
  // Allocates (and touches) memory until the kernel stops it.
  'hog.mjs': `const keep = []; setInterval(() => { keep.push(Buffer.alloc(16 << 20, 1)) }, 5)`,
  // Exits with EXIT_CODE after a line of output.
  'exit.mjs': `console.log('run ' + Date.now()); setTimeout(() => process.exit(Number(process.env.EXIT_CODE ?? 1)), 20)`,
  // Notes SIGTERM in a file; ignores it (STUBBORN=1) or exits.
  'term.mjs': `import { appendFileSync } from 'node:fs'
process.on('SIGTERM', () => { appendFileSync(process.env.MARK, 'TERM ' + Date.now() + '\\n'); if (process.env.STUBBORN !== '1') process.exit(0) })
console.log('up'); setInterval(() => {}, 1000)`,
}

interface Setup {
  store: MemoryStore
  kinds: Kinds
  kubelet: Kubelet
  dir: string
  /** The node's reserved subnet octet: 127.N.0.1. */
  subnet: number
  cgroups: Awaited<ReturnType<typeof detectCgroups>>
  parent: string
}

async function setup(t: Test, index = 0): Promise<Setup> {
  const dir = await mkdtemp(join(SIM_ROOT, 'kube-sim-kubelet-'))
  // The scripts are read by containers that run as other users.
  await chmod(dir, 0o755)
  for (const [name, text] of Object.entries(SCRIPTS)) await writeFile(join(dir, name), text)
  const store = new MemoryStore()
  const kinds = kindsOf(store)
  const cgroups = await detectCgroups()
  const parent = `kube-sim/test-${process.pid}-${index}`
  const node = `kindling-runtime-${index}`
  const images = {
    ...defaultImages(REPO),
    'test/env': [process.execPath, join(dir, 'env.mjs')],
    'test/hog': [process.execPath, join(dir, 'hog.mjs')],
    'test/exit': [process.execPath, join(dir, 'exit.mjs')],
    'test/term': [process.execPath, join(dir, 'term.mjs')],
  }
  const subnet = await reserveNodeSubnet()
  const kubelet = new Kubelet({
    store, kinds, nodeName: node, subnet: subnet.octet, labels: { 'kindling.io/node-role': 'runtime' }, taints: [],
    dataDir: join(dir, 'data'), images, cgroups, cgroupParent: parent, backoffBaseMs: 100, firstPodAddress: 0,
  })
  await kubelet.start()
  t.teardown(async () => {
    await kubelet.stop()
    await subnet.release()
    if (cgroups !== undefined) await cgroups.destroy(cgroups.refFor('kube-sim', `test-${process.pid}-${index}`))
    await rm(dir, { recursive: true, force: true })
  })
  return { store, kinds, kubelet, dir, subnet: subnet.octet, cgroups, parent }
}

function pod(name: string, node: string, spec: Record<string, unknown>): KubeObject {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels: { app: name } }, spec: { nodeName: node, ...spec } }
}

function get(s: Setup, name: string): KubeObject | undefined {
  return s.store.get(s.kinds.pod, 'default', name)
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request(url, { agent: false }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject).end()
  })
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

t.test('registers its Node: Ready, capacity, InternalIP 127.N.0.1 of its reserved subnet, and a Lease in kube-node-lease', async (t) => {
  const s = await setup(t, 3)
  const node = s.store.get(s.kinds.node, undefined, 'kindling-runtime-3') as KubeObject
  t.match(node.status.conditions, [{ type: 'MemoryPressure' }, { type: 'DiskPressure' }, { type: 'PIDPressure' }, { type: 'Ready', status: 'True', reason: 'KubeletReady' }])
  t.same(node.status.allocatable, { cpu: '4', memory: `${8192 * 1024}Ki`, pods: '110', 'ephemeral-storage': '100Gi' })
  t.same(node.status.addresses[0], { type: 'InternalIP', address: `127.${s.subnet}.0.1` })
  const lease = s.store.get(s.kinds.lease, 'kube-node-lease', 'kindling-runtime-3') as KubeObject
  t.equal(lease.spec.holderIdentity, 'kindling-runtime-3')
  t.match(lease.spec.renewTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/)
})

t.test('runs the runtime image as nobody on its own loopback IP; readiness (GET /_/health) makes it Ready', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('rt', 'kindling-runtime-0', {
    securityContext: { runAsNonRoot: true },
    containers: [{
      name: 'runtime', image: 'kindling/runtime-node:1', ports: [{ containerPort: 8888, name: 'http' }],
      env: [{ name: 'KINDLING_LISTEN', value: 'tcp:0.0.0.0:8888' }],
      readinessProbe: { httpGet: { path: '/_/health', port: 'http' }, periodSeconds: 1 },
      volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, { name: 'code', mountPath: '/code' }],
    }],
    volumes: [{ name: 'tmp', emptyDir: {} }, { name: 'code', emptyDir: {} }],
  }))
  const p = await waitFor(() => { const x = get(s, 'rt'); return x?.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True') && x }, 'the pod Ready', 15_000)
  t.equal(p.status.phase, 'Running')
  t.match(p.status.podIP, new RegExp(`^127\\.${s.subnet}\\.\\d+\\.\\d+$`), 'an address of the node\'s subnet')
  t.not(p.status.podIP, `127.${s.subnet}.0.1`, 'not the node address')
  t.equal(p.status.hostIP, `127.${s.subnet}.0.1`)
  t.same(p.status.podIPs, [{ ip: p.status.podIP }])
  const cs = p.status.containerStatuses[0]
  t.match(cs, { name: 'runtime', ready: true, started: true, restartCount: 0, state: { running: {} } })
  t.match(cs.containerID, /^containerd:\/\/[0-9a-f]{64}$/, 'a container id as containerd\'s')
  t.match(p.status.conditions.map((c: { type: string }) => c.type), ['PodReadyToStartContainers', 'Initialized', 'Ready', 'ContainersReady'])
  const health = await httpGet(`http://${String(p.status.podIP)}:8888/_/health`)
  t.equal(health.status, 200)
  t.equal(JSON.parse(health.body).state, 'generic')
  const pid = s.kubelet.containerPid(String(cs.containerID)) as number
  const st = await stat(`/proc/${pid}`)
  t.equal(st.uid, 65534, 'the runtime image runs as nobody (its USER)')
})

t.test('builds the environment: fieldRefs, configMap/secret refs, $(VAR), 0.0.0.0 → pod IP, mount paths → host dirs, TMPDIR, KINDLING_CODE_DIR', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.configMap, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cfg', namespace: 'default' }, data: { mode: 'fast', extra: 'x' } })
  s.store.create(s.kinds.secret, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'sec', namespace: 'default' }, data: { key: Buffer.from('s3cret').toString('base64') } })
  s.store.create(s.kinds.pod, pod('envy', 'kindling-runtime-0', {
    securityContext: { runAsUser: 1234, runAsGroup: 2345 },
    containers: [{
      name: 'c', image: 'test/env',
      envFrom: [{ configMapRef: { name: 'cfg' }, prefix: 'CFG_' }],
      env: [
        { name: 'LISTEN', value: 'tcp:0.0.0.0:8888' },
        { name: 'DATA', value: '/data/sub' },
        { name: 'POD', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
        { name: 'NS', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
        { name: 'APP', valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
        { name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
        { name: 'NODE', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
        { name: 'MODE', valueFrom: { configMapKeyRef: { name: 'cfg', key: 'mode' } } },
        { name: 'SECRET', valueFrom: { secretKeyRef: { name: 'sec', key: 'key' } } },
        { name: 'BOTH', value: '$(POD)-$(MODE)-$$(POD)' },
      ],
      volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, { name: 'code', mountPath: '/code' }, { name: 'data', mountPath: '/data' }],
    }],
    volumes: [{ name: 'tmp', emptyDir: {} }, { name: 'code', emptyDir: {} }, { name: 'data', emptyDir: {} }],
  }))
  const line = await waitFor(() => s.kubelet.logs('default', 'envy', 'c')?.read().split('\n')[0], 'the env line', 10_000)
  const { env, uid, gid, cwd, wrote } = JSON.parse(line) as { env: Record<string, string>; uid: number; gid: number; cwd: string; wrote: boolean }
  t.ok(wrote, 'the container (uid 1234) wrote into its TMPDIR emptyDir')
  const p = get(s, 'envy') as KubeObject
  const ip = String(p.status.podIP)
  const volumes = join(s.dir, 'data', 'nodes', 'kindling-runtime-0', 'pods', String(p.metadata.uid), 'volumes')
  t.equal(env.LISTEN, `tcp:${ip}:8888`)
  t.equal(env.DATA, join(volumes, 'data', 'sub'))
  t.equal(env.TMPDIR, join(volumes, 'tmp'))
  t.equal(env.KINDLING_CODE_DIR, join(volumes, 'code'))
  t.match(env, { POD: 'envy', NS: 'default', APP: 'envy', IP: ip, NODE: 'kindling-runtime-0', MODE: 'fast', SECRET: 's3cret', CFG_mode: 'fast', CFG_extra: 'x', HOSTNAME: 'envy' })
  t.equal(env.BOTH, 'envy-fast-$(POD)')
  t.equal(uid, 1234, 'runAsUser')
  t.equal(gid, 2345, 'runAsGroup')
  t.match(cwd, /containers\/c$/)
  const tmp = await stat(join(volumes, 'tmp'))
  t.equal(tmp.mode & 0o777, 0o777, 'an emptyDir is writable by any runAsUser')
})

t.test('a missing ConfigMap keeps the container waiting in CreateContainerConfigError; an unknown image in ErrImagePull then ImagePullBackOff', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('nocfg', 'kindling-runtime-0', { containers: [{ name: 'c', image: 'test/env', env: [{ name: 'X', valueFrom: { configMapKeyRef: { name: 'absent', key: 'k' } } }] }] }))
  s.store.create(s.kinds.pod, pod('noimg', 'kindling-runtime-0', { containers: [{ name: 'c', image: 'example.com/nothing:1' }] }))
  const nocfg = await waitFor(() => { const x = get(s, 'nocfg'); return x?.status?.containerStatuses?.[0]?.state?.waiting?.reason === 'CreateContainerConfigError' && x }, 'config error')
  t.equal(nocfg.status.containerStatuses[0].state.waiting.message, 'configmap "absent" not found')
  t.equal(nocfg.status.phase, 'Pending')
  await waitFor(() => get(s, 'noimg')?.status?.containerStatuses?.[0]?.state?.waiting?.reason === 'ImagePullBackOff', 'ImagePullBackOff')
  t.equal(get(s, 'noimg')?.status.phase, 'Pending')
  t.ok(s.store.list(s.kinds.event, { namespace: 'default' }).items.some((e) => e.reason === 'Failed' && String(e.message).includes('example.com/nothing:1')), 'a Failed event names the image')
})

t.test('a container over its memory limit is OOM-killed by the kernel and reports OOMKilled, exit code 137', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('hog', 'kindling-runtime-0', {
    restartPolicy: 'Never',
    containers: [{ name: 'hog', image: 'test/hog', resources: { limits: { memory: '96Mi' } } }],
  }))
  const p = await waitFor(() => { const x = get(s, 'hog'); return x?.status?.phase === 'Failed' && x }, 'the pod Failed', 20_000)
  t.match(p.status.containerStatuses[0].state.terminated, { reason: 'OOMKilled', exitCode: 137 })
  t.equal(p.status.containerStatuses[0].restartCount, 0)
})

t.test('restartPolicy: OnFailure restarts a failing container with back-off (CrashLoopBackOff), Never does not, exit 0 succeeds', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('crashy', 'kindling-runtime-0', { restartPolicy: 'OnFailure', containers: [{ name: 'c', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '3' }] }] }))
  s.store.create(s.kinds.pod, pod('once', 'kindling-runtime-0', { restartPolicy: 'Never', containers: [{ name: 'c', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '3' }] }] }))
  s.store.create(s.kinds.pod, pod('done', 'kindling-runtime-0', { restartPolicy: 'OnFailure', containers: [{ name: 'c', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '0' }] }] }))
  const seen = new Set<string>()
  const stopWatch = s.store.watch(s.kinds.pod, { fieldSelector: 'metadata.name=crashy' }, (ev) => {
    const r = ev.object.status?.containerStatuses?.[0]?.state?.waiting?.reason
    if (typeof r === 'string') seen.add(r)
  })
  t.teardown(stopWatch)
  const crashy = await waitFor(() => { const x = get(s, 'crashy'); return x?.status?.containerStatuses?.[0]?.restartCount >= 3 && x }, '3 restarts', 15_000)
  t.equal(crashy.status.phase, 'Running', 'a restarting pod stays Running (the kubelet\'s getPhase)')
  t.match(crashy.status.containerStatuses[0].lastState, { terminated: { exitCode: 3, reason: 'Error' } })
  t.ok(seen.has('CrashLoopBackOff'), 'waited in CrashLoopBackOff between restarts')
  t.match(s.kubelet.logs('default', 'crashy', 'c', true)?.read(), /^run \d+\n$/, 'the previous run\'s output is kept')
  const once = await waitFor(() => { const x = get(s, 'once'); return x?.status?.phase === 'Failed' && x }, 'once Failed')
  t.match(once.status.containerStatuses[0], { restartCount: 0, state: { terminated: { exitCode: 3, reason: 'Error' } } })
  const done = await waitFor(() => { const x = get(s, 'done'); return x?.status?.phase === 'Succeeded' && x }, 'done Succeeded')
  t.match(done.status.containerStatuses[0].state.terminated, { exitCode: 0, reason: 'Completed' })
})

t.test('deletion sends SIGTERM, waits the grace period, then SIGKILLs and removes the pod', async (t) => {
  const s = await setup(t)
  const mark = join(s.dir, 'marks')
  s.store.create(s.kinds.pod, pod('stubborn', 'kindling-runtime-0', {
    terminationGracePeriodSeconds: 1,
    containers: [{ name: 'c', image: 'test/term', env: [{ name: 'MARK', value: `${mark}-stubborn` }, { name: 'STUBBORN', value: '1' }] }],
  }))
  s.store.create(s.kinds.pod, pod('polite', 'kindling-runtime-0', {
    terminationGracePeriodSeconds: 30,
    containers: [{ name: 'c', image: 'test/term', env: [{ name: 'MARK', value: `${mark}-polite` }] }],
  }))
  await waitFor(() => ['stubborn', 'polite'].every((n) => s.kubelet.logs('default', n, 'c')?.read() === 'up\n'), 'both up')
  const pidOf = (n: string): number => s.kubelet.containerPid(String(get(s, n)?.status.containerStatuses[0].containerID)) as number
  const stubbornPid = pidOf('stubborn')
  const politePid = pidOf('polite')
  const t0 = Date.now()
  s.store.delete(s.kinds.pod, 'default', 'stubborn')
  s.store.delete(s.kinds.pod, 'default', 'polite')
  t.ok(get(s, 'stubborn')?.metadata.deletionTimestamp, 'a bound pod is deleted gracefully: it stays, with deletionTimestamp')
  await waitFor(() => get(s, 'polite') === undefined, 'the polite pod removed')
  t.ok(Date.now() - t0 < 5_000, 'a container that exits on SIGTERM does not wait out its 30 s grace')
  await waitFor(() => get(s, 'stubborn') === undefined, 'the stubborn pod removed', 10_000)
  const took = Date.now() - t0
  t.ok(took >= 950, `the stubborn one was given its 1 s grace (${took} ms)`)
  t.notOk(alive(stubbornPid), 'SIGKILLed')
  t.notOk(alive(politePid))
  t.match(await readFile(`${mark}-stubborn`, 'utf8'), /^TERM \d+\n$/, 'SIGTERM came first')
  t.match(await readFile(`${mark}-polite`, 'utf8'), /^TERM \d+\n$/)
})

t.test('pod addresses across 127/8 are assignable on lo: a server listens on the highest one a node can hand out', async (t) => {
  const { createServer, connect } = await import('node:net')
  const server = createServer((sock) => sock.end('ok'))
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.254.255.254', resolve))
  t.teardown(() => server.close())
  const port = (server.address() as { port: number }).port
  const got = await new Promise<string>((resolve, reject) => {
    const c = connect(port, '127.254.255.254')
    let data = ''
    c.on('data', (d) => { data += d.toString() }).on('end', () => resolve(data)).on('error', reject)
  })
  t.equal(got, 'ok')
})

t.test('a failing liveness probe kills the container and the policy restarts it; an exec readiness probe drives Ready', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('unlive', 'kindling-runtime-0', {
    terminationGracePeriodSeconds: 1,
    containers: [{ name: 'c', image: 'test/env', livenessProbe: { tcpSocket: { port: 1 }, periodSeconds: 1, failureThreshold: 1 } }],
  }))
  s.store.create(s.kinds.pod, pod('gated', 'kindling-runtime-0', {
    containers: [{
      name: 'c', image: 'test/env',
      readinessProbe: { exec: { command: ['sh', '-c', 'test -f "$TMPDIR/go"'] }, periodSeconds: 1 },
      volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
    }],
    volumes: [{ name: 'tmp', emptyDir: {} }],
  }))
  await waitFor(() => get(s, 'unlive')?.status?.containerStatuses?.[0]?.restartCount >= 1, 'a liveness restart', 15_000)
  t.ok(s.store.list(s.kinds.event, { namespace: 'default' }).items.some((e) => e.reason === 'Killing' && /failed liveness probe, will be restarted/.test(String(e.message))))
  const gated = await waitFor(() => { const x = get(s, 'gated'); return x?.status?.phase === 'Running' && x }, 'gated running')
  t.equal(gated.status.containerStatuses[0].ready, false, 'not ready while the exec probe fails')
  const line = await waitFor(() => s.kubelet.logs('default', 'gated', 'c')?.read().split('\n')[0], 'gated env line')
  const tmp = (JSON.parse(line) as { env: Record<string, string> }).env.TMPDIR as string
  await writeFile(join(tmp, 'go'), '')
  await waitFor(() => get(s, 'gated')?.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True'), 'gated Ready', 10_000)
})

t.test('init containers run first, in order; a failed one with restartPolicy Never fails the pod', async (t) => {
  const s = await setup(t)
  s.store.create(s.kinds.pod, pod('inited', 'kindling-runtime-0', {
    initContainers: [{ name: 'first', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '0' }] }, { name: 'second', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '0' }] }],
    containers: [{ name: 'main', image: 'test/env' }],
  }))
  s.store.create(s.kinds.pod, pod('badinit', 'kindling-runtime-0', {
    restartPolicy: 'Never',
    initContainers: [{ name: 'first', image: 'test/exit', env: [{ name: 'EXIT_CODE', value: '2' }] }],
    containers: [{ name: 'main', image: 'test/env' }],
  }))
  const ok = await waitFor(() => { const x = get(s, 'inited'); return x?.status?.phase === 'Running' && x }, 'inited Running')
  t.match(ok.status.initContainerStatuses, [{ name: 'first', state: { terminated: { exitCode: 0, reason: 'Completed' } } }, { name: 'second', state: { terminated: { exitCode: 0 } } }])
  const first = Date.parse(ok.status.initContainerStatuses[0].state.terminated.finishedAt)
  const second = Date.parse(ok.status.initContainerStatuses[1].state.terminated.startedAt)
  t.ok(second >= first, 'the second started after the first finished')
  t.match(ok.status.conditions, [{ type: 'PodReadyToStartContainers', status: 'True' }, { type: 'Initialized', status: 'True' }])
  const bad = await waitFor(() => { const x = get(s, 'badinit'); return x?.status?.phase === 'Failed' && x }, 'badinit Failed')
  t.match(bad.status.initContainerStatuses[0].state.terminated, { exitCode: 2 })
  t.match(bad.status.containerStatuses[0].state, { waiting: { reason: 'PodInitializing' } }, 'the main container never started')
})

t.test('each container runs in its own cgroup under the pod\'s, with its cpu and memory limits', async (t) => {
  const s = await setup(t)
  const cg = s.cgroups
  if (cg === undefined) throw new Error('this test needs a writable cgroup hierarchy (run as root)')
  s.store.create(s.kinds.pod, pod('limited', 'kindling-runtime-0', {
    containers: [{ name: 'c', image: 'test/env', resources: { requests: { cpu: '100m' }, limits: { cpu: '500m', memory: '128Mi' } } }],
  }))
  const p = await waitFor(() => { const x = get(s, 'limited'); return x?.status?.containerStatuses?.[0]?.state?.running && x }, 'running')
  const cid = String(p.status.containerStatuses[0].containerID)
  const pid = s.kubelet.containerPid(cid) as number
  // Output means the command runs: the wrapper joined the group before it exec'd the command.
  await waitFor(() => s.kubelet.logs('default', 'limited', 'c')?.read(), 'the command\'s output')
  // As a real kubelet's cgroupfs driver lays it out: kubepods/<qos>/pod<uid>/<container id>.
  const ref = cg.refFor(`${s.parent}/kindling-runtime-0/kubepods/burstable/pod${String(p.metadata.uid)}`, cid.slice('containerd://'.length))
  t.ok((await cg.pids(ref)).includes(pid), 'the container\'s process is in its group')
  if (cg.version === 1) {
    t.equal((await readFile(join(ref.paths.memory as string, 'memory.limit_in_bytes'), 'utf8')).trim(), String(128 * 2 ** 20))
    t.equal((await readFile(join(ref.paths.cpu as string, 'cpu.cfs_quota_us'), 'utf8')).trim(), '50000')
  } else {
    const dir = Object.values(ref.paths)[0] as string
    t.equal((await readFile(join(dir, 'memory.max'), 'utf8')).trim(), String(128 * 2 ** 20))
    t.match(await readFile(join(dir, 'cpu.max'), 'utf8'), /^50000 100000/)
  }
  t.equal(p.status.qosClass, 'Burstable')
  s.store.delete(s.kinds.pod, 'default', 'limited', { gracePeriodSeconds: 1 })
  await waitFor(() => get(s, 'limited') === undefined, 'removed')
  t.same(await cg.pids(ref), [], 'the group is gone with the pod')
  await t.rejects(stat(Object.values(ref.paths)[0] as string), 'its directory removed')
})

t.test('pod cgroups by QoS class: Guaranteed directly under kubepods, BestEffort under kubepods/besteffort', async (t) => {
  const s = await setup(t)
  const cg = s.cgroups
  if (cg === undefined) throw new Error('this test needs a writable cgroup hierarchy (run as root)')
  s.store.create(s.kinds.pod, pod('gold', 'kindling-runtime-0', {
    containers: [{ name: 'c', image: 'test/env', resources: { limits: { cpu: '250m', memory: '64Mi' } } }],
  }))
  s.store.create(s.kinds.pod, pod('free', 'kindling-runtime-0', { containers: [{ name: 'c', image: 'test/env' }] }))
  for (const [name, qos, dir] of [['gold', 'Guaranteed', 'kubepods'], ['free', 'BestEffort', 'kubepods/besteffort']] as const) {
    const p = await waitFor(() => { const x = get(s, name); return x?.status?.containerStatuses?.[0]?.state?.running && x }, `${name} running`)
    t.equal(p.status.qosClass, qos)
    const cid = String(p.status.containerStatuses[0].containerID).slice('containerd://'.length)
    const ref = cg.refFor(`${s.parent}/kindling-runtime-0/${dir}/pod${String(p.metadata.uid)}`, cid)
    await waitFor(async () => (await cg.pids(ref)).length > 0 || undefined, `${name}'s process in ${dir}/pod<uid>/<container id>`)
    t.pass(`${name}: ${dir}/pod<uid>/<container id>`)
  }
})

t.test('an address whose declared port a process outside the stand-in already holds is skipped', async (t) => {
  const { createServer } = await import('node:net')
  const s = await setup(t, 5)
  const squatter = createServer()
  await new Promise<void>((resolve, reject) => squatter.once('error', reject).listen(8888, `127.${s.subnet}.1.1`, resolve))
  t.teardown(() => squatter.close())
  s.store.create(s.kinds.pod, pod('skip', 'kindling-runtime-5', {
    containers: [{ name: 'runtime', image: 'kindling/runtime-node:1', ports: [{ containerPort: 8888 }], env: [{ name: 'KINDLING_LISTEN', value: 'tcp:0.0.0.0:8888' }] }],
  }))
  const p = await waitFor(() => { const x = get(s, 'skip'); return x?.status?.containerStatuses?.[0]?.state?.running && x }, 'running')
  t.equal(p.status.podIP, `127.${s.subnet}.1.2`, 'the first address was taken on 8888')
  t.equal(p.status.containerStatuses[0].restartCount, 0)
})
