import t from 'tap'
import { waitFor as poll } from '../fixtures/wait.js'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, rmdir, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import {
  CgroupV1Driver, CgroupV2Driver, detectCgroups, measureStatsCost, wrapCommand, type CgroupDriver, type CgroupRef, type CgroupStats,
} from '../../cgroups/index.js'

const MiB = 1024 * 1024
/** Children get PATH only: NODE_OPTIONS / NODE_EXTRA_CA_CERTS would slow node down and skew the limits. */
const CHILD_ENV = { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin' }
const PARENT = `kindling-test-${process.pid}`

const detected = await detectCgroups()
const v1: CgroupDriver | undefined = detected?.version === 1 ? detected : undefined
const skipV1 = v1 === undefined ? 'no writable cgroup v1 hierarchy on this host' : false

function real(): CgroupDriver {
  if (v1 === undefined) throw new Error('unreachable: test should have been skipped')
  return v1
}

/** Polls `read` until `ok` holds (bounded, the shared poll); resolves with the value that satisfied it. */
async function waitFor<T>(read: () => Promise<T>, ok: (v: T) => boolean, what: string, timeoutMs = 15_000): Promise<T> {
  let last: T | undefined
  const hit = await poll(async () => {
    last = await read()
    return ok(last) ? { v: last } : undefined
  }, `${what} (last value ${JSON.stringify(last)})`, timeoutMs)
  return hit.v
}

function spawnIn(driver: CgroupDriver, ref: CgroupRef, command: string, args: string[]): ChildProcess {
  const w = wrapCommand(driver.procsFiles(ref), command, args)
  const child = spawn(w.command, w.args, { env: CHILD_ENV, stdio: 'ignore' })
  child.on('error', () => undefined)
  return child
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  return once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }))
}

