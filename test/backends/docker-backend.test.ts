// The docker backend against a real engine (scripts/ensure-docker.sh installs and starts one) and the real
// node runtime server, in an image built from this host's node binary.
import { cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import t from 'tap'
import type { InstanceExit, InstanceRequest } from '../../common/backend.js'
import { DockerBackend, EGRESS_NETWORK, type DockerBackendOptions } from '../../backends/docker/docker.js'
import { buildNodeImage, ensureNodeImage, nodeImageTag, removeStaleNodeImages } from '../../backends/docker/images/node-image.js'
import { NODE_SERVER_DIR, call, invoke, loadFunction, localDocker, median, removeContainers, within, writeFunction } from '../fixtures/docker.js'

const engine = await localDocker()
if ('skip' in engine) {
  t.test('docker backend', { skip: engine.skip }, () => {})
} else {
  const { docker } = engine
  const PREFIX = `dk${process.pid}x`
  let seq = 0
  const nextId = (): string => `${PREFIX}${++seq}`
  const work = await mkdtemp('/tmp/kdl-dk-')
  const runDir = join(work, 'run')
  const codeRoot = join(work, 'code')
  const dataDir = join(work, 'data')
  await mkdir(codeRoot, { recursive: true })
  await mkdir(dataDir, { recursive: true })
  await writeFile(join(dataDir, 'store.json'), '{"secret":true}')
  const brokenTag = `kindling/runtime-test-broken:${process.pid}`
  const backends: DockerBackend[] = []
  // The platform's own environment must never reach an instance.
  process.env['KINDLING_API_TOKEN'] = 'platform-secret'

  const progress: string[] = []
  const ensured = await ensureNodeImage({ docker, serverDir: NODE_SERVER_DIR, log: (msg) => progress.push(msg) })
  const image = ensured.tag

  const newBackend = (over: Partial<DockerBackendOptions> = {}): DockerBackend => {
    const b = new DockerBackend({ platformId: 'dockertest', docker, image, runDir, codeRoot, user: '65534:65534', startTimeoutMs: 15_000, ...over })
    backends.push(b)
    return b
  }
  const request = (over: Partial<InstanceRequest> = {}): InstanceRequest => ({
    id: nextId(), runtime: 'node', pool: 'generic:node', memoryMb: 128, cpu: 0.5, pidsLimit: 64, network: 'none', ...over,
  })
  /** Exits a backend reports, by instance id, awaitable before or after they happen. */
  const exitsOf = (b: DockerBackend): ((id: string) => Promise<InstanceExit>) => {
    const seen = new Map<string, InstanceExit>()
    const waiting = new Map<string, (e: InstanceExit) => void>()
    b.onExit((e) => { seen.set(e.id, e); waiting.get(e.id)?.(e) })
    return (id) => {
      const known = seen.get(id)
      return known !== undefined ? Promise.resolve(known) : new Promise((resolve) => waiting.set(id, resolve))
    }
  }
  /** Resolves when the engine reports `event` for the instance's container (subscribed before the cause). */
  const engineEvent = async (id: string, event: string): Promise<() => Promise<void>> => {
    const stream = await docker.getEvents({ filters: { label: [`kindling.instance=${id}`], event: [event] } }) as Readable
    const seen = new Promise<void>((resolve) => stream.once('data', () => resolve()))
    return async () => {
      try { await within(seen, 15_000, `docker ${event} of ${id}`) } finally { stream.destroy() }
    }
  }
  const containerOf = (id: string): ReturnType<typeof docker.getContainer> => docker.getContainer(`kindling-${id}`)
  const gone = (id: string): Promise<boolean> => containerOf(id).inspect().then(() => false, (err: { statusCode?: number }) => err.statusCode === 404)

  t.teardown(async () => {
    for (const b of backends) await b.close().catch(() => {})
    await removeContainers(docker, PREFIX)
    await docker.getImage(brokenTag).remove({ force: true }).catch(() => {})
    await rm(work, { recursive: true, force: true })
  })

  t.test('runtime image', async (t) => {
    t.test('is tagged by a hash of the server files and node version, so a changed server gets a new tag', async (t) => {
      const copy = join(work, 'server-copy')
      await cp(NODE_SERVER_DIR, copy, { recursive: true })
      t.equal(await nodeImageTag(copy), image, 'same files, same tag')
      t.match(image, /^kindling\/runtime-node:[0-9a-f]{12}$/)
      await writeFile(join(copy, 'server.mjs'), `${await readFile(join(copy, 'server.mjs'), 'utf8')}\n// changed\n`)
      t.not(await nodeImageTag(copy), image, 'changed server, new tag')
    })

    t.test('ensureNodeImage builds only when the tag is missing', async (t) => {
      if (ensured.built) t.comment(`node runtime image built in ${ensured.ms} ms, ${(ensured.size / 1048576).toFixed(1)} MiB`)
      const again = await ensureNodeImage({ docker, serverDir: NODE_SERVER_DIR })
      t.equal(again.built, false)
      t.equal(again.tag, image)
      t.ok(progress.length > 0, 'progress went through the log callback')
    })

    t.test('runs the server from the host node binary as nobody, with no shell', async (t) => {
      const info = await docker.getImage(image).inspect()
      t.equal(info.Config.User, '65534:65534')
      t.same(info.Config.Entrypoint, ['/usr/local/bin/node', '/opt/kindling/runtime/server.mjs'])
      t.same(info.Config.Env, ['PATH=/usr/local/bin:/usr/bin:/bin'])
      t.ok(info.Size < 200 * 1048576, `image is small (${(info.Size / 1048576).toFixed(1)} MiB)`)
    })

    t.test('removeStaleNodeImages removes the other tags of the repository, not the one kept', async (t) => {
      const repo = `kindling/runtime-test-prune-${process.pid}`
      await docker.getImage(image).tag({ repo, tag: 'old' })
      await docker.getImage(image).tag({ repo, tag: 'current' })
      t.teardown(() => docker.getImage(`${repo}:current`).remove().catch(() => {}))
      const removed = await removeStaleNodeImages({ docker, repo, keep: `${repo}:current` })
      t.same(removed, [`${repo}:old`])
      t.ok(await docker.getImage(`${repo}:current`).inspect(), 'kept')
      t.ok(await docker.getImage(image).inspect(), 'the image itself stays under its own tag')
    })

    t.test('buildNodeImage imports a fresh root filesystem under any tag', async (t) => {
      const dir = join(work, 'broken-server')
      await mkdir(dir)
      await writeFile(join(dir, 'server.mjs'), [
        "if (process.env.BROKEN_MODE === 'hang') setInterval(() => {}, 1 << 30)",
        "else { console.error('boom: this runtime cannot start'); process.exit(3) }",
      ].join('\n'))
      const built = await buildNodeImage({ docker, serverDir: dir, tag: brokenTag })
      t.equal(built.built, true)
      t.equal(built.tag, brokenTag)
      t.comment(`buildNodeImage: ${built.ms} ms, ${(built.size / 1048576).toFixed(1)} MiB`)
    })
  })

  t.test('start answers health over the socket in the instance directory', async (t) => {
    const b = newBackend()
    const req = request({ pool: 'fn:hello', memoryMb: 96, pidsLimit: 48 })
    const h = await b.start(req)
    t.teardown(() => b.stop(req.id))
    t.same(h.address, { socketPath: join(runDir, req.id, 'rt.sock') })
    const res = await call(join(runDir, req.id, 'rt.sock'), 'GET', '/_/health')
    t.equal(res.status, 200)
    t.match(res.json, { state: 'generic', function: null })
    t.ok(h.pid !== undefined && h.pid > 0, 'host pid of the container')

    t.test('reports the container cgroups (v1 under /docker/<id> with the cgroupfs driver)', async (t) => {
      const info = await containerOf(req.id).inspect()
      t.ok(h.cgroup, 'cgroup located')
      if (h.cgroup?.version === 1) {
        t.equal(h.cgroup.paths['memory'], `/sys/fs/cgroup/memory/docker/${info.Id}`)
        t.equal((await readFile(join(h.cgroup.paths['memory']!, 'memory.limit_in_bytes'), 'utf8')).trim(), String(96 * 1048576))
        t.equal((await readFile(join(h.cgroup.paths['pids']!, 'pids.max'), 'utf8')).trim(), '48')
        t.equal((await readFile(join(h.cgroup.paths['cpu']!, 'cpu.cfs_quota_us'), 'utf8')).trim(), '50000')
      } else {
        t.ok(h.cgroup?.paths['unified'])
      }
    })

    t.test('docker inspect shows the limits, the hardening and the labels', async (t) => {
      const info = await containerOf(req.id).inspect()
      const hc = info.HostConfig
      t.equal(hc.Memory, 96 * 1048576)
      t.equal(hc.MemorySwap, 96 * 1048576)
      t.equal(hc.NanoCpus, 500_000_000)
      t.equal(hc.PidsLimit, 48)
      t.equal(hc.ReadonlyRootfs, true)
      t.same(hc.CapDrop, ['ALL'])
      t.same(hc.SecurityOpt, ['no-new-privileges'])
      t.equal(hc.NetworkMode, 'none')
      t.equal(hc.AutoRemove, false)
      t.match(hc.Tmpfs, { '/tmp': /size=64m/ })
      t.equal(info.Config.User, '65534:65534')
      t.match(info.Config.Labels, { 'kindling.instance': req.id, 'kindling.runtime': 'node', 'kindling.pool': 'fn:hello', 'kindling.function': 'hello' })
      const env = (info.Config.Env ?? []).map((e) => e.slice(0, e.indexOf('='))).sort()
      t.same(env, ['HOME', 'KINDLING_LISTEN', 'PATH', 'TMPDIR'], 'only the explicit environment')
    })
  })

  t.test('prepareCode + load: the function runs from the read-only /code', async (t) => {
    const b = newBackend()
    const req = request({ env: { GREETING: 'hi' } })
    const h = await b.start(req)
    t.teardown(() => b.stop(req.id))
    const src = await writeFunction(codeRoot, 'hello', "export default async (event) => ({ hello: event.json.name, greeting: process.env.GREETING })\n")
    const codeDir = await b.prepareCode(req.id, src)
    t.equal(codeDir, '/code')
    t.equal((await stat(join(runDir, `${req.id}-code`, 'index.mjs'))).ino, (await stat(join(src, 'index.mjs'))).ino, 'hard-linked on the same filesystem')
    const socketPath = (h.address as { socketPath: string }).socketPath
    const loaded = await loadFunction(socketPath, codeDir, 'hello')
    t.equal(loaded.status, 200, loaded.text)
    const res = await invoke(socketPath, { name: 'kindling' })
    t.equal(res.status, 200, res.text)
    t.same(res.json, { hello: 'kindling', greeting: 'hi' })
  })

  t.test('prepareCode refuses a directory outside the code root', async (t) => {
    const b = newBackend()
    const req = request()
    await b.start(req)
    t.teardown(() => b.stop(req.id))
    await t.rejects(b.prepareCode(req.id, dataDir), { code: 'KDL_ERR_BACKEND', message: /outside the code root/ })
  })

  t.test('an instance cannot write outside /tmp, see the host, reach a network or keep capabilities', async (t) => {
    const b = newBackend()
    const req = request()
    const h = await b.start(req)
    t.teardown(() => b.stop(req.id))
    const src = await writeFunction(codeRoot, 'sandbox', `
import fs from 'node:fs'
import os from 'node:os'
const attempt = (p) => { try { fs.writeFileSync(p, 'x'); return 'written' } catch (e) { return e.code } }
export default async (event) => ({
  writes: { code: attempt('/code/x'), etc: attempt('/etc/x'), root: attempt('/x'), runtime: attempt('/opt/kindling/runtime/x'), tmp: attempt('/tmp/x') },
  visible: Object.fromEntries(event.json.hostPaths.map((p) => [p, fs.existsSync(p)])),
  interfaces: Object.keys(os.networkInterfaces()),
  netdev: fs.readFileSync('/proc/net/dev', 'utf8').split('\\n').slice(2).map((l) => l.split(':')[0].trim()).filter(Boolean),
  uid: process.getuid(), gid: process.getgid(),
  env: Object.keys(process.env).sort(),
  status: Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\\n').filter((l) => /^(CapEff|CapPrm|CapBnd|NoNewPrivs):/.test(l)).map((l) => l.split(/:\\s+/))),
})
`)
    const socketPath = (h.address as { socketPath: string }).socketPath
    t.equal((await loadFunction(socketPath, await b.prepareCode(req.id, src), 'sandbox')).status, 200)
    const res = await invoke(socketPath, { hostPaths: [dataDir, join(dataDir, 'store.json'), runDir, '/var/lib/docker', '/work'] })
    t.equal(res.status, 200, res.text)
    const out = res.json as Record<string, Record<string, unknown> | unknown[] | number>
    t.same(out['writes'], { code: 'EROFS', etc: 'EROFS', root: 'EROFS', runtime: 'EROFS', tmp: 'written' })
    t.same(Object.values(out['visible'] as Record<string, boolean>), [false, false, false, false, false], 'no host path is visible')
    t.same(out['interfaces'], ['lo'])
    t.same(out['netdev'], ['lo'])
    t.equal(out['uid'], 65534)
    t.equal(out['gid'], 65534)
    t.notOk((out['env'] as string[]).includes('KINDLING_API_TOKEN'), 'the platform environment stays out')
    t.same(out['status'], { CapEff: '0000000000000000', CapPrm: '0000000000000000', CapBnd: '0000000000000000', NoNewPrivs: '1' })
  })

  t.test('network "egress" puts the instance on the kindling-egress bridge, with inter-container traffic off', async (t) => {
    const b = newBackend()
    const req = request({ network: 'egress' })
    await b.start(req)
    t.teardown(() => b.stop(req.id))
    t.equal((await containerOf(req.id).inspect()).HostConfig.NetworkMode, EGRESS_NETWORK)
    const net = await docker.getNetwork(EGRESS_NETWORK).inspect() as { Driver: string; Options: Record<string, string> }
    t.equal(net.Driver, 'bridge')
    t.equal(net.Options['com.docker.network.bridge.enable_icc'], 'false')
  })

  t.test('stop removes the container and its directories, and is idempotent', async (t) => {
    const b = newBackend()
    const req = request()
    await b.start(req)
    await b.stop(req.id)
    t.ok(await gone(req.id), 'container removed')
    await t.rejects(stat(join(runDir, req.id)), { code: 'ENOENT' })
    await t.rejects(stat(join(runDir, `${req.id}-code`)), { code: 'ENOENT' })
    await t.resolves(b.stop(req.id), 'second stop')
    await t.resolves(b.stop(`${PREFIX}unknown`), 'unknown id')
    await t.resolves(Promise.all([b.stop(req.id), b.stop(req.id)]), 'concurrent stops')
    t.equal(await b.exitReason(req.id), 'stopped')
  })

  t.test('list finds a container left by an earlier backend, and stop reaps it', async (t) => {
    const first = newBackend()
    const req = request({ pool: 'fn:orphan' })
    await first.start(req)
    const second = newBackend()
    const seen = await second.list()
    t.match(seen.find((c) => c.id === req.id), { id: req.id, pool: 'fn:orphan', runtime: 'node' })
    await second.stop(req.id)
    t.ok(await gone(req.id), 'container removed')
    t.notOk((await second.list()).some((c) => c.id === req.id))
    await t.resolves(first.stop(req.id), 'the first backend stops it idempotently')
  })

  t.test('a container killed from outside fires onExit "crashed"', async (t) => {
    const b = newBackend()
    const exitOf = exitsOf(b)
    const req = request()
    await b.start(req)
    const destroyed = await engineEvent(req.id, 'destroy')
    await containerOf(req.id).kill()
    const exit = await within(exitOf(req.id), 15_000, 'onExit')
    t.match(exit, { id: req.id, reason: 'crashed', code: 137, signal: 'SIGKILL' })
    t.equal(await b.exitReason(req.id), 'crashed')
    await destroyed()
    t.pass('the backend removed the dead container')
    await b.stop(req.id)
    t.equal(await b.exitReason(req.id), 'crashed', 'the reason outlives the removal')
  })

  t.test('a function allocating past memoryMb fires onExit "oom" and exitReason answers "oom"', async (t) => {
    const b = newBackend()
    const exitOf = exitsOf(b)
    const req = request({ memoryMb: 64 })
    const h = await b.start(req)
    const src = await writeFunction(codeRoot, 'hog', `
export default async () => { const keep = []; for (let i = 0; i < 64; i++) keep.push(Buffer.alloc(8 << 20, 1)); return keep.length }
`)
    const socketPath = (h.address as { socketPath: string }).socketPath
    t.equal((await loadFunction(socketPath, await b.prepareCode(req.id, src), 'hog')).status, 200)
    await t.rejects(invoke(socketPath), 'the call dies with the instance')
    t.equal(await b.exitReason(req.id), 'oom')
    const exit = await within(exitOf(req.id), 15_000, 'onExit')
    t.match(exit, { id: req.id, reason: 'oom', code: 137 })
    await b.stop(req.id)
    t.equal(await b.exitReason(req.id), 'oom', 'the reason outlives the removal')
  })

  t.test('a quarantined instance runs under its own cgroup parent with a small CPU share', async (t) => {
    const b = newBackend()
    const req = request({ quarantine: true })
    const h = await b.start(req)
    t.teardown(() => b.stop(req.id))
    const info = await containerOf(req.id).inspect()
    t.equal(info.HostConfig.CgroupParent, '/kindling-quarantine')
    t.equal(info.HostConfig.CpuShares, 64)
    t.equal(info.Config.Labels['kindling.quarantine'], 'true')
    if (h.cgroup?.version === 1) t.equal(h.cgroup.paths['cpu'], `/sys/fs/cgroup/cpu/kindling-quarantine/${info.Id}`)
  })

  t.test('setCpu changes the CPU quota of a running instance', async (t) => {
    const b = newBackend()
    const req = request({ cpu: 1 })
    const h = await b.start(req)
    t.teardown(() => b.stop(req.id))
    await b.setCpu(req.id, 0.25)
    t.equal((await containerOf(req.id).inspect()).HostConfig.NanoCpus, 250_000_000)
    if (h.cgroup?.version === 1) {
      t.equal((await readFile(join(h.cgroup.paths['cpu']!, 'cpu.cfs_quota_us'), 'utf8')).trim(), '25000')
    }
    await t.rejects(b.setCpu(`${PREFIX}unknown`, 1), { code: 'KDL_ERR_BACKEND' })
  })

  t.test('a runtime that exits during start fails the start with its output and leaves nothing behind', async (t) => {
    const b = newBackend({ startTimeoutMs: 60_000 })
    const req = request({ image: brokenTag, env: { BROKEN_MODE: 'crash' } })
    await t.rejects(b.start(req), { code: 'KDL_ERR_BACKEND', message: /exited during start.*boom: this runtime cannot start/s })
    t.notOk((await b.list()).some((c) => c.id === req.id), 'container removed')
    await t.rejects(stat(join(runDir, req.id)), { code: 'ENOENT' })
  })

  t.test('a runtime that never listens fails the start after startTimeoutMs and is removed', async (t) => {
    const b = newBackend({ startTimeoutMs: 1_500 })
    const req = request({ image: brokenTag, env: { BROKEN_MODE: 'hang' } })
    await t.rejects(b.start(req), { code: 'KDL_ERR_BACKEND', message: /did not answer its health check within 1500 ms/ })
    t.notOk((await b.list()).some((c) => c.id === req.id), 'container removed')
  })

  t.test('a missing image is a KDL_ERR_BACKEND naming it', async (t) => {
    const b = newBackend()
    await t.rejects(b.start(request({ image: 'kindling/runtime-node:does-not-exist' })), { code: 'KDL_ERR_BACKEND', message: /is missing/ })
  })

  t.test('bad instance ids are refused before anything touches the disk', async (t) => {
    const b = newBackend()
    await t.rejects(b.start(request({ id: '../escape' })), { code: 'KDL_ERR_BACKEND' })
    await t.rejects(b.stop('a/b'), { code: 'KDL_ERR_BACKEND' })
  })

  t.test('close stops every instance the backend started; start afterwards is refused', async (t) => {
    const b = newBackend()
    const ids = [request(), request()]
    await Promise.all(ids.map((r) => b.start(r)))
    await b.close()
    for (const r of ids) t.ok(await gone(r.id), `${r.id} removed`)
    await t.rejects(b.start(request()), { code: 'KDL_ERR_BACKEND', message: /closed/ })
  })

  t.test('start→health over ten sequential starts (reported, not asserted)', async (t) => {
    const b = newBackend()
    const times: number[] = []
    for (let i = 0; i < 10; i++) {
      const req = request()
      const t0 = performance.now()
      await b.start(req)
      times.push(performance.now() - t0)
      await b.stop(req.id)
    }
    t.equal(times.length, 10)
    t.comment(`docker start→health ms: p50 ${median(times).toFixed(0)}, min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)}`)
  })
}
