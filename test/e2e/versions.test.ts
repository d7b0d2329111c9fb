import { existsSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// Versions, aliases, rollback and canaries (issue 15), on a real platform (process backend).

const answering = (text: string): string => `export default async () => ({ text: ${JSON.stringify(text)} })`

/** Throws on every fifth call of an instance (persistent mode keeps its count): 20 % of its calls fail. */
const FLAKY = `let n = 0
export default async () => { if (++n % 5 === 0) throw new Error('flaky release'); return { text: 'new' } }`

async function deployed(p: TestPlatform, name: string, body: Record<string, unknown>, query = ''): Promise<Record<string, unknown>> {
  const res = await p.api('PUT', `/v1/functions/${name}${query}`, body)
  if (res.status !== 200 && res.status !== 201) throw new Error(`deploy of ${name} answered ${res.status}: ${JSON.stringify(res.json)}`)
  return res.json
}

async function call(p: TestPlatform, target: string, headers: Record<string, string> = {}): Promise<{ status: number; version: string; text: string; error?: string }> {
  const res = await p.invoke(target, { headers })
  const body = res.text === '' ? {} : JSON.parse(res.text) as { text?: string; code?: string }
  return { status: res.status, version: res.headers['x-kindling-version'] ?? '', text: body.text ?? '', ...(body.code === undefined ? {} : { error: body.code }) }
}

async function canaryOf(p: TestPlatform, name: string): Promise<Record<string, unknown>> {
  return (await p.api('GET', `/v1/functions/${name}/canary`)).json
}

t.test('every deploy keeps a version; a rollback serves the old one from the next call on', async (t) => {
  const p = await startPlatform(t)
  const v1 = await deployed(p, 'hello', { runtime: 'node', code: answering('one') })
  t.equal(v1['version'], 1)
  await deployed(p, 'hello', { runtime: 'node', code: answering('two') })
  t.same(await call(p, 'hello'), { status: 200, version: '2', text: 'two' }, 'the bare name serves the latest deploy, and says which version answered')

  const list = await p.api('GET', '/v1/functions/hello/versions')
  t.equal(list.status, 200)
  const versions = list.json['versions'] as Array<{ version: number; codeHash: string; deployedBy: string; updatedAt: string; routedBy: unknown[] }>
  t.same(versions.map((v) => v.version), [1, 2], 'both versions are kept, oldest first')
  t.not(versions[0]?.codeHash, versions[1]?.codeHash, 'each with its own code')
  t.ok(versions.every((v) => typeof v.deployedBy === 'string' && v.deployedBy !== '' && !Number.isNaN(Date.parse(v.updatedAt))), 'who and when')
  t.same(versions[1]?.routedBy, [{ alias: 'latest', percent: 100 }])

  const rb = await p.api('POST', '/v1/functions/hello/rollback', {})
  t.equal(rb.status, 200)
  t.match(rb.json, { from: 2, to: 1, function: { version: 1, lastVersion: 2 } })
  t.same(await call(p, 'hello'), { status: 200, version: '1', text: 'one' }, 'the very next call is served by version 1')
  t.same(await call(p, 'hello@2'), { status: 200, version: '2', text: 'two' }, 'version 2 stays callable by its number')

  // Rolling forward again names the version; a new deploy never reuses a number.
  t.match((await p.api('POST', '/v1/functions/hello/rollback', { to: 2 })).json, { from: 1, to: 2 })
  t.equal((await call(p, 'hello')).text, 'two')
  const v3 = await deployed(p, 'hello', { runtime: 'node', code: answering('three') })
  t.equal(v3['version'], 3)
  t.match((await p.api('POST', '/v1/functions/hello/rollback', { to: 9 })).json, { code: 'KDL_ERR_VERSION_NOT_FOUND' })
  t.match((await p.api('GET', '/v1/functions/hello/versions/7')).json, { code: 'KDL_ERR_VERSION_NOT_FOUND' })
  t.match((await p.api('GET', '/v1/functions/hello/versions/1')).json, { version: 1, routedBy: [] })
  const events = (await p.api('GET', '/v1/events?function=hello')).json['events'] as Array<{ type: string; data?: Record<string, unknown> }>
  t.ok(events.some((e) => e.type === 'rolled-back' && e.data?.['from'] === 2 && e.data['to'] === 1), 'the rollback is an event')
})

t.test('a version stored without promotion is not served until an alias routes to it', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'stage', { runtime: 'node', code: answering('live') })
  const staged = await deployed(p, 'stage', { runtime: 'node', code: answering('staged') }, '?promote=false')
  t.match(staged, { version: 1, deployed: 2, lastVersion: 2 }, 'the answer is the function as served, naming the stored version')
  t.equal((await call(p, 'stage')).text, 'live')
  t.equal((await call(p, 'stage@2')).text, 'staged')
  t.equal((await p.api('PUT', '/v1/functions/stage/aliases/beta', { version: 2 })).status, 200)
  t.same(await call(p, 'stage@beta'), { status: 200, version: '2', text: 'staged' })
  t.match(await call(p, 'stage@nope'), { status: 404, error: 'KDL_ERR_VERSION_NOT_FOUND' })
  t.match((await p.api('PUT', '/v1/functions/stage/aliases/beta', { version: 5 })).json, { code: 'KDL_ERR_VERSION_NOT_FOUND' })
  t.match((await p.api('PUT', '/v1/functions/stage/aliases/Bad_Name', { version: 1 })).json, { code: 'KDL_ERR_BAD_SPEC' })
  t.match((await p.api('PUT', '/v1/functions/stage/aliases/beta', { weights: { 1: 0, 2: 0 } })).json, { code: 'KDL_ERR_BAD_SPEC' })
  t.match((await p.api('DELETE', '/v1/functions/stage/aliases/latest')).json, { code: 'KDL_ERR_BAD_SPEC' })
  t.equal((await p.api('DELETE', '/v1/functions/stage/aliases/beta')).status, 200)
  t.match(await call(p, 'stage@beta'), { status: 404, error: 'KDL_ERR_VERSION_NOT_FOUND' })
})