function alive(pid: number): boolean {
  try {
    // A zombie holds nothing but its pid and is reaped by its parent; count it as gone.
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

async function text(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).trim()
}

const cleanup: Array<() => Promise<unknown>> = []
t.teardown(async () => {
  for (const fn of cleanup.reverse()) await fn().catch(() => undefined)
  if (v1 === undefined) return
  for (const name of await v1.list(PARENT)) await v1.destroy(v1.refFor(PARENT, name)).catch(() => undefined)
  for (const dir of new Set(Object.values(v1.refFor(PARENT, 'x').paths).map((p) => dirname(p)))) {
    await rmdir(dir).catch(() => undefined)
  }
})

/** The real v1 hierarchies minus the freezer, to exercise destroy's plain kill loop. */
function withoutFreezer(): CgroupDriver {
  const paths = real().refFor(PARENT, 'x').paths
  const mount = (c: string): string => dirname(dirname(paths[c] ?? ''))
  const cpuacct = paths.cpuacct === undefined ? {} : { cpuacct: mount('cpuacct') }
  return new CgroupV1Driver({ mounts: { cpu: mount('cpu'), memory: mount('memory'), pids: mount('pids'), ...cpuacct } })
}

async function group(name: string, limits: { cpu: number; memoryBytes: number; pidsLimit: number }): Promise<CgroupRef> {
  const driver = real()
  const ref = await driver.create(PARENT, name, limits)
  cleanup.push(() => driver.destroy(ref))
  return ref
}

t.test('cgroup v1 (real hierarchy)', { skip: skipV1 }, async (t) => {
  t.test('create applies the cpu quota, the memory limit (+memsw) and the pids limit', async (t) => {
    const ref = await group('limits', { cpu: 0.5, memoryBytes: 64 * MiB, pidsLimit: 20 })
    const { cpu, memory, pids } = ref.paths
    if (cpu === undefined || memory === undefined || pids === undefined) throw new Error('ref lacks a controller')
    t.equal(await text(join(cpu, 'cpu.cfs_period_us')), '100000')
    t.equal(await text(join(cpu, 'cpu.cfs_quota_us')), '50000')
    t.equal(await text(join(memory, 'memory.limit_in_bytes')), String(64 * MiB))
    if (existsSync(join(memory, 'memory.memsw.limit_in_bytes'))) {
      t.equal(await text(join(memory, 'memory.memsw.limit_in_bytes')), String(64 * MiB), 'no swap escape')
    }
    t.equal(await text(join(pids, 'pids.max')), '20')
    t.equal(ref.version, 1)
  })

  t.test('a child started through procsFiles lands in the group and shows in stats', async (t) => {
    const driver = real()
    const ref = await group('sleeper', { cpu: 1, memoryBytes: 64 * MiB, pidsLimit: 20 })
    const child = spawnIn(driver, ref, 'sleep', ['1000'])
    const pid = child.pid ?? 0
    await waitFor(() => driver.pids(ref), (p) => p.includes(pid), 'the child in cgroup.procs')
    const own = await text(`/proc/${pid}/cgroup`)
    for (const c of ['memory', 'pids', 'cpu']) t.match(own, new RegExp(`:${c}:/${PARENT}/sleeper$`, 'm'), `in the ${c} group`)
    const stats = await driver.stats(ref)
    t.ok(stats.memoryBytes > 0, `memory ${stats.memoryBytes} > 0`)
    t.ok(stats.pids >= 1, `pids ${stats.pids} >= 1`)
    await driver.destroy(ref)
    t.equal((await exited(child)).signal, 'SIGKILL')
  })

  t.test('a CPU-spinning child at 0.1 core is throttled and its usage grows', async (t) => {
    const driver = real()
    const ref = await group('spinner', { cpu: 0.1, memoryBytes: 256 * MiB, pidsLimit: 64 })
    const child = spawnIn(driver, ref, 'node', ['-e', 'for(;;){}'])
    const first = await waitFor(() => driver.stats(ref), (s) => s.throttledPeriods > 0 && s.cpuUsageNs > 0, 'throttling')
    const later = await waitFor(
      () => driver.stats(ref),
      (s) => s.cpuUsageNs > first.cpuUsageNs && s.nrPeriods >= first.nrPeriods + 5,
      'usage to grow over 5 more periods',
    )
    t.ok(later.throttledPeriods >= first.throttledPeriods && later.throttledNs > 0, 'throttle counters advance')
    // Per CFS period the group may run at most its quota (10 ms); allow 2 periods of slack for burst.
    const used = later.cpuUsageNs - first.cpuUsageNs
    const periods = later.nrPeriods - first.nrPeriods
    t.ok(used <= (periods + 2) * 10_000_000, `used ${used} ns over ${periods} periods stays within the quota`)
    await driver.destroy(ref)
    await exited(child)
  })

  t.test('a fork bomb stays within pidsLimit 10 and destroy leaves no process and no group', async (t) => {
    const driver = real()
    const ref = await group('forkbomb', { cpu: 0.5, memoryBytes: 64 * MiB, pidsLimit: 10 })
    const child = spawnIn(driver, ref, 'sh', ['-c', 'while :; do sleep 100 & done'])
    const pidsDir = ref.paths.pids ?? ''
    await waitFor(() => text(join(pidsDir, 'pids.events')), (e) => /^max [1-9]/m.test(e), 'the pids limit to be hit')
    const stats = await driver.stats(ref)
    const members = await driver.pids(ref)
    t.ok(stats.pids <= 10, `pids.current ${stats.pids} <= 10`)
    t.ok(members.length > 0 && members.length <= 10, `${members.length} processes`)
    await driver.destroy(ref)
    await exited(child)
    for (const dir of Object.values(ref.paths)) t.notOk(existsSync(dir), `${dir} removed`)
    await waitFor(async () => members.filter(alive), (left) => left.length === 0, 'every member to be gone')
  })

  // Every process retries fork() forever, so a killed slot is refilled at once: the race the freezer
  // closes. Run with and without the freezer hierarchy (the kill loop alone must also win).
  for (const withFreezer of [true, false]) {
    t.test(`destroy empties a group that keeps forking (${withFreezer ? 'freezer' : 'kill loop only'})`, async (t) => {
      const driver = withFreezer ? real() : withoutFreezer()
      const ref = await driver.create(PARENT, `respawn-${String(withFreezer)}`, { cpu: 0.5, memoryBytes: 128 * MiB, pidsLimit: 10 })
      cleanup.push(() => driver.destroy(ref))
      t.equal(ref.paths.freezer !== undefined, withFreezer)
      const child = spawnIn(driver, ref, 'perl', ['-e', 'while (1) { fork }'])
      await waitFor(() => driver.pids(ref), (p) => p.length >= 10, 'the group to fill up')
      await driver.destroy(ref)
      await exited(child)
      t.same(await driver.pids(ref), [])
      for (const dir of Object.values(ref.paths)) t.notOk(existsSync(dir), `${dir} removed`)
    })
  }

  t.test('a child allocating beyond 32 MiB is OOM-killed and counted', async (t) => {
    const driver = real()
    const ref = await group('oom', { cpu: 1, memoryBytes: 32 * MiB, pidsLimit: 64 })
    const child = spawnIn(driver, ref, 'node', ['-e', 'const a=[];for(;;)a.push(Buffer.alloc(1<<20,1))'])
    const exit = await exited(child)
    t.equal(exit.signal, 'SIGKILL')
    const stats: CgroupStats = await driver.stats(ref)
    t.ok(stats.oomKills >= 1, `oomKills ${stats.oomKills} >= 1`)
    t.ok(stats.memoryPeakBytes > 16 * MiB && stats.memoryPeakBytes <= 32 * MiB, `peak ${stats.memoryPeakBytes}`)
    await driver.destroy(ref)
  })

  t.test('setCpu changes the quota, 0 removes it', async (t) => {
    const driver = real()
    const ref = await group('throttle', { cpu: 0.5, memoryBytes: 0, pidsLimit: 0 })
    const quota = join(ref.paths.cpu ?? '', 'cpu.cfs_quota_us')
    await driver.setCpu(ref, 0.25)
    t.equal(await text(quota), '25000')
    await driver.setCpu(ref, 0)
    t.equal(await text(quota), '-1')
    t.equal(await text(join(ref.paths.pids ?? '', 'pids.max')), 'max', 'pidsLimit 0 means no limit')
    await t.rejects(driver.setCpu(ref, -1), { code: 'KDL_ERR_BACKEND' })
  })

  t.test('destroy is idempotent and resolves for a group that never existed', async (t) => {
    const driver = real()
    const ref = await group('twice', { cpu: 1, memoryBytes: 32 * MiB, pidsLimit: 10 })
    await driver.destroy(ref)
    await driver.destroy(ref)
    await driver.destroy(driver.refFor(PARENT, 'never-created'))
    for (const dir of Object.values(ref.paths)) t.notOk(existsSync(dir))
    t.same(await driver.pids(ref), [])
    await t.rejects(driver.stats(ref), { code: 'KDL_ERR_BACKEND' }, 'stats of a gone group rejects')
  })

  t.test('list finds the groups under a parent; a missing parent lists nothing', async (t) => {
    const driver = real()
    await group('list-a', { cpu: 1, memoryBytes: 0, pidsLimit: 0 })
    await group('list-b', { cpu: 1, memoryBytes: 0, pidsLimit: 0 })
    const names = await driver.list(PARENT)
    t.ok(names.includes('list-a') && names.includes('list-b'), names.join(','))
    t.same(await driver.list(`kindling-absent-${process.pid}`), [])
  })

  t.test('ensureParent creates a nested parent with a cpu share', async (t) => {
    const driver = real()
    await driver.ensureParent(`${PARENT}/quarantine`, { cpuShares: 64 })
    const cpuDir = dirname(driver.refFor(`${PARENT}/quarantine`, 'x').paths.cpu ?? '')
    t.equal(await text(join(cpuDir, 'cpu.shares')), '64')
    const ref = await driver.create(`${PARENT}/quarantine`, 'q1', { cpu: 0.5, memoryBytes: 0, pidsLimit: 0 })
    t.ok(existsSync(ref.paths.memory ?? ''))
    await driver.destroy(ref)
  })

  t.test('sampleCost: one stats() on a live group', async (t) => {
    const driver = real()
    const ref = await group('cost', { cpu: 1, memoryBytes: 64 * MiB, pidsLimit: 20 })
    const us = await measureStatsCost(driver, ref, 500)
    t.comment(`v1 stats() cost: ${us.toFixed(1)} µs per group`)
    t.ok(us > 0)
  })
})

t.test('bad input is rejected with KDL_ERR_BACKEND before any filesystem access', async (t) => {
  const driver = new CgroupV2Driver({ root: '/nonexistent-cgroup-root' })
  t.throws(() => driver.refFor('../etc', 'x'), { code: 'KDL_ERR_BACKEND' })
  t.throws(() => driver.refFor('kindling', 'a/b'), { code: 'KDL_ERR_BACKEND' })
  t.throws(() => driver.refFor('/abs', 'x'), { code: 'KDL_ERR_BACKEND' })
  await t.rejects(driver.create('kindling', 'x', { cpu: Number.NaN, memoryBytes: 0, pidsLimit: 0 }), { code: 'KDL_ERR_BACKEND' })
  await t.rejects(driver.stats(driver.refFor('kindling', 'x')), { code: 'KDL_ERR_BACKEND' })
})

t.test('wrapCommand: a failed join aborts before the command runs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-wrap-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const marker = join(dir, 'ran')
  const w = wrapCommand([join(dir, 'missing', 'cgroup.procs')], 'touch', [marker])
  const child = spawn(w.command, w.args, { env: CHILD_ENV, stdio: 'ignore' })
  const { code } = await exited(child)
  t.not(code, 0)
  t.notOk(existsSync(marker), 'the command never ran')
  const procs = join(dir, 'it\'s procs')
  const ok = wrapCommand([procs], 'touch', [marker])
  t.equal((await exited(spawn(ok.command, ok.args, { env: CHILD_ENV, stdio: 'ignore' }))).code, 0)
  t.ok(existsSync(marker), 'runs after the join, quoting survives')
  t.match(await text(procs), /^\d+$/)
})

