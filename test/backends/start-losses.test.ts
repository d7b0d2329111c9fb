import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import t from 'tap'
import { pidsOf } from '../../bench/chaos.js'
import { lostToKill } from '../../common/backend.js'
import { ProcessBackend } from '../../backends/process/process.js'
import { detectCgroups, type CgroupDriver } from '../../cgroups/index.js'
import { Spawner } from '../../backends/process/spawner/client.js'
import { waitFor } from '../fixtures/wait.js'

// How the process backend reports an instance lost during its start (issue 8): a SIGKILL from outside
// is marked as such (the executor retries it until the call's deadline); an exit of its own is not.
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

async function backendWith(t: { teardown(fn: () => unknown): void }, server: string, cgroups?: CgroupDriver, makeSpawner?: (opts: { node: string; script: string }) => Spawner): Promise<ProcessBackend> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-loss-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'server'))
  await writeFile(join(dir, 'server', 'server.mjs'), server)
  const spawnerOpts = { node: process.execPath, script: join(ROOT, 'backends', 'process', 'spawner', 'spawner.mjs') }
  const spawner = makeSpawner?.(spawnerOpts) ?? new Spawner(spawnerOpts)
  const b = new ProcessBackend({
    platformId: 'losstest', runDir: join(dir, 'run'), spawner, codeRoot: join(dir, 'code'),
    runtimes: { node: { command: process.execPath, serverDir: join(dir, 'server'), serverFile: 'server.mjs' } },
    namespaces: false, cgroups, startTimeoutMs: 30_000, log: pino({ level: 'silent' }),
  })
  t.teardown(() => b.close())
  await b.init()
  return b
}

const request = (id: string, memoryMb = 128) => ({ id, runtime: 'node', pool: 'generic:node', memoryMb, cpu: 1, pidsLimit: 64, network: 'none' as const })

t.test('an instance SIGKILLed while it starts fails its start as killed from outside', async (t) => {
  // A runtime that never listens: the start waits until the test kills it.
  const b = await backendWith(t, 'setInterval(() => {}, 1 << 30)\n')
  const id = 'kdl-00000000c0de'
  const start = b.start(request(id))
  start.catch(() => {})
  const [pid] = await waitFor(async () => (await pidsOf([id])).get(id), 'the starting instance to run')
  process.kill(pid!, 'SIGKILL')
  const err = await start.then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'KDL_ERR_BACKEND', message: /exited during start \(code null, signal SIGKILL\)/ })
  t.ok(lostToKill(err), 'marked: the next instance would not meet it')
})

t.test('an instance that exits by itself while it starts is not marked as killed', async (t) => {
  const b = await backendWith(t, 'process.exit(3)\n')
  const err = await b.start(request('kdl-00000000dead')).then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'KDL_ERR_BACKEND', message: /exited during start \(code 3, signal null\)/ })
  t.notOk(lostToKill(err), 'every instance of this runtime may do the same: the retries stay counted')
})

t.test('an instance its memory limit kills while it starts is not marked as killed from outside', async (t) => {
  const cgroups = await detectCgroups()
  if (cgroups === undefined) throw new Error('this test needs cgroups (run as root)')
  // A runtime that allocates until its cgroup's OOM killer SIGKILLs it, before it ever listens.
  const b = await backendWith(t, 'const held = []\nfor (;;) held.push(Buffer.alloc(1 << 20, 1))\n', cgroups)
  const err = await b.start(request('kdl-0000000000ff', 48)).then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'KDL_ERR_BACKEND', message: /signal SIGKILL\): out of memory/ })
  t.notOk(lostToKill(err), 'a start too big for its limit fails on every instance: the retries stay counted')
})

/** A spawner after whose spawn request the platform's event loop is blocked by `busy` (a check-phase callback). */
class BusySpawner extends Spawner {
  busy: (() => void) | undefined
  override spawn(req: Parameters<Spawner['spawn']>[0]): ReturnType<Spawner['spawn']> {
    const p = super.spawn(req)
    const busy = this.busy
    this.busy = undefined
    // After the request went out (a microtask of spawn), before the answers are read (the next poll phase).
    if (busy !== undefined) setImmediate(busy)
    return p
  }
}

t.test('an instance whose spawn and exit reach the platform together fails its start with its exit, and stops', async (t) => {
  // Chaos showed it (a kill the moment the process appears, on a busy platform): the spawner's "spawned"
  // and "exit" arrive in one IPC read, so the exit is emitted before the start's listeners exist.
  const dir = await mkdtemp(join(tmpdir(), 'kdl-batch-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const marker = join(dir, 'exiting')
  let spawner: BusySpawner | undefined
  const b = await backendWith(t, `import { writeFileSync } from 'node:fs'\nwriteFileSync(${JSON.stringify(marker)}, '')\nprocess.exit(3)\n`, undefined, (o) => (spawner = new BusySpawner(o)))
  await spawner!.ready()
  const id = 'kdl-0000000ba7c4'
  const { existsSync, readdirSync, readFileSync } = await import('node:fs')
  const alive = (): boolean => readdirSync('/proc').some((p) => /^\d+$/.test(p) && (() => { try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(id) } catch { return false } })())
  let spun = false
  spawner!.busy = () => {
    // The condition under test is a busy loop: the process comes and goes while this loop cannot read.
    const until = Date.now() + 10_000
    while (Date.now() < until && (!existsSync(marker) || alive())) { /* spin */ }
    const end = Date.now() + 200
    while (Date.now() < end) { /* the spawner's exit message lands in the pipe behind "spawned" */ }
    spun = existsSync(marker) && !alive()
  }
  const err = await b.start(request(id)).then(() => undefined, (e: unknown) => e)
  t.ok(spun, 'the process had come and gone before the platform read a word about it')
  t.match(err, { code: 'KDL_ERR_BACKEND', message: /exited during start \(code 3, signal null\)/ }, 'the exit, not the start timeout')
  await b.stop(id)
  t.notOk((await b.list()).some((i) => i.id === id), 'stop returned and removed it (it used to wait for an exit emitted before anyone listened)')
})