t.test('weights 90/10 over 2,000 calls land within 4.5 standard deviations; a route key is sticky', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'split', { runtime: 'node', code: answering('a') })
  await deployed(p, 'split', { runtime: 'node', code: answering('b') })
  const set = await p.api('PUT', '/v1/functions/split/aliases/live', { weights: { 1: 90, 2: 10 } })
  t.same(set.json['aliases'], { latest: { version: 2 }, live: { weights: { 1: 90, 2: 10 } } })
  const N = 2000
  let second = 0
  for (let i = 0; i < N; i++) {
    const r = await call(p, 'split@live')
    if (r.status !== 200) throw new Error(`call ${i} answered ${r.status}`)
    if (r.version === '2') second++
  }
  // Binomial(2000, 0.1): mean 200, sd 13.4; ±60 is ±4.5 sd (a false failure about once in 150,000 runs).
  t.ok(second >= 140 && second <= 260, `version 2 served ${second} of ${N} calls (expected 200 ± 60)`)

  const sticky = new Set<string>()
  for (let i = 0; i < 50; i++) sticky.add((await call(p, 'split@live', { 'x-kindling-route-key': 'customer-42' })).version)
  t.equal(sticky.size, 1, 'one caller key: always the same version')
  const spread = new Set<string>()
  for (let i = 0; i < 200 && spread.size < 2; i++) spread.add((await call(p, 'split@live', { 'x-kindling-route-key': `customer-${i}` })).version)
  t.equal(spread.size, 2, 'different keys land on both versions')
})

