import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startUp } from '../fixtures/platform.js'
import { startRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'
import { attemptRecorder, finished, runOf } from '../fixtures/workflows.js'

// Durable runs (issue 12): `kindling up` killed (SIGKILL, no chance to record anything) during a wait and during a
// task; the run resumes when the platform comes back, every step it had finished is not run again (one try each),
// and only the step in flight runs a second time (with the next attempt number, so the function can deduplicate).

interface Up { child: ChildProcess; url: string; api: (method: string, path: string, body?: unknown) => Promise<{ status: number; json: Record<string, unknown> }> }

async function up(t: Test, dataDir: string, env: Record<string, string>): Promise<Up> {
  const { child, url } = await startUp(dataDir, env)
  t.teardown(async () => { if (child.exitCode === null && child.signalCode === null) { child.kill('SIGTERM'); await once(child, 'exit') } })
  const api: Up['api'] = async (method, path, body) => {
    const res = await request(`${url}${path}`, { method: method as 'GET', headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? null : JSON.stringify(body) })
    const text = await res.body.text()
    return { status: res.statusCode, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
  }
  return { child, url, api }
}

async function kill(p: Up): Promise<void> {
  const gone = once(p.child, 'exit')
  p.child.kill('SIGKILL')
  await gone
}

const STEP = attemptRecorder()
const SLOW_STEP = attemptRecorder(1500)

const FLOW = {
  startAt: 'One',
  states: {
    One: { type: 'task', function: 'step', next: 'Nap' },
    Nap: { type: 'wait', seconds: 3, next: 'Two' },
    Two: { type: 'task', function: 'slow', next: 'Three' },
    Three: { type: 'task', function: 'step', end: true },
  },
}

for (const store of ['file', 'redis'] as const) {
  t.test(`${store}: a run killed during a wait and during a task resumes after each restart, each finished step run once`, async (t) => {
    const dataDir = await mkdtemp(join(tmpdir(), 'kdl-wf-restart-'))
    t.teardown(() => rm(dataDir, { recursive: true, force: true }))
    const env: Record<string, string> = store === 'file' ? {} : { KINDLING_STORE: 'redis', KINDLING_REDIS_URL: (await startRedis(t)).url }
    let p = await up(t, dataDir, env)
    for (const [name, code] of [['step', STEP], ['slow', SLOW_STEP]] as const) t.equal((await p.api('PUT', `/v1/functions/${name}`, { runtime: 'node', code })).status, 201)
    t.equal((await p.api('PUT', '/v1/workflows/durable', FLOW)).status, 201)
    const id = String((await p.api('POST', '/wf/durable?async=true', {})).json['id'])

    await waitFor(async () => (await runOf(p, id)).steps.some((s) => s.id === 'Nap' && s.status === 'waiting'), 'the run to wait')
    await kill(p)
    p = await up(t, dataDir, env)
    // Killed during the wait: the stored timer wakes it; then killed during the slow task.
    await waitFor(async () => (await runOf(p, id)).steps.some((s) => s.id === 'Two' && s.attempts === 1 && s.status === 'running'), 'the slow step to start', 20_000)
    await kill(p)
    p = await up(t, dataDir, env)
    const done = await finished(p, id, 30_000)
    t.equal(done.status, 'succeeded')
    t.same(done['output'], { One: 1, Two: 2, Three: 1 }, 'One ran once, Two was in flight at the kill and ran again as attempt 2, Three once')
    t.same(done.steps.map((s) => [s.id, s.status, s.attempts]), [['One', 'succeeded', 1], ['Nap', 'succeeded', 0], ['Two', 'succeeded', 2], ['Three', 'succeeded', 1]])
  })
}
