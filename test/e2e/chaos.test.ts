import { join } from 'node:path'
import t from 'tap'
import { Client } from 'undici'
import { pidsOf, runChaos, runDirInstances, startKiller, type ChaosResult, type Victim } from '../../bench/chaos.js'
import { HOST_BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 8 part 4. Kills only instances of the test's own platform: ids from its run directory and pool
// manager, pids by the `--kindling-instance=<id>` on their command line (docker: the container's main pid).
const CODE = 'export default () => "ok"'

/** Every instance of this platform, started or starting, with the pids that carry it. */
function victimsOf(p: TestPlatform, backend: 'process' | 'docker'): () => Promise<Victim[]> {
  return async () => {
    if (backend === 'docker') {
      const out: Victim[] = []
      for (const inst of p.pools.instances()) if (inst.handle.pid !== undefined) out.push({ id: inst.id, pids: [inst.handle.pid] })
      return out
    }
    const ids = new Set(await runDirInstances(join(p.dataDir, 'run')))
    for (const inst of p.pools.instances()) ids.add(inst.id)
    return [...await pidsOf(ids)].map(([id, pids]) => ({ id, pids }))
  }
}

function poolsAtTarget(p: TestPlatform): boolean {
  return p.pools.snapshot().every((s) => s.idle === s.target && s.starting === 0)
}

function report(t: { comment(...m: unknown[]): void }, r: ChaosResult): void {
  t.comment(`${r.calls} calls, ${r.kills} kills, ${r.crashed} killed calls' 502s, ${r.failures.length} other failures, ${r.hung} hung; ${JSON.stringify(r.byCode)}`)
  for (const f of r.failures.slice(0, 30)) t.comment(`  failure @${Math.round(f.atMs)} ms: ${f.fn} ${f.status} ${f.code ?? ""} ${f.message}`)
}

for (const backend of HOST_BACKENDS) {
t.test(`on the ${backend} backend, a call never fails because an instance other than its own died`, async (t) => {
  const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_POOL_SIZE: 2, KINDLING_POOL_ADAPTIVE: 'false' })
  const fns = {
    steady: { mode: 'persistent', concurrency: 4, maxInstances: 4, prewarm: 2 },
    fresh: { mode: 'ephemeral', maxInstances: 4, prewarm: 2 },
    again: { mode: 'recycle', maxInstances: 4, prewarm: 1 },
  }
  for (const [name, spec] of Object.entries(fns)) {
    const res = await p.deploy(name, { runtime: 'node', code: CODE, ...spec })
    t.equal(res.status, 201, JSON.stringify(res.json))
  }
  await waitFor(() => poolsAtTarget(p), 'the pools to fill before the chaos')

  // A container takes dockerd far longer to replace than a process: kills come at a pace it can follow
  // on a loaded 2-core machine (the test is about which calls fail, not about how fast dockerd is).
  const pace = backend === 'docker' ? { killEveryMs: 500, minKills: 10 } : { killEveryMs: 200, minKills: 20 }
  const r = await runChaos({
    url: p.url, functions: Object.keys(fns), connections: 16, durationMs: 10_000, maxDurationMs: 40_000, hungMs: 30_000, victims: victimsOf(p, backend), ...pace,
  })
  report(t, r)
  if (r.hung > 0 || r.failures.length > 0) {
    // Seen once in CI (2026-12-02, process backend): one ephemeral call without an answer for 30 s, then a
    // teardown that never ended. What the platform holds at that moment is what finds the race.
    t.comment(`platform state after the failures: ${JSON.stringify((await p.api('GET', '/v1/pools')).json)}`)
    t.comment(`instances: ${JSON.stringify([...p.pools.instances()].map((i) => ({ id: i.id, state: i.state, pool: i.handle.pool })))}`)
  }
  t.ok(r.kills >= pace.minKills, `instances were killed (${r.kills})`)
  t.ok(r.ok > 0, `calls were served (${r.ok})`)
  t.equal(r.hung, 0, 'no call hung')
  t.same(r.failures, [], 'every failure is a 502 of a call that was on a killed instance')
  await waitFor(() => poolsAtTarget(p), 'the pools to be back at their targets', 10_000).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(p.pools.snapshot())}`)
  })
  for (const name of Object.keys(fns)) t.equal((await p.invoke(name)).status, 200, `${name} answers after the chaos`)
})
}

t.test('twelve prewarm deploys and their first calls, while instances are killed, are all answered', async (t) => {
  // 64 MiB instances: 12 × (2 prewarmed + 1 serving) fit the default memory budget with room to spare.
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 2, KINDLING_POOL_ADAPTIVE: 'false' })
  const client = new Client(p.url, { headersTimeout: 20_000, bodyTimeout: 20_000 })
  t.teardown(() => client.close())
  const t0 = performance.now()
  const killer = startKiller({ victims: victimsOf(p, 'process'), everyMs: 200, t0 })
  const send = async (method: 'GET' | 'PUT', path: string, body?: unknown): Promise<{ status: number; text: string; atMs: number }> => {
    const atMs = performance.now() - t0
    try {
      const res = await client.request({ method, path, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? null : JSON.stringify(body) })
      return { status: res.statusCode, text: await res.body.text(), atMs }
    } catch (err) {
      return { status: 0, text: `no answer: ${(err as Error).message}`, atMs }
    }
  }
  const answers = await Promise.all(Array.from({ length: 12 }, async (_, i) => {
    const name = `pw-${i}`
    const deploy = await send('PUT', `/v1/functions/${name}`, { runtime: 'node', mode: 'persistent', prewarm: 2, memoryMb: 64, code: `export default () => "${name}"` })
    const call = await send('GET', `/fn/${name}`)
    return { name, deploy, call }
  }))
  await killer.stop()
  t.ok(killer.killed.length > 0, `instances were killed (${killer.killed.length})`)
  for (const { name, deploy, call } of answers) {
    t.equal(deploy.status, 201, `deploy of ${name}: ${deploy.text}`)
    // A first call may be a killed call itself: a 502 naming an instance killed after the call was sent.
    const instance = /on instance (kdl-[0-9a-f]+)/.exec(call.text)?.[1]
    const killedAt = instance === undefined ? undefined : killer.killedAt.get(instance)
    const ownCrash = call.status === 502 && killedAt !== undefined && call.atMs <= killedAt
    t.ok(call.status === 200 || ownCrash, `first call of ${name}: ${call.status} ${call.text}`)
  }
  await waitFor(() => poolsAtTarget(p), 'the pools to be back at their targets', 10_000).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(p.pools.snapshot())}`)
  })
})