t.test('a canary whose new version throws on 20 % of calls is rolled back; the baseline fails no call', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'shop', { runtime: 'node', code: answering('old'), prewarm: 2, maxInstances: 4, mode: 'persistent' })
  await deployed(p, 'shop', { runtime: 'node', code: FLAKY, prewarm: 2, maxInstances: 4, mode: 'persistent' }, '?promote=false')
  const started = await p.api('PUT', '/v1/functions/shop/canary', { to: 2, steps: [25, 50, 100], intervalMs: 3000, minCalls: 20, maxErrorRate: 0.05 })
  t.equal(started.status, 201)
  t.match(started.json, { state: 'running', baseline: 1, to: 2, step: 0 })
  // Each routed version has its share of the prewarm pool: the canary's first calls are not cold.
  const pools = await waitFor(async () => {
    const ps = (await p.api('GET', '/v1/pools')).json['pools'] as Array<{ pool: string; target: number; idle: number }>
    const a = ps.find((x) => x.pool === 'fn:shop@1')
    const b = ps.find((x) => x.pool === 'fn:shop@2')
    return a !== undefined && b !== undefined && a.idle === a.target && b.idle === b.target && b.target >= 1 ? { a, b } : undefined
  }, 'both versions prewarmed')
  t.same([pools.a.target, pools.b.target], [2, 1], 'baseline 75 % of prewarm 2 → 2, canary 25 % → 1')

  const results: Array<{ status: number; version: string; error?: string; at: number }> = []
  let canaryCalls = 0
  let canaryErrors = 0
  let qualifiedAt: number | undefined
  const worker = async (): Promise<void> => {
    for (let i = 0; i < 2000; i++) {
      const r = await call(p, 'shop')
      const at = performance.now()
      results.push({ ...r, at })
      if (r.version === '2') {
        canaryCalls++
        if (r.status !== 200) canaryErrors++
        // The window holds a breach once it has minCalls canary calls with an error rate above 5 %.
        if (qualifiedAt === undefined && canaryCalls >= 20 && canaryErrors / canaryCalls > 0.05) qualifiedAt = at
      }
      const c = await canaryOf(p, 'shop')
      if (c['state'] !== 'running') return
    }
  }
  await Promise.all([worker(), worker()])
  const c = await canaryOf(p, 'shop')
  t.match(c, { state: 'rolled-back', baseline: 1, to: 2 }, 'the canary was rolled back automatically')
  const history = c['history'] as Array<{ result: string; canary: { calls: number; errorRate: number } }>
  t.equal(history.at(-1)?.result, 'breach', 'its last verdict is a breach')
  t.ok((history.at(-1)?.canary.errorRate ?? 0) > 0.05, 'with the numbers behind it')
  t.match(c['reason'], /error rate/)

  const failed = results.filter((r) => r.status !== 200)
  t.ok(failed.length > 0, 'the canary failed some calls')
  t.same(failed.filter((r) => r.version !== '2' || r.status !== 500 || r.error !== 'KDL_ERR_FN_ERROR'), [], 'every failed call is the canary\'s own error; none of the baseline, none of the platform')
  const after = []
  for (let i = 0; i < 50; i++) after.push(await call(p, 'shop'))
  t.ok(after.every((r) => r.status === 200 && r.version === '1'), 'after the rollback the baseline serves every call')
  t.same((await p.api('GET', '/v1/functions/shop/aliases')).json['aliases'], { latest: { version: 1 } })
  const lastCanaryAt = Math.max(...results.filter((r) => r.version === '2').map((r) => r.at))
  if (qualifiedAt !== undefined) t.comment(`breach → last call the canary answered: ${(lastCanaryAt - qualifiedAt).toFixed(0)} ms (${canaryCalls} canary calls, ${canaryErrors} failed)`)
  const metrics = await (await request(`${p.url}/metrics`)).body.text()
  t.match(metrics, /kindling_canary_steps_total\{result="breach"\} 1/)
  t.match(metrics, /kindling_invocations_total\{function="shop",version="2",code="500"\} \d+/, 'invocations carry the version')
})

