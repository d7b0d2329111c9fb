import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import t from 'tap'
import { request } from 'undici'
import { startEmbedded } from '../../embedded/main.js'
import { withClient, type TestPlatform } from '../fixtures/platform.js'
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
    overrides: { KINDLING_PORT: 0, KINDLING_DATA_DIR: dir, KINDLING_POOL_SIZE: 0, KINDLING_POOL_ADAPTIVE: 'false', KINDLING_MEMORY_BUDGET_MB: 384 },
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
