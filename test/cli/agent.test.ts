import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { request } from 'undici'
import { stopChild } from '../fixtures/platform.js'

// `kindling agent` as the chart's DaemonSet runs it (the built CLI, bin/kindling.mjs), over a fabricated cgroup v2 tree
// (KINDLING_AGENT_CGROUP_ROOT): it prints where it listens, answers /healthz without and /v1 only with the token,
// finds a pod, stops on SIGTERM with 0, and refuses a root without a cgroup hierarchy.

const UID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'

t.test('kindling agent serves from KINDLING_* and stops on SIGTERM', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'kdl-cli-agent-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  await writeFile(join(root, 'cgroup.controllers'), 'cpu memory pids\n')
  await mkdir(join(root, `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID.replace(/-/g, '_')}.slice`), { recursive: true })
  const agent = spawn(process.execPath, ['bin/kindling.mjs', 'agent', '--port', '0', '--host', '127.0.0.1'], {
    env: { PATH: process.env['PATH'] ?? '', KINDLING_LOG_LEVEL: 'warn', KINDLING_AGENT_TOKEN: 'cli-agent-token-0123456789', KINDLING_AGENT_CGROUP_ROOT: root, KINDLING_NODE_NAME: 'n1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => stopChild(agent))
  let url: string | undefined
  for await (const line of createInterface({ input: agent.stdout! })) {
    const m = /^kindling agent on (http:\/\/\S+)/.exec(line)
    if (m?.[1] !== undefined) { url = m[1]; break }
  }
  if (url === undefined) throw new Error('no address printed')
  const health = await request(`${url}/healthz`)
  t.equal(health.statusCode, 200)
  t.match(await health.body.json(), { ok: true, node: 'n1', cgroup: { root, version: 2 } })
  t.equal((await request(`${url}/v1/sample`, { method: 'POST', body: '{"pods":[]}', headers: { 'content-type': 'application/json' } })).statusCode, 401)
  const put = await request(`${url}/v1/pods/${UID}/cpu`, {
    method: 'PUT', body: JSON.stringify({ cores: 0.5 }), headers: { 'content-type': 'application/json', authorization: 'Bearer cli-agent-token-0123456789' },
  })
  // The fabricated pod has no container groups: the quota goes on the pod's group (a plain file here).
  t.equal(put.statusCode, 200, await put.body.text())
  await stopChild(agent)
  t.equal(agent.exitCode, 0, 'exits 0 on SIGTERM')
})

t.test('kindling agent refuses a root without a cgroup hierarchy, saying so', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'kdl-cli-agent-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const agent = spawn(process.execPath, ['bin/kindling.mjs', 'agent', '--port', '0', '--cgroup-root', root], {
    env: { PATH: process.env['PATH'] ?? '', KINDLING_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => stopChild(agent))
  let stderr = ''
  agent.stderr!.on('data', (d: Buffer) => { stderr += String(d) })
  const [code] = await once(agent, 'exit') as [number]
  t.equal(code, 1)
  t.match(stderr, /KDL_ERR_BACKEND.*no cgroup hierarchy/)
})
