import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, lstat, mkdtemp, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { HOST_BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'

/**
 * Tries what a hostile function would (issue 8): TCP connections, Unix sockets, reading paths. Answers
 * 'connected: <first bytes>' / 'read: <names>' or the error's code, per target.
 */
const PROBE = `
import { connect, createServer } from 'node:net'
import { readdir, readFile, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
const attempt = (opts) => new Promise((resolve) => {
  const s = connect(opts)
  let data = ''
  const done = (v) => { clearTimeout(timer); s.destroy(); resolve(v) }
  const timer = setTimeout(() => done('timeout'), 3000)
  s.on('connect', () => { s.write('GET /v1/functions HTTP/1.0\\r\\n\\r\\n'); setTimeout(() => done('connected: ' + data.slice(0, 40)), 300) })
  s.on('data', (d) => { data += d })
  s.on('end', () => done('connected: ' + data.slice(0, 40)))
  s.on('error', (e) => done(e.code ?? String(e)))
})
const read = async (p) => {
  try {
    if ((await stat(p)).isDirectory()) return 'read: ' + (await readdir(p)).join(',')
    return 'read: ' + (await readFile(p, 'utf8')).slice(0, 40)
  } catch (e) { return e.code ?? String(e) }
}
export default async (event) => {
  const q = event.json ?? {}
  const out = { tcp: {}, unix: {}, read: {} }
  for (const { host, port } of q.tcp ?? []) out.tcp[host + ':' + port] = await attempt({ host, port })
  for (const path of q.unix ?? []) out.unix[path] = await attempt({ path })
  for (const path of q.read ?? []) out.read[path] = await read(path)
  // The default gateway (the host, as this instance's network sees it), from the routing table.
  const route = (await readFile('/proc/net/route', 'utf8').catch(() => '')).split('\\n').map((l) => l.trim().split(/\\s+/)).find((f) => f[1] === '00000000')
  if (route !== undefined && q.gatewayPort !== undefined) {
    const gw = [0, 1, 2, 3].map((i) => parseInt(route[2].slice(6 - 2 * i, 8 - 2 * i), 16)).join('.')
    out.tcp['gateway ' + gw] = await attempt({ host: gw, port: q.gatewayPort })
  }
  out.own = await read(dirname(fileURLToPath(import.meta.url)))
  // Its own loopback answers (lo is up in its namespace).
  const srv = createServer((s) => s.end('self')).listen(0, '127.0.0.1')
  await new Promise((r) => srv.once('listening', r))
  out.self = await attempt({ host: '127.0.0.1', port: srv.address().port })
  srv.close()
  return out
}`

/** A function that listens on TCP on every address of its instance (kept: persistent mode). */
const LISTENER = `
import { createServer } from 'node:net'
import { networkInterfaces } from 'node:os'
let srv
export default async () => {
  if (srv === undefined) { srv = createServer((s) => s.end('instance')).listen(0, '0.0.0.0'); await new Promise((r) => srv.once('listening', r)) }
  const addrs = Object.values(networkInterfaces()).flat().filter((a) => a.family === 'IPv4' && !a.internal).map((a) => a.address)
  return { port: srv.address().port, addrs }
}`

const SECRET = (marker: string): string => `export const marker = '${marker}'\nexport default async () => ({ ok: true })`

interface ProbeResult { tcp: Record<string, string>; unix: Record<string, string>; read: Record<string, string>; own: string; self: string }

async function probe(p: TestPlatform, fn: string, body: { tcp?: Array<{ host: string; port: number }>; unix?: string[]; read?: string[]; gatewayPort?: number }): Promise<ProbeResult> {
  const res = await p.invoke(fn, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (res.status !== 200) throw new Error(`probe answered ${res.status}: ${res.text}`)
  return res.json() as ProbeResult
}

/** Every Unix socket under `dir` (the instances' sockets in the platform's run directory). */
async function socketsUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const ent of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, ent.name)
    if (ent.isDirectory()) out.push(...await socketsUnder(path))
    else if ((await lstat(path)).isSocket()) out.push(path)
  }
  return out
}

async function codeHashOf(p: TestPlatform, fn: string): Promise<string> {
  const res = await p.api('GET', `/v1/functions/${fn}`)
  const hash = res.json['codeHash']
  if (typeof hash !== 'string') throw new Error(`no codeHash for ${fn}: ${JSON.stringify(res.json)}`)
  return hash
}

function portOf(p: TestPlatform): number {
  return Number(new URL(p.url).port)
}

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`)
}

/**
 * An "outside" host on this machine: a network namespace joined to the host by a veth pair on a private
 * /24, with a TCP listener inside that answers a fixed greeting. Removed at teardown.
 */
async function outsideHost(t: Tap): Promise<{ host: string; port: number; greeting: string }> {
  const tag = randomBytes(3).toString('hex')
  const ns = `kdl-sbx-${tag}`
  const hostIf = `kdlsb${tag}h`
  const peerIf = `kdlsb${tag}p`
  const net = `10.213.${1 + (randomBytes(1)[0]! % 250)}`
  const greeting = `hello-from-outside-${tag}`
  sh('ip', ['netns', 'add', ns])
  t.teardown(() => { spawnSync('ip', ['link', 'del', hostIf]); spawnSync('ip', ['netns', 'del', ns]) })
  sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', peerIf])
  sh('ip', ['link', 'set', peerIf, 'netns', ns])
  sh('ip', ['addr', 'add', `${net}.1/24`, 'dev', hostIf])
  sh('ip', ['link', 'set', hostIf, 'up'])
  sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${net}.2/24`, 'dev', peerIf])
  sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', peerIf, 'up'])
  sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'])
  const script = `require('node:net').createServer((s) => s.end(${JSON.stringify(greeting)})).listen(8080, '${net}.2', () => console.log('ready'))`
  const listener = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(async () => {
    if (listener.exitCode !== null || listener.signalCode !== null) return
    const exited = new Promise((r) => listener.once('exit', r))
    listener.kill('SIGKILL')
    await exited
  })
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: listener.stdout! }).once('line', () => resolve())
    listener.once('exit', (code) => reject(new Error(`the outside listener exited (code ${code})`)))
  })
  return { host: `${net}.2`, port: 8080, greeting }
}

