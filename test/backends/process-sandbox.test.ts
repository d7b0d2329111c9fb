import { spawn, spawnSync } from 'node:child_process'
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import t from 'tap'
import { ProcessBackend } from '../../backends/process/process.js'
import { Spawner } from '../../backends/process/spawner/client.js'
import { NsMounter } from '../../backends/process/spawner/mounter.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const MOUNTER = join(ROOT, 'backends', 'process', 'spawner', 'mounter.pl')

/** A mount namespace (and its pid) holding `dir` at `at`, until teardown. */
async function namespaceWith(t: Tap, dir: string, at: string): Promise<number> {
  const ns = spawn('unshare', ['--mount', '--net', '--pid', '--fork', '--kill-child', '--', 'sh', '-c', `mkdir -p ${at} && mount --bind -o ro ${dir} ${at} && echo up && exec sleep 600`], { stdio: ['ignore', 'pipe', 'inherit'], detached: true })
  t.teardown(async () => {
    if (ns.exitCode !== null || ns.signalCode !== null) return
    const exited = new Promise((r) => ns.once('exit', r))
    process.kill(-ns.pid!, 'SIGKILL')
    await exited
  })
  await new Promise((resolve, reject) => { ns.stdout!.once('data', resolve); ns.once('exit', reject) })
  return ns.pid!
}

interface Tap { teardown(fn: () => unknown): void }

const loState = (pid: number): string => spawnSync('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', '-o', 'link', 'show', 'lo'], { encoding: 'utf8' }).stdout

t.test('the mounter binds a directory of a namespace onto another path of it, read-only, and only there; and sets its lo up', async (t) => {
  const m = NsMounter.create({ perl: '/usr/bin/perl', script: MOUNTER })
  if (m === undefined) throw new Error(`no mounter on ${process.arch}`)
  t.teardown(() => m.close())
  const src = await mkdtemp(join(tmpdir(), 'kdl-mnt-'))
  t.teardown(() => rm(src, { recursive: true, force: true }))
  await mkdir(join(src, 'fn'))
  await writeFile(join(src, 'fn', 'index.mjs'), 'mine')
  const stage = `/run/kindling-test-${process.pid}`
  await mkdir(`${stage}-dst`, { recursive: true })
  t.teardown(() => rm(`${stage}-dst`, { recursive: true, force: true }))
  const pid = await namespaceWith(t, src, stage)
  t.notMatch(loState(pid), /[<,]UP[,>]/, 'lo is down in a new network namespace')
  await m.bind(pid, `${stage}/fn`, `${stage}-dst`, true)
  t.match(loState(pid), /[<,]UP[,>]/, 'lo is up after the bind')
  t.equal(await readFile(`/proc/${pid}/root${stage}-dst/index.mjs`, 'utf8'), 'mine', 'visible inside the namespace')
  await t.rejects(writeFile(`/proc/${pid}/root${stage}-dst/x`, 'x'), { code: 'EROFS' }, 'read-only')
  await t.rejects(readFile(`${stage}-dst/index.mjs`), { code: 'ENOENT' }, 'the host namespace is untouched')
  await t.rejects(m.bind(999_999_999, '/a', '/b'), { code: 'KDL_ERR_BACKEND', message: /open \/proc\/999999999\/ns\/mnt/ })
  await t.rejects(m.bind(pid, `${stage}/missing`, `${stage}-dst`), { code: 'KDL_ERR_BACKEND', message: /bind .*missing/ })
})

t.test('an egress instance without slirp4netns fails with KDL_ERR_SANDBOX_UNAVAILABLE', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-sbx-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const spawner = new Spawner({ node: process.execPath, script: join(ROOT, 'backends', 'process', 'spawner', 'spawner.mjs') })
  const b = new ProcessBackend({
    platformId: 'sandboxtest', runDir: join(dir, 'run'), spawner, codeRoot: join(dir, 'code'), slirp4netns: join(dir, 'no-slirp4netns'),
    runtimes: { node: { command: process.execPath, serverDir: join(ROOT, 'runtimes', 'node'), serverFile: 'server.mjs' } },
    namespaces: true, startTimeoutMs: 10_000, log: pino({ level: 'silent' }),
  })
  t.teardown(() => b.close())
  await b.init()
  await t.rejects(b.start({ id: 'kdl-0000000000aa', runtime: 'node', pool: 'fn:x', memoryMb: 128, cpu: 1, pidsLimit: 64, network: 'egress' }), {
    code: 'KDL_ERR_SANDBOX_UNAVAILABLE', message: /no-slirp4netns .*scripts\/ensure-sandbox\.sh/,
  })
})