t.test('a healthy canary moves step by step and is promoted', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'calm', { runtime: 'node', code: answering('old') })
  await deployed(p, 'calm', { runtime: 'node', code: answering('new') }, '?promote=false')
  t.equal((await p.api('PUT', '/v1/functions/calm/canary', { to: 2, steps: [30, 100], interval: '400ms', minCalls: 10 })).status, 201)
  t.match((await p.api('PUT', '/v1/functions/calm/canary', { to: 2 })).json, { code: 'KDL_ERR_CANARY_CONFLICT' }, 'one canary at a time')
  t.match((await p.api('PUT', '/v1/functions/calm/aliases/latest', { version: 1 })).json, { code: 'KDL_ERR_CANARY_CONFLICT' }, 'its alias is the canary\'s while it runs')
  let failures = 0
  for (let i = 0; i < 5000; i++) {
    const r = await call(p, 'calm')
    if (r.status !== 200) failures++
    if (i % 10 === 0 && (await canaryOf(p, 'calm'))['state'] !== 'running') break
  }
  const c = await canaryOf(p, 'calm')
  t.match(c, { state: 'promoted', step: 1 })
  // A window that has not had minCalls canary calls by its end holds (a loaded machine); it never passes early.
  const verdicts = (c['history'] as Array<{ result: string; weight: number; canary: { calls: number } }>)
  t.same(verdicts.filter((h) => h.result !== 'hold').map((h) => [h.result, h.weight]), [['pass', 30], ['pass', 100]])
  t.ok(verdicts.every((h) => h.result !== 'pass' || h.canary.calls >= 10), 'every pass had minCalls canary calls')
  t.equal(failures, 0)
  t.same(await call(p, 'calm'), { status: 200, version: '2', text: 'new' }, 'the new version serves the bare name')
  t.match((await p.api('GET', '/v1/functions/calm')).json, { version: 2, aliases: { latest: { version: 2 } } })
  const events = ((await p.api('GET', '/v1/events?function=calm')).json['events'] as Array<{ type: string }>).map((e) => e.type)
  t.ok(['canary.started', 'canary.pass', 'canary.step', 'canary.promoted'].every((x) => events.includes(x)), `events: ${events.join(', ')}`)
})

t.test('a quiet window holds: no data is never a pass', async (t) => {
  const p = await startPlatform(t)
  await deployed(p, 'quiet', { runtime: 'node', code: answering('old') })
  await deployed(p, 'quiet', { runtime: 'node', code: answering('new') }, '?promote=false')
  await p.api('PUT', '/v1/functions/quiet/canary', { to: 2, steps: [10, 100], intervalMs: 200, minCalls: 5 })
  const held = await waitFor(async () => {
    const c = await canaryOf(p, 'quiet')
    const h = c['history'] as Array<{ result: string }>
    return h.length >= 2 ? c : undefined
  }, 'two windows judged')
  t.match(held, { state: 'running', step: 0 }, 'still at its first step')
  t.ok((held['history'] as Array<{ result: string }>).every((h) => h.result === 'hold'), 'every verdict a hold')
  t.same((await p.api('GET', '/v1/functions/quiet/aliases')).json['aliases'], { latest: { weights: { 1: 90, 2: 10 } } }, 'the weights stay where the step put them')
  const aborted = await p.api('DELETE', '/v1/functions/quiet/canary')
  t.match(aborted.json, { state: 'aborted' })
  t.same((await p.api('GET', '/v1/functions/quiet/aliases')).json['aliases'], { latest: { version: 1 } }, 'an abort goes back to the baseline')
  t.equal((await call(p, 'quiet')).version, '1')
})