async function tree(files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'kdl-cg-'))
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, rel)), { recursive: true })
    await writeFile(join(root, rel), content)
  }
  return root
}

t.test('detection', async (t) => {
  const made: string[] = []
  t.teardown(() => Promise.all(made.map((d) => rm(d, { recursive: true, force: true }))))
  const fixture = async (files: Record<string, string>): Promise<string> => {
    const root = await tree(files)
    made.push(root)
    return root
  }

  t.test('prefers v2 when the unified root lists cpu, memory and pids', async (t) => {
    const root = await fixture({ 'cgroup.controllers': 'cpuset cpu io memory pids\n', 'cgroup.subtree_control': '', 'cgroup.procs': '' })
    const driver = await detectCgroups({ root })
    t.equal(driver?.version, 2)
    t.same(driver?.refFor('kindling', 'i1').paths, { unified: join(root, 'kindling', 'i1') })
    t.equal(await detectCgroups({ root, only: 1 }), undefined)
  })

  t.test('falls back to v1 on a hybrid host whose unified mount has no controllers', async (t) => {
    const root = await fixture({
      'unified/cgroup.controllers': '', 'unified/cgroup.subtree_control': '',
      'cpu/cgroup.procs': '', 'cpuacct/cgroup.procs': '', 'memory/cgroup.procs': '', 'pids/cgroup.procs': '',
      'freezer/cgroup.procs': '', 'systemd/cgroup.procs': '',
    })
    const driver = await detectCgroups({ root })
    t.equal(driver?.version, 1)
    const ref = driver?.refFor('kindling', 'i1')
    t.same(Object.keys(ref?.paths ?? {}).sort(), ['cpu', 'cpuacct', 'freezer', 'memory', 'pids'])
    t.equal(driver?.procsFiles(ref ?? { version: 1, paths: {} }).length, 5)
  })

  t.test('a joint cpu,cpuacct hierarchy with systemd symlinks is joined once', async (t) => {
    const root = await fixture({ 'cpu,cpuacct/cgroup.procs': '', 'memory/cgroup.procs': '', 'pids/cgroup.procs': '' })
    await symlink('cpu,cpuacct', join(root, 'cpu'))
    await symlink('cpu,cpuacct', join(root, 'cpuacct'))
    const driver = await detectCgroups({ root })
    const ref = driver?.refFor('kindling', 'i1')
    t.equal(ref?.paths.cpu, ref?.paths.cpuacct)
    t.equal(ref?.paths.cpu, join(root, 'cpu,cpuacct', 'kindling', 'i1'))
    t.same(driver?.procsFiles(ref ?? { version: 1, paths: {} }).sort(), [
      join(root, 'cpu,cpuacct/kindling/i1/cgroup.procs'), join(root, 'memory/kindling/i1/cgroup.procs'),
      join(root, 'pids/kindling/i1/cgroup.procs'),
    ].sort())
  })

  t.test('is undefined without a pids hierarchy, or without any mount', async (t) => {
    const root = await fixture({ 'cpu/cgroup.procs': '', 'memory/cgroup.procs': '' })
    t.equal(await detectCgroups({ root }), undefined)
    t.equal(await detectCgroups({ root: join(root, 'nowhere') }), undefined)
  })
})

