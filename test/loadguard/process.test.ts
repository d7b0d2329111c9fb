import { readFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { availableParallelism } from 'node:os'
import t from 'tap'
import { processesMentioning, startPlatform } from '../fixtures/platform.js'
import { FAST_GUARD, cgroupFile, events, instanceById, keepCalling, waitFor, waitForEvent } from './fixtures/helpers.js'

/** Spins the CPU for `?ms=` of wall time (so a lowered quota does not stretch the call). */
const HOG = 'export default (e) => { const end = Date.now() + Number(e.query.ms ?? 3000); while (Date.now() < end) {} return "spun" }'

t.test('a function that spins the CPU is throttled (its cgroup quota lowered), then quarantined: its next instance runs in kindling-quarantine', async (t) => {
  const p = await startPlatform(t, FAST_GUARD)
  t.equal((await p.deploy('hog', { runtime: 'node', mode: 'ephemeral', timeoutMs: 20_000, code: HOG })).status, 201)
  const caller = keepCalling(p, 'hog')
  t.teardown(() => caller.stop())

  const throttle = await waitForEvent(p, 'loadguard-throttle', 'hog')
  const inst = instanceById(p, throttle.instance)
  t.ok(inst, 'the throttled instance is still running its call')
  if (inst === undefined) return
  t.equal(await cgroupFile(inst, 'cpu', 'cpu.cfs_quota_us'), '25000', 'cpu.cfs_quota_us lowered from 100000 to a quarter')
  t.equal(await cgroupFile(inst, 'cpu', 'cpu.cfs_period_us'), '100000')
  t.match(throttle.data, { reason: 'cpu', samples: 3, originalQuotaCores: 1, throttledToCores: 0.25, cpuCeiling: 0.9 })
  t.ok((throttle.data?.['demandRatio'] as number) >= 0.9, `the numbers that triggered it: wants ${String(throttle.data?.['demandRatio'])} of its quota, got ${String(throttle.data?.['cpuRatio'])}`)

  const quarantine = await waitForEvent(p, 'loadguard-quarantine', 'hog')
  t.match(quarantine.data, { reason: 'cpu', quotaCores: 0.25 })
  t.equal(p.pools.isQuarantined('hog'), true)
  const got = await p.api('GET', '/v1/functions/hog')
  t.match(got.json['status'], { loadGuard: { level: 'quarantined', quarantined: true, lastAction: { action: 'quarantine' } } })

  const next = await waitFor(() => [...p.pools.instances()].find((i) => i.fn === 'hog' && i.quarantined), 'an instance of hog started after the quarantine')
  const cpuDir = next.handle.cgroup?.paths['cpu'] ?? ''
  t.match(cpuDir, /\/kindling-quarantine\/[0-9a-f]{12}\/kdl-[0-9a-f]+$/, 'its cgroup is under kindling-quarantine/<platform id>')
  t.equal((await readFile(`${dirname(dirname(cpuDir))}/cpu.shares`, 'utf8')).trim(), '64', 'the quarantine root\'s CPU share is small (1024 is the default)')
  const cpusetLine = (await readFile(`/proc/${next.handle.pid}/cgroup`, 'utf8')).split('\n').find((l) => /:cpuset:/.test(l))
  t.match(cpusetLine, /:cpuset:\/kindling-quarantine$/, 'and it runs on the quarantine CPUs only')
  t.equal((await readFile('/sys/fs/cgroup/cpuset/kindling-quarantine/cpuset.cpus', 'utf8')).trim(), String(availableParallelism() - 1), 'the host\'s last CPU')

  const metrics = await waitFor(async () => {
    const text = await (await fetch(`${p.url}/metrics`)).text()
    return /kindling_instance_cpu_ratio\{function="hog",instance="kdl-[0-9a-f]+"\}/.test(text) ? text : undefined
  }, 'a CPU gauge of a hog instance')
  t.match(metrics, /kindling_loadguard_actions_total\{action="throttle"\} [1-9]/)
  t.match(metrics, /kindling_loadguard_actions_total\{action="quarantine"\} 1/)
  t.match(metrics, /kindling_instance_memory_bytes\{function="hog",instance="kdl-[0-9a-f]+"\} [1-9]/)
  t.ok((await caller.stop()).every((s) => s === 200), 'every call of the hog still answered')
  const after = await waitFor(async () => {
    const text = await (await fetch(`${p.url}/metrics`)).text()
    return /kindling_instance_cpu_ratio\{function="hog"/.test(text) ? undefined : text
  }, 'the gauges of gone hog instances to be removed')
  t.notMatch(after, /kindling_instance_memory_bytes\{function="hog"/, 'gone instances leave no series')
})

t.test('a function that allocates without bound is OOM-killed and its caller gets 502 KDL_ERR_FN_OOM', async (t) => {
  const p = await startPlatform(t, FAST_GUARD)
  const cases = {
    'leak-buffers': 'export default () => { const keep = []; for (;;) keep.push(Buffer.alloc(1 << 20, 1)) }',
    'leak-heap': 'export default () => { const keep = []; for (;;) keep.push(new Array(1 << 16).fill(Math.random())) }',
  }
  for (const [name, code] of Object.entries(cases)) {
    t.equal((await p.deploy(name, { runtime: 'node', memoryMb: 64, code })).status, 201, name)
    const res = await p.invoke(name)
    t.equal(res.status, 502, name)
    t.equal(res.headers['x-kindling-error'], 'unhandled', name)
    t.match(res.json(), { code: 'KDL_ERR_FN_OOM', message: /exceeded its memory limit/ }, name)
  }
  await p.deploy('fine', { runtime: 'node', code: 'export default () => "fine"' })
  t.equal((await p.invoke('fine')).text, 'fine', 'the platform serves other functions')
})

t.test('a fork bomb is stopped by the pids limit and killed by the guard; the call fails cleanly and the platform stays healthy', async (t) => {
  const p = await startPlatform(t, FAST_GUARD)
  await p.deploy('bomb', {
    runtime: 'node', timeoutMs: 30_000,
    code: 'import { execSync } from "node:child_process"; export default () => { execSync("perl -e \'fork while 1\'", { stdio: "ignore" }); return "survived" }',
  })
  await p.deploy('other', { runtime: 'node', code: 'export default () => "other answers"' })
  const res = await p.invoke('bomb')
  t.equal(res.status, 502, 'the call fails (the guard killed its instance) well before its 30 s timeout')
  t.equal(res.headers['x-kindling-error'], 'unhandled')
  t.match(res.json(), { code: 'KDL_ERR_FN_CRASHED' })

  const kill = (await events(p, 'bomb')).find((e) => e.type === 'loadguard-kill')
  t.match(kill?.data, { reason: 'pids', pidsLimit: p.config.KINDLING_PIDS_LIMIT, samples: 3 })
  const pids = kill?.data?.['pids'] as number
  t.ok(pids >= 0.9 * p.config.KINDLING_PIDS_LIMIT && pids <= p.config.KINDLING_PIDS_LIMIT, `held at the pids limit: ${pids} of ${p.config.KINDLING_PIDS_LIMIT} tasks`)
  await waitFor(async () => ((await processesMentioning('fork while 1')).length === 0 ? true : undefined), 'the bomb\'s processes to be gone')

  t.equal((await p.invoke('other')).text, 'other answers', 'another function answers')
  t.equal((await p.api('GET', '/v1/pools')).status, 200, 'the API answers')
  t.equal((await p.invoke('bomb', { path: '' })).status, 502, 'the bomb fails the same way again, without harm')
  t.equal((await p.invoke('other')).text, 'other answers')
})

t.test('a normal mixed load for a while produces no guard action at all', async (t) => {
  // Production thresholds and steps, sampled ten times faster, so a while is a few seconds.
  const p = await startPlatform(t, { KINDLING_LOADGUARD_INTERVAL_MS: 100 })
  const fns: Record<string, Record<string, unknown>> = {
    echo: { code: 'export default (e) => ({ path: e.path, query: e.query })' },
    json: { mode: 'persistent', code: 'export default (e) => { const o = { items: Array.from({ length: 200 }, (_, i) => ({ i, s: "x".repeat(20) })) }; return JSON.parse(JSON.stringify(o)).items.length }' },
    sleepy: { mode: 'persistent', concurrency: 2, code: 'export default async () => { await new Promise((r) => setTimeout(r, 20)); return "slept" }' },
    // CPU-bound, so it is paced like real traffic: called back to back it would be a hog by the guard's rules.
    hashy: { mode: 'persistent', code: 'import { createHash } from "node:crypto"; export default () => { let h = "x"; for (let i = 0; i < 200; i++) h = createHash("sha256").update(h).digest("hex"); return h }' },
    once: { mode: 'ephemeral', code: 'export default () => "fresh"' },
  }
  for (const [name, spec] of Object.entries(fns)) t.equal((await p.deploy(name, { runtime: 'node', ...spec })).status, 201, name)
  const callers = [
    keepCalling(p, 'echo'), keepCalling(p, 'json'), keepCalling(p, 'sleepy', { clients: 3 }), keepCalling(p, 'hashy', { thinkMs: 5 }), keepCalling(p, 'once'),
  ]
  // "A while": until the guard has judged 60 samples of the echo function (6 s at 100 ms) past its learning.
  await waitFor(async () => {
    const s = (await p.api('GET', '/v1/functions/echo')).json['status'] as { loadGuard: { range: { samples: number } } }
    return s.loadGuard.range.samples >= 90 ? true : undefined
  }, 'the guard to sample the mixed load', 60_000)
  const statuses = (await Promise.all(callers.map((c) => c.stop()))).flat()
  t.ok(statuses.length > 100 && statuses.every((s) => s === 200), `${statuses.length} calls, all 200`)
  t.same((await events(p)).filter((e) => e.type.startsWith('loadguard-')), [], 'no load-guard event')
  for (const name of Object.keys(fns)) {
    const s = (await p.api('GET', `/v1/functions/${name}`)).json['status'] as { loadGuard: { level: string; quarantined: boolean } }
    t.match(s.loadGuard, { level: 'normal', quarantined: false }, `${name} untouched`)
  }
  const echo = (await p.api('GET', '/v1/functions/echo')).json['status'] as { loadGuard: { range: Record<string, unknown> } }
  t.match(echo.loadGuard.range, { learned: true }, 'and it learned each function\'s range meanwhile')
  t.comment(`echo range: ${JSON.stringify(echo.loadGuard.range)}`)
  const cost = p.loadGuard?.cost()
  t.ok(cost !== undefined && cost.samples > 0)
  t.comment(`sampler cost under load: ${cost?.usPerSample.toFixed(1)} µs per instance sample over ${cost?.samples} samples`)
})