t.test('pruning keeps the newest versions and never one an alias or a pin still uses, and drops unused code', async (t) => {
  const p = await startPlatform(t, { KINDLING_KEEP_VERSIONS: 2 })
  const hashes: string[] = []
  for (let v = 1; v <= 2; v++) hashes.push((await deployed(p, 'old', { runtime: 'node', code: answering(`v${v}`) }))['codeHash'] as string)
  await p.api('PUT', '/v1/functions/old/aliases/pinned', { version: 1 })
  const unpin = p.releases.pin('old', 2)
  for (let v = 3; v <= 5; v++) hashes.push((await deployed(p, 'old', { runtime: 'node', code: answering(`v${v}`) }))['codeHash'] as string)
  const kept = async (): Promise<number[]> => ((await p.api('GET', '/v1/functions/old/versions')).json['versions'] as Array<{ version: number }>).map((v) => v.version)
  t.same(await kept(), [1, 2, 4, 5], 'v3 is pruned; v1 (alias) and v2 (pinned, as a workflow run pins) are not')
  t.same(await call(p, 'old@pinned'), { status: 200, version: '1', text: 'v1' })
  t.match(await call(p, 'old@3'), { status: 404, error: 'KDL_ERR_VERSION_NOT_FOUND' })
  await p.releases.settled()
  const codeDir = (h: string): string => join(p.dataDir, 'code', h)
  t.notOk(existsSync(codeDir(hashes[2]!)), 'the pruned version\'s code is gone')
  t.ok(existsSync(codeDir(hashes[0]!)) && existsSync(codeDir(hashes[1]!)), 'the kept versions\' code stays')
  unpin()
  await deployed(p, 'old', { runtime: 'node', code: answering('v6') })
  t.same(await kept(), [1, 5, 6], 'unpinned, v2 goes with the next deploy')
  // The same code in another function keeps it on disk when its version here is pruned.
  await deployed(p, 'twin', { runtime: 'node', code: answering('v5') })
  await deployed(p, 'old', { runtime: 'node', code: answering('v7') })
  await deployed(p, 'old', { runtime: 'node', code: answering('v8') })
  await p.releases.settled()
  t.ok(existsSync(codeDir(hashes[4]!)), 'code another function uses stays')
  t.equal((await call(p, 'twin')).text, 'v5')
})

t.test('versions, aliases and a running canary survive a restart', async (t) => {
  const { mkdtemp, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const dir = await mkdtemp(join(tmpdir(), 'kdl-versions-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const first = await startPlatform({ teardown: () => {} }, {}, dir)
  await deployed(first, 'keep', { runtime: 'node', code: answering('one') })
  await deployed(first, 'keep', { runtime: 'node', code: answering('two') })
  await first.api('PUT', '/v1/functions/keep/aliases/stable', { version: 1 })
  await first.api('PUT', '/v1/functions/keep/canary', { to: 1, alias: 'latest', steps: [50, 100], intervalMs: 60_000, minCalls: 1000 })
  await first.close()
  const second = await startPlatform(t, {}, dir)
  t.same((await call(second, 'keep@stable')).version, '1')
  t.match(await canaryOf(second, 'keep'), { state: 'running', baseline: 2, to: 1, step: 0 })
  const seen = new Set<string>()
  for (let i = 0; i < 200 && seen.size < 2; i++) seen.add((await call(second, 'keep')).version)
  t.same([...seen].sort(), ['1', '2'], 'the canary goes on splitting calls')
  t.same(((await second.api('GET', '/v1/functions/keep/versions')).json['versions'] as Array<{ version: number }>).map((v) => v.version), [1, 2])
})

t.test('GET /v1/functions answers a page at a time, by name, with a cursor to the next', async (t) => {
  const p = await startPlatform(t)
  for (const name of ['e', 'b', 'd', 'a', 'c']) await deployed(p, name, { runtime: 'node', code: answering(name) })
  const names: string[][] = []
  let cursor: string | undefined
  for (let i = 0; i < 5; i++) {
    const page = await p.api('GET', `/v1/functions?limit=2${cursor === undefined ? '' : `&cursor=${cursor}`}`)
    t.equal(page.status, 200)
    names.push((page.json['functions'] as Array<{ name: string }>).map((f) => f.name))
    cursor = page.json['next'] as string | undefined
    if (cursor === undefined) break
  }
  t.same(names, [['a', 'b'], ['c', 'd'], ['e']], 'every function once, in name order; the last page has no next')
  t.same(((await p.api('GET', '/v1/functions')).json['functions'] as unknown[]).length, 5, 'the default page holds them all')
  t.match((await p.api('GET', '/v1/functions?limit=0')).json, { code: 'KDL_ERR_BAD_REQUEST' })
  t.match((await p.api('GET', '/v1/functions?limit=1001')).json, { code: 'KDL_ERR_BAD_REQUEST' })
  t.match((await p.api('GET', '/v1/functions?cursor=../../etc')).json, { code: 'KDL_ERR_BAD_REQUEST' })
})