/** A v2 mount as the kernel would lay it out, with the group directory already populated. */
async function v2Fixture(): Promise<string> {
  return tree({
    'cgroup.controllers': 'cpuset cpu io memory hugetlb pids rdma misc\n',
    'cgroup.subtree_control': '\n',
    'cgroup.procs': '1\n',
    'kindling/g1/cgroup.procs': '',
    'kindling/g1/cgroup.kill': '',
    'kindling/g1/cgroup.freeze': '0\n',
    'kindling/g1/cpu.max': 'max 100000\n',
    'kindling/g1/memory.max': 'max\n',
    'kindling/g1/memory.swap.max': 'max\n',
    'kindling/g1/pids.max': 'max\n',
    'kindling/g1/cpu.stat': 'usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 40\nnr_throttled 7\nthrottled_usec 2500\nnr_bursts 0\nburst_usec 0\n',
    'kindling/g1/memory.current': '12345678\n',
    'kindling/g1/memory.peak': '23456789\n',
    'kindling/g1/memory.events': 'low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n',
    'kindling/g1/pids.current': '3\n',
  })
}

t.test('cgroup v2 (fixture tree)', async (t) => {
  const root = await v2Fixture()
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const killWrites = new Map<string, string>()
  const removeDir = async (dir: string): Promise<void> => {
    if (existsSync(join(dir, 'cgroup.kill'))) killWrites.set(dir, await text(join(dir, 'cgroup.kill')))
    await rm(dir, { recursive: true })
  }
  const driver = new CgroupV2Driver({ root, removeDir })
  const g1 = join(root, 'kindling', 'g1')

  t.test('create enables the controllers and writes cpu.max, memory.max, memory.swap.max and pids.max', async (t) => {
    const ref = await driver.create('kindling', 'g1', { cpu: 0.5, memoryBytes: 64 * MiB, pidsLimit: 32 })
    t.same(ref, { version: 2, paths: { unified: g1 } })
    t.equal(await text(join(root, 'cgroup.subtree_control')), '+cpu +memory +pids')
    t.equal(await text(join(root, 'kindling', 'cgroup.subtree_control')), '+cpu +memory +pids')
    t.equal(await text(join(g1, 'cpu.max')), '50000 100000')
    t.equal(await text(join(g1, 'memory.max')), String(64 * MiB))
    t.equal(await text(join(g1, 'memory.swap.max')), '0')
    t.equal(await text(join(g1, 'pids.max')), '32')
    t.same(driver.procsFiles(ref), [join(g1, 'cgroup.procs')])
  })

  t.test('create leaves memory.swap.max alone where the kernel has no swap accounting', async (t) => {
    const ref = await driver.create('kindling', 'g2', { cpu: 0, memoryBytes: 0, pidsLimit: 0 })
    const dir = ref.paths.unified ?? ''
    t.equal(await text(join(dir, 'cpu.max')), 'max 100000')
    t.equal(await text(join(dir, 'memory.max')), 'max')
    t.notOk(existsSync(join(dir, 'memory.swap.max')))
  })

  t.test('stats parses cpu.stat, memory.current, memory.peak, memory.events and pids.current', async (t) => {
    const stats = await driver.stats(driver.refFor('kindling', 'g1'))
    t.same(stats, {
      cpuUsageNs: 1_500_000, throttledPeriods: 7, throttledNs: 2_500_000, nrPeriods: 40,
      memoryBytes: 12345678, memoryPeakBytes: 23456789, oomKills: 2, pids: 3,
    })
    await rm(join(g1, 'memory.peak'))
    t.equal((await driver.stats(driver.refFor('kindling', 'g1'))).memoryPeakBytes, 12345678, 'no memory.peak: current')
    const us = await measureStatsCost(driver, driver.refFor('kindling', 'g1'), 500)
    t.comment(`v2 fixture stats() cost: ${us.toFixed(1)} µs per group`)
  })

  t.test('setCpu rewrites cpu.max; ensureParent maps shares onto cpu.weight', async (t) => {
    await driver.setCpu(driver.refFor('kindling', 'g1'), 0.05)
    t.equal(await text(join(g1, 'cpu.max')), '5000 100000')
    await driver.ensureParent('kindling-quarantine', { cpuShares: 128 })
    t.equal(await text(join(root, 'kindling-quarantine', 'cpu.weight')), '13')
    t.equal(await text(join(root, 'kindling-quarantine', 'cgroup.subtree_control')), '+cpu +memory +pids')
  })

  t.test('list, then destroy uses cgroup.kill and removes the group, idempotently', async (t) => {
    t.same(await driver.list('kindling'), ['g1', 'g2'])
    const ref = driver.refFor('kindling', 'g1')
    await driver.destroy(ref)
    t.equal(killWrites.get(g1), '1', 'wrote 1 to cgroup.kill before removing')
    t.notOk(existsSync(g1))
    await driver.destroy(ref)
    t.same(await driver.list('kindling'), ['g2'])
    t.same(await driver.list('nothing-here'), [])
  })
})
