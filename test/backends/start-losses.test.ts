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

async function backendWith(t: { teardown(fn: () => unknown): void }, server: string, cgroups?: CgroupDriver): Promise<ProcessBackend> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-loss-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'server'))
  await writeFile(join(dir, 'server', 'server.mjs'), server)
  const spawner = new Spawner({ node: process.execPath, script: join(ROOT, 'backends', 'process', 'spawner', 'spawner.mjs') })
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
