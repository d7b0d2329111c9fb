import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdtemp, readdir, readlink, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { request } from 'undici'
import { nodesOption } from '../../cli/kube-sim.js'
import { SIM_ROOT } from '../fixtures/kube.js'
import { startUp, stopChild } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 10's "done when", as a newcomer runs it: `kindling kube-sim` in one process, `kindling up --backend
// kubernetes --kubeconfig F` in another (the built CLI, `bin/kindling.mjs`), a function deployed and called.

/** Pids of live processes whose working directory is under `dir` (a pod's container runs in its own directory). */
async function processesIn(dir: string): Promise<number[]> {
  const out: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const cwd = await readlink(`/proc/${name}/cwd`).catch(() => '')
    if (cwd.startsWith(`${dir}/`)) out.push(Number(name))
  }
  return out
}

t.test('--nodes takes ROLE=N pairs and needs a runtime node', async (t) => {
  t.same(nodesOption('management=1,runtime=2,quarantine=1'), { management: 1, runtime: 2, quarantine: 1 })
  t.same(nodesOption('runtime=3'), { management: 0, runtime: 3, quarantine: 0 }, 'a role left out has no nodes')
  t.throws(() => nodesOption('management=1'), /at least one runtime node/)
  t.throws(() => nodesOption('workers=2'), /is not ROLE=N/)
})

t.test('kindling kube-sim writes a kubeconfig that kindling up --backend kubernetes serves functions from', async (t) => {
  const dir = await mkdtemp(join(SIM_ROOT, 'kdl-cli-sim-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // A directory as a user's usually is: others may pass through it (the pods run as 65534).
  await chmod(dir, 0o711)
  const sim = spawn(process.execPath, ['bin/kindling.mjs', 'kube-sim', '--nodes', 'management=1,runtime=1,quarantine=1', '--data-dir', join(dir, 'sim')], {
    env: { PATH: process.env['PATH'] ?? '', KINDLING_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => stopChild(sim))
  let kubeconfig: string | undefined
  const printed: string[] = []
  for await (const line of createInterface({ input: sim.stdout! })) {
    printed.push(line)
    const m = /^kubeconfig written to (\S+)/.exec(line)
    if (m?.[1] !== undefined) { kubeconfig = m[1]; break }
  }
  t.ok(kubeconfig !== undefined, `the kubeconfig path is printed (${printed.join(' | ')})`)
  t.match(printed[0], /^kube-sim API server on https:\/\/127\.0\.0\.1:\d+ \(nodes: kindling-management-0, kindling-quarantine-0, kindling-runtime-0\)/)

  const up = await startUp(join(dir, 'platform'), { KINDLING_BACKEND: 'kubernetes', KINDLING_KUBECONFIG: kubeconfig! })
  t.teardown(() => stopChild(up.child))
  const put = await request(`${up.url}/v1/functions/hello`, {
    method: 'PUT', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ runtime: 'node', code: 'export default () => "hi from a pod"' }),
  })
  t.equal(put.statusCode, 201, await put.body.text())
  const res = await request(`${up.url}/fn/hello`)
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'hi from a pod')
  // The function's pod and the runtime's pool (refilled after its pod was claimed: a start that may still be under way).
  const pods = await waitFor(async () => { const p = await processesIn(join(dir, 'sim')); return p.length >= 2 && p }, 'the function\'s pod and a pool pod running', 30_000)
  t.ok(pods.length >= 2, `the pods run as processes in the stand-in's directory (${pods.length})`)

  // Both stop cleanly on SIGTERM, and the stand-in takes every pod's process with it.
  await stopChild(up.child)
  t.equal(up.child.exitCode, 0, 'kindling up exits 0')
  await stopChild(sim)
  t.equal(sim.exitCode, 0, 'kindling kube-sim exits 0')
  t.same(await processesIn(join(dir, 'sim')), [], 'no process of the stand-in\'s pods is left')
})

// As root (the test command's user): unprivileged, every pod runs as the caller and nothing is refused.
t.test('a data directory its pods could not reach is refused at start, saying why', async (t) => {
  const dir = await mkdtemp(join(SIM_ROOT, 'kdl-cli-sim-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const sim = spawn(process.execPath, ['bin/kindling.mjs', 'kube-sim', '--nodes', 'runtime=1', '--data-dir', join(dir, 'sim')], {
    env: { PATH: process.env['PATH'] ?? '', KINDLING_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  sim.stderr!.on('data', (d: Buffer) => { err += d.toString() })
  const [code] = await once(sim, 'exit') as [number | null]
  t.equal(code, 1, 'kube-sim exits 1')
  t.match(err, new RegExp(`${dir} is not searchable by others \\(mode 0700\\); use a path under searchable directories`))
})