interface Tap { teardown(fn: () => unknown): void }

const refused = /^(?!connected)/
const unreadable = /^(?!read)/

for (const backend of HOST_BACKENDS) {
 t.test(`on the ${backend} backend`, async (t) => {
  t.test('a network: none function reaches neither the platform nor another instance nor other code', async (t) => {
    // Outside /tmp (an instance's private /tmp would hide it anyway) and world-readable, as `kindling up`
    // makes ./data: only the namespace keeps it out of reach.
    const dataDir = await mkdtemp('/var/tmp/kdl-sbx-')
    await chmod(dataDir, 0o755)
    const p = await startPlatform(t, { KINDLING_BACKEND: backend }, dataDir)
    t.teardown(async () => { await p.close(); await rm(dataDir, { recursive: true, force: true }) })
    const marker = `marker-${randomBytes(4).toString('hex')}`
    t.equal((await p.deploy('secret', { runtime: 'node', code: SECRET(marker) })).status, 201)
    t.equal((await p.invoke('secret')).status, 200, 'the other function has an instance of its own')
    t.equal((await p.deploy('probe', { runtime: 'node', code: PROBE })).status, 201)
    const hash = await codeHashOf(p, 'secret')
    const cache = join(p.dataDir, 'code')
    const sockets = await socketsUnder(join(p.dataDir, 'run'))
    t.ok(sockets.length >= 2, `other instances' sockets exist on the host (${sockets.length})`)
    const port = portOf(p)
    const reads = [
      cache, join(cache, hash), join(cache, hash, 'index.mjs'), join(p.dataDir, 'store'), p.dataDir,
      '/run/kindling/code/cache', `/run/kindling/code/cache/${hash}`, `/run/kindling/code/${hash}`, `/code/${hash}`,
    ]
    const r = await probe(p, 'probe', { tcp: [{ host: '127.0.0.1', port }, { host: 'localhost', port }], unix: sockets, read: reads })
    t.match(r.own, /^read: .*index\.mjs/, 'the function reads its own code')
    t.match(r.self, /^connected: self/, 'its own loopback answers')
    for (const [target, got] of Object.entries(r.tcp)) t.match(got, refused, `no connection to the platform's port at ${target} (${got})`)
    for (const [path, got] of Object.entries(r.unix)) t.match(got, refused, `no connection to the instance socket ${path} (${got})`)
    for (const [path, got] of Object.entries(r.read)) {
      t.match(got, unreadable, `cannot read ${path} (${got})`)
      t.notMatch(got, marker, `the other function's code is not in ${path}`)
    }
  })

  t.test('a network: egress function reaches an outside listener, but neither the platform nor another instance', async (t) => {
    const outside = await outsideHost(t)
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const dep = await p.deploy('probe-out', { runtime: 'node', code: PROBE, network: 'egress' })
    t.equal(dep.status, 201, JSON.stringify(dep.json))
    t.equal((await p.deploy('listener-out', { runtime: 'node', code: LISTENER, network: 'egress', mode: 'persistent' })).status, 201)
    const other = (await p.invoke('listener-out')).json() as { port: number; addrs: string[] }
    t.ok(other.addrs.length > 0, `the other egress instance has an address (${other.addrs.join(', ')})`)
    const port = portOf(p)
    // 10.0.2.2: slirp4netns's alias of the host's loopback; 172.17.0.1: the docker bridge's gateway (the host).
    const platform = [{ host: '127.0.0.1', port }, { host: '10.0.2.2', port }, { host: '172.17.0.1', port }]
    const r = await probe(p, 'probe-out', { tcp: [outside, ...platform, ...other.addrs.map((host) => ({ host, port: other.port }))], read: [join(p.dataDir, 'store'), join(p.dataDir, 'code'), '/etc/resolv.conf'], gatewayPort: port })
    const gateway = Object.keys(r.tcp).find((k) => k.startsWith('gateway '))
    t.ok(gateway !== undefined, 'the instance has a default route (its gateway is the host)')
    t.match(r.tcp[gateway ?? ''], refused, `no connection to the platform's port at the ${gateway} (${r.tcp[gateway ?? '']})`)
    t.equal(r.tcp[`${outside.host}:${outside.port}`], `connected: ${outside.greeting}`, 'the outside listener answered')
    for (const { host } of platform) t.match(r.tcp[`${host}:${port}`], refused, `no connection to the platform's port at ${host} (${r.tcp[`${host}:${port}`]})`)
    for (const path of [join(p.dataDir, 'store'), join(p.dataDir, 'code')]) t.match(r.read[path], unreadable, `cannot read ${path} (${r.read[path]})`)
    for (const host of other.addrs) t.match(r.tcp[`${host}:${other.port}`], refused, `no connection to the other instance at ${host}:${other.port} (${r.tcp[`${host}:${other.port}`]})`)
    t.match(r.self, /^connected: self/, 'its own loopback answers')
    if (backend === 'process') t.equal(r.read['/etc/resolv.conf'], 'read: nameserver 10.0.2.3\n', 'it resolves names through slirp4netns')
  })
 })
}
