import { execFile } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { connect } from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startCluster } from '../../kube-sim/cluster.js'
import { kindsOf } from '../../kube-sim/controllers/shared.js'
import { waitFor } from '../fixtures/wait.js'
import { SIM_ROOT } from '../fixtures/kube.js'

// Services on the stand-in (issue 13), through real kubectl: a cluster IP on the cluster's own loopback subnet,
// Endpoints of the Ready pods, the kube-proxy stand-in spreading connections over them and refusing when there is
// none, and, inside a pod, the Service's names in its hosts file (also for a Service made after the pod) and the
// service-link variables.

const run = promisify(execFile)
const KUBECTL = new URL('../../.kube-tools/bin/kubectl', import.meta.url).pathname

// An HTTP server that says who it is, resolves a name, and shows an env variable: `GET /who`, `/resolve?name=`, `/env?name=`.
const SERVER = `
import { createServer } from 'node:http'
import { lookup } from 'node:dns/promises'
createServer(async (req, res) => {
  const u = new URL(req.url, 'http://x')
  if (u.pathname === '/who') return res.end(process.env.POD_NAME)
  if (u.pathname === '/env') return res.end(process.env[u.searchParams.get('name')] ?? '')
  if (u.pathname === '/resolve') {
    try { res.end((await lookup(u.searchParams.get('name'), { family: 4 })).address) } catch (err) { res.statusCode = 502; res.end(err.code) }
    return
  }
  res.statusCode = 404; res.end()
}).listen(8080, process.env.LISTEN)
`

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request(url, { agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject).end()
  })
}

function refused(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port })
    s.once('connect', () => { s.destroy(); resolve(false) })
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
  })
}

function deployment(name: string, replicas: number): string {
  const labels = { app: name }
  return JSON.stringify({
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name, namespace: 'default' },
    spec: {
      replicas, selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          terminationGracePeriodSeconds: 1,
          containers: [{
            name: 'web', image: 'test/web',
            ports: [{ containerPort: 8080, name: 'web' }],
            env: [{ name: 'LISTEN', value: '0.0.0.0' }, { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
            readinessProbe: { httpGet: { path: '/who', port: 'web' }, periodSeconds: 1 },
          }],
        },
      },
    },
  })
}

function service(name: string, selector: string): string {
  return JSON.stringify({
    apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default' },
    spec: { selector: { app: selector }, ports: [{ name: 'http', port: 80, targetPort: 'web' }] },
  })
}

t.test('a Service: cluster IP, Endpoints, the proxy over the Ready pods, names and links inside a pod', async (t) => {
  const dir = await mkdtemp(join(SIM_ROOT, 'kube-sim-svc-'))
  await chmod(dir, 0o711)
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'web.mjs'), SERVER)
  const cluster = await startCluster({ dataDir: join(dir, 'data'), nodes: { management: 2 }, backoffBaseMs: 200, images: { 'test/web': [process.execPath, join(dir, 'web.mjs')] } })
  t.teardown(() => cluster.stop())
  const kubeconfig = join(dir, 'kubeconfig')
  await cluster.writeKubeconfig(kubeconfig)
  const kubectl = async (...args: string[]): Promise<string> => (await run(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { timeout: 60_000 })).stdout
  const apply = (manifest: string): Promise<string> => new Promise((resolve, reject) => {
    const child = execFile(KUBECTL, ['--kubeconfig', kubeconfig, 'apply', '-f', '-'], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)))
    child.stdin?.end(manifest)
  })
  const kinds = kindsOf(cluster.store)

  await apply(service('web', 'web'))
  await apply(deployment('web', 2))
  const ip = (await kubectl('get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}')).trim()
  t.match(ip, /^127\.\d+\.\d+\.\d+$/, 'the cluster IP is on the stand-in\'s loopback service subnet')

  await waitFor(() => ((cluster.store.get(kinds.endpoints, 'default', 'web')?.subsets as Array<{ addresses?: unknown[] }> | undefined)?.[0]?.addresses?.length ?? 0) === 2, 'two Ready endpoints', 30_000)
  const eps = JSON.parse(await kubectl('get', 'endpoints', 'web', '-o', 'json'))
  const podIPs = JSON.parse(await kubectl('get', 'pods', '-l', 'app=web', '-o', 'json')).items.map((p: { status: { podIP: string } }) => p.status.podIP).sort()
  t.same(eps.subsets[0].addresses.map((a: { ip: string }) => a.ip).sort(), podIPs, 'the Endpoints list the pods\' IPs')
  t.same(eps.subsets[0].ports, [{ name: 'http', port: 8080, protocol: 'TCP' }], 'the named targetPort resolved to the container port')

  const seen = new Set<string>()
  for (let i = 0; i < 8; i++) seen.add((await get(`http://${ip}/who`)).body)
  t.equal(seen.size, 2, `connections to ${ip}:80 reach both pods (${[...seen].join(', ')})`)

  // Inside a pod: the names of the Service in every form, and its link variables.
  const podIP = podIPs[0] as string
  for (const name of ['web', 'web.default', 'web.default.svc', 'web.default.svc.cluster.local']) {
    t.same(await get(`http://${podIP}:8080/resolve?name=${name}`), { status: 200, body: ip }, `a pod resolves ${name}`)
  }
  t.equal((await get(`http://${podIP}:8080/env?name=WEB_SERVICE_HOST`)).body, ip, 'WEB_SERVICE_HOST is set in the pod')
  t.equal((await get(`http://${podIP}:8080/env?name=WEB_SERVICE_PORT_HTTP`)).body, '80', 'WEB_SERVICE_PORT_HTTP is set')
  t.match((await get(`http://${podIP}:8080/env?name=KUBECONFIG`)).body, /\/serviceaccount\/kubeconfig$/, 'a pod with a service-account token gets its own kubeconfig (KUBECONFIG)')

  // A Service made after the pod started: its name resolves there too (the hosts file follows), no restart.
  await apply(service('later', 'web'))
  const later = (await kubectl('get', 'service', 'later', '-o', 'jsonpath={.spec.clusterIP}')).trim()
  t.not(later, ip, 'each Service has its own cluster IP')
  await waitFor(async () => (await get(`http://${podIP}:8080/resolve?name=later.default.svc.cluster.local`)).body === later, 'the new name in the pod', 10_000)
  t.equal((await get(`http://${podIP}:8080/resolve?name=nothing-here.default.svc`)).status, 502, 'an unknown name does not resolve')

  // No Ready endpoint: the Service refuses, as iptables-mode kube-proxy does; back with a pod, it answers again.
  await kubectl('scale', 'deployment', 'web', '--replicas=0')
  await waitFor(() => cluster.store.get(kinds.endpoints, 'default', 'web')?.subsets === undefined, 'empty Endpoints', 30_000)
  await waitFor(async () => (await refused(ip, 80)) || undefined, 'the service port refusing', 5_000)
  t.pass('a Service without endpoints refuses connections')
  await kubectl('scale', 'deployment', 'web', '--replicas=1')
  await waitFor(async () => (await get(`http://${ip}/who`).catch(() => ({ status: 0 }))).status === 200, 'the Service answering again', 30_000)
  t.pass('a Ready pod makes it answer again')

  // The Service goes: its Endpoints go with it and its address stops answering.
  await kubectl('delete', 'service', 'web')
  await waitFor(() => cluster.store.get(kinds.endpoints, 'default', 'web') === undefined, 'the Endpoints removed', 10_000)
  await waitFor(async () => (await refused(ip, 80)) || undefined, 'the deleted Service\'s port closed', 5_000)
  t.pass('a deleted Service takes its Endpoints and its port with it')
})
