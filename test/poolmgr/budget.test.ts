import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import t from 'tap'
import { request } from 'undici'
import { startEmbedded } from '../../embedded/main.js'
import { startPlatform, withClient, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// A pool the memory budget leaves short is a state (issue 16): said once, backing off, filled when memory comes free.

interface Pool { pool: string; target: number; idle: number; starting: number; unmet?: string; unmetSince?: string; unmetRetries?: number }

async function pool(p: TestPlatform, name: string): Promise<Pool | undefined> {
  return ((await p.api('GET', '/v1/pools')).json['pools'] as Pool[]).find((x) => x.pool === name)
}

t.test('a prewarm pool short of budget reports unmet once, backs off, and fills when memory comes free', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-budget-'))
  const lines: string[] = []
  const sink = new Writable({ write(chunk: Buffer, _e, cb) { lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== '')); cb() } })
  // Three 128 MiB instances fit; no generic pool takes any of them.
  const embedded = await startEmbedded({
    env: {}, log: pino({ level: 'info' }, sink),
    overrides: { KINDLING_PORT: 0, KINDLING_DATA_DIR: dir, KINDLING_POOL_SIZE: 0, KINDLING_POOL_ADAPTIVE: 'false', KINDLING_MEMORY_BUDGET_MB: 384, KINDLING_IDLE_MEMORY_RATIO: 1 },
  })
  t.teardown(async () => { await embedded.close(); await rm(dir, { recursive: true, force: true }) })
  const p = withClient(embedded, dir)
  const code = 'export default async () => "ok"'
  t.equal((await p.deploy('a', { runtime: 'node', code, prewarm: 1 })).status, 201)
  t.equal((await p.deploy('b', { runtime: 'node', code, prewarm: 3 })).status, 201)

  const short = await waitFor(async () => { const b = await pool(p, 'fn:b@1'); return b?.unmet === 'budget' && b.starting === 0 ? b : undefined }, 'b to be short of budget, nothing starting')
  t.match(short, { target: 3, idle: 2, unmet: 'budget' }, 'GET /v1/pools says the pool is short, and why')
  const metrics = await (await request(`${p.url}/metrics`)).body.text()
  t.match(metrics, /kindling_pool_unmet\{pool="fn:b@1",reason="budget"\} 1/, 'a gauge of what is missing')

  // Two refills by the back-off timer (1 s, then 2 s): the state goes on, nothing is said again.
  const later = await waitFor(async () => { const b = await pool(p, 'fn:b@1'); return (b?.unmetRetries ?? 0) >= 2 ? b : undefined }, 'two backed-off refills', 15_000, 100)
  t.ok(Date.now() - Date.parse(later.unmetSince!) >= 3000, 'the retries backed off (1 s + 2 s), not a loop')
  const said = lines.filter((l) => l.includes('pool below its target'))
  t.equal(said.length, 1, 'the log says it once')
  t.notOk(lines.some((l) => l.includes('prewarm instance failed')), 'and never as a failure')
  const events = async (type: string): Promise<number> =>
    ((await p.api('GET', '/v1/events')).json['events'] as Array<{ type: string; data?: { pool?: string } }>).filter((e) => e.type === type && e.data?.pool === 'fn:b@1').length
  t.equal(await events('pool.unmet'), 1, 'one event when it begins')
  t.equal(await events('pool.met'), 0)

  // Memory comes free: the pool fills at once, not at its next back-off.
  t.equal((await p.api('DELETE', '/v1/functions/a')).status, 200)
  const full = await waitFor(async () => { const b = await pool(p, 'fn:b@1'); return b?.idle === 3 ? b : undefined }, 'b to fill once a is gone', 10_000)
  t.equal(full.unmet, undefined, 'the state ended')
  t.equal(await events('pool.met'), 1, 'one event when it ends')
  t.notMatch(await (await request(`${p.url}/metrics`)).body.text(), /kindling_pool_unmet\{pool="fn:b@1"/)
})

t.test('idle instances are charged a share of their limit, serving ones all of it', async (t) => {
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 0, KINDLING_POOL_ADAPTIVE: 'false', KINDLING_MEMORY_BUDGET_MB: 256, KINDLING_IDLE_MEMORY_RATIO: 0.25 })
  // Six prewarmed 128 MiB instances at rest: 6 × 32 MiB charged. Counting limits, two would fit.
  t.equal((await p.deploy('many', { runtime: 'node', code: 'export default async () => "ok"', prewarm: 6, mode: 'persistent' })).status, 201)
  const full = await waitFor(async () => { const x = await pool(p, 'fn:many@1'); return x?.idle === 6 ? x : undefined }, 'six prewarmed instances')
  t.equal(full.unmet, undefined)
  const memory = async (): Promise<{ budgetMb: number; chargedMb: number; idleMemoryRatio: number }> => (await p.api('GET', '/v1/pools')).json['memory'] as never
  t.match(await memory(), { budgetMb: 256, chargedMb: 192, idleMemoryRatio: 0.25 })
  // One serves a call (persistent: the router keeps it): it is charged its limit, and the refill behind it no longer fits.
  t.equal((await p.invoke('many')).status, 200)
  const short = await waitFor(async () => { const x = await pool(p, 'fn:many@1'); return x?.unmet === 'budget' && x.starting === 0 ? x : undefined }, 'the refill to find the budget used')
  t.match(short, { idle: 5, target: 6 })
  t.equal((await memory()).chargedMb, 5 * 32 + 128, 'five at rest, one at work')
})

t.test('no start takes the host below its memory floor', async (t) => {
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 0, KINDLING_MEMORY_FLOOR_MB: 100_000_000 })
  const res = await p.deploy('f', { runtime: 'node', code: 'export default async () => "ok"' })
  t.equal(res.status, 503)
  t.match(res.json, { code: 'KDL_ERR_NO_CAPACITY', message: /host is short of memory.*KINDLING_MEMORY_FLOOR_MB/ })
  const memory = (await p.api('GET', '/v1/pools')).json['memory'] as { hostAvailableMb: number; hostFloorMb: number }
  t.equal(memory.hostFloorMb, 100_000_000)
  t.ok(memory.hostAvailableMb > 0 && memory.hostAvailableMb < 100_000_000, `the host's MemAvailable is reported (${memory.hostAvailableMb} MiB)`)
})

t.test('a call that needs room shrinks the prewarm pools fairly: the largest gives first, not the oldest', async (t) => {
  // Four 128 MiB instances fit, counted at their limits.
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 0, KINDLING_POOL_ADAPTIVE: 'false', KINDLING_MEMORY_BUDGET_MB: 512, KINDLING_IDLE_MEMORY_RATIO: 1 })
  const code = 'export default async () => "ok"'
  await p.deploy('small', { runtime: 'node', code, prewarm: 1 })
  await p.deploy('large', { runtime: 'node', code, prewarm: 3 })
  await waitFor(async () => (await pool(p, 'fn:large@1'))?.idle === 3 || undefined, 'the large pool full')
  // The budget is full; the small pool's one instance is the least recently used of all.
  t.equal((await p.deploy('third', { runtime: 'node', code, prewarm: 1 })).status, 201, 'the deploy made room')
  const large = await waitFor(async () => { const x = await pool(p, 'fn:large@1'); return x?.unmet === 'budget' && x.starting === 0 ? x : undefined }, 'the large pool short')
  t.equal(large.idle, 2, 'the largest pool gave one up')
  t.equal((await pool(p, 'fn:small@1'))?.idle, 1, 'the small pool kept its only instance, though it was the oldest')
  t.equal((await pool(p, 'fn:third@1'))?.idle, 1)
})
