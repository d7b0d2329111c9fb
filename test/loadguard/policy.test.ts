import t from 'tap'
import { loadConfig } from '../../common/config.js'
import { DEFAULT_POLICY, Ewma, FunctionRange, judge, policyFromConfig, throttledQuota } from '../../loadguard/policy.js'
import { fakePlatform, LIMITS } from './fixtures/fake-platform.js'

const MiB = 1024 * 1024
const p = { ...DEFAULT_POLICY, minSamples: 10 }

t.test('an EWMA averages plainly at first, then weights recent samples by alpha', async (t) => {
  const e = new Ewma()
  for (const x of [0.2, 0.4, 0.6]) e.add(x, 0.05)
  t.equal(Math.round(e.mean * 1000) / 1000, 0.4, 'plain average of the first samples')
  for (let i = 0; i < 500; i++) e.add(0.8, 0.05)
  t.ok(Math.abs(e.mean - 0.8) < 0.001 && e.sd < 0.001, 'converges on a steady value with no spread')
})

t.test('a range applies only the ceiling while learning, then its own bound clamped to floor and ceiling', async (t) => {
  const r = new FunctionRange(1)
  for (let i = 0; i < 9; i++) r.learn({ demandRatio: 0.1, memoryRatio: 0.2 }, p)
  t.equal(r.cpuUpper(p), p.cpuCeiling, 'learning: the ceiling')
  r.learn({ demandRatio: 0.1, memoryRatio: 0.2 }, p)
  t.equal(r.cpuUpper(p), p.cpuFloor, 'a low steady function: the floor')
  t.equal(r.memoryUpper(p), p.memoryFloor)
  const high = new FunctionRange(1)
  for (let i = 0; i < 20; i++) high.learn({ demandRatio: i % 2 === 0 ? 0.6 : 0.7, memoryRatio: 0.5 }, p)
  t.ok(high.cpuUpper(p) > 0.7 && high.cpuUpper(p) <= p.cpuCeiling, `a spread-out function: mean + 3 sd (${high.cpuUpper(p)})`)
  const idle = new FunctionRange(1)
  for (let i = 0; i < 20; i++) idle.learn({ demandRatio: 0.01, memoryRatio: 0.2 }, p)
  t.equal(idle.cpu.count, 0, 'idle samples teach nothing about CPU')
})

t.test('a sample is outside on CPU above its learned bound or at the ceiling, never below the floor', async (t) => {
  const r = new FunctionRange(1)
  for (let i = 0; i < 10; i++) r.learn({ demandRatio: 0.2, memoryRatio: 0.2 }, p)
  const view = { cpuCores: 0, demandCores: 0, quotaCores: 1, currentQuotaCores: 1, memoryBytes: 20 * MiB, memoryLimitBytes: 128 * MiB, pids: 10, pidsLimit: 64 }
  t.same(judge({ ...view, cpuCores: 0.45 }, r, p).outside, [], 'below the floor')
  t.same(judge({ ...view, cpuCores: 0.6 }, r, p).outside, ['cpu'], 'above a low function\'s range')
  t.same(judge({ ...view, cpuCores: 0.6 }, undefined, p).outside, [], 'unknown function: only the ceiling')
  t.same(judge({ ...view, cpuCores: 0.95 }, undefined, p).outside, ['cpu'], 'at the ceiling')
  t.same(judge({ ...view, cpuCores: 0.24, currentQuotaCores: 0.25 }, r, p).outside, ['cpu'], 'pegged at a lowered quota')
  t.same(judge({ ...view, cpuCores: 0.05, currentQuotaCores: 0.25 }, r, p).outside, [], 'calm under a lowered quota')
  t.same(judge({ ...view, cpuCores: 0.3, demandCores: 0.98 }, undefined, p).outside, ['cpu'], 'held to a small share by a busy host, but wanting all of it')
  t.same(judge({ ...view, cpuCores: 0.1, demandCores: 0.3 }, undefined, p).outside, [], 'a light instance kept waiting a little')
  t.same(judge({ ...view, memoryBytes: 125 * MiB }, r, p).outside, ['memory'], 'memory at its ceiling')
  t.equal(judge({ ...view, pids: 58 }, r, p).atPidsLimit, true, '58 of 64 pids is at the limit')
  t.equal(judge({ ...view, pids: 57 }, r, p).atPidsLimit, false)
})

t.test('a throttle lowers the quota to a quarter, or to what the function normally needs', async (t) => {
  t.equal(throttledQuota(1, undefined, p), 0.25)
  t.equal(throttledQuota(2, undefined, p), 0.5)
  const r = new FunctionRange(1)
  for (let i = 0; i < 10; i++) r.learn({ demandRatio: 0.45, memoryRatio: 0.2 }, p)
  t.equal(throttledQuota(1, r, p), 0.5, 'the learned mean fits under the ceiling of the new quota')
})

t.test('a floor above its ceiling stops start-up naming both variables', async (t) => {
  const ok = policyFromConfig(loadConfig({}, { KINDLING_LOADGUARD_INTERVAL_MS: 250 }))
  t.equal(ok.intervalMs, 250)
  t.throws(() => policyFromConfig(loadConfig({}, { KINDLING_LOADGUARD_CPU_FLOOR: 0.95 })), { code: 'KDL_ERR_BAD_REQUEST', message: /KINDLING_LOADGUARD_CPU_FLOOR.*KINDLING_LOADGUARD_CPU_CEILING/ })
  t.throws(() => loadConfig({ KINDLING_LOADGUARD_CPU_CEILING: '1.5' }), { message: /KINDLING_LOADGUARD_CPU_CEILING/ })
})

t.test('calm functions are never touched, a steady high one included', async (t) => {
  const f = fakePlatform()
  const low = await f.add('low')
  const high = await f.add('high')
  const bursty = await f.add('bursty')
  let n = 0
  await f.steps(200, (i) => {
    n++
    if (i === low) return { cpu: 0.02 + (n % 5) * 0.01 }
    if (i === high) return { cpu: 0.8 + (n % 3) * 0.02, memoryBytes: 90 * MiB }
    return { cpu: n % 40 < 2 ? 0.95 : 0.3 } // a two-sample burst now and then: shorter than the sustained window
  })
  t.same(f.guardEvents(), [], 'no guard event')
  t.same(f.setCpuCalls, [])
  t.same(f.destroyed, [])
  const s = f.guard.state('high')
  t.equal(s.level, 'normal')
  t.equal(s.range.learned, true)
  t.ok(s.range.cpuMean > 0.75, `its high range was learned (${s.range.cpuMean})`)
  t.match(s.instances, [{ id: high.id, quarantined: false }])
  t.match(f.guard.state('bursty').instances, [{ id: bursty.id, quarantined: false }], 'two-sample bursts stay under the sustained window')
})

t.test('a sustained spike is throttled, then quarantined, then killed, each with its numbers', async (t) => {
  const f = fakePlatform()
  const hog = await f.add('hog')
  await f.steps(12, () => ({ cpu: 0.2 }))
  t.equal(f.guard.state('hog').range.learned, true, 'learned a range around 0.2')
  await f.steps(2, () => ({ cpu: 1 }))
  t.same(f.guardEvents(), [], 'two samples are not yet sustained')
  await f.step(() => ({ cpu: 1 }))
  const [throttle] = f.guardEvents()
  t.match(throttle, {
    type: 'loadguard-throttle', function: 'hog', instance: hog.id,
    data: { reason: 'cpu', samples: 3, cpuRatio: 1, demandOfQuota: 1, quotaCores: 1, cpuUpper: 0.5, throttledToCores: 0.25, rangeSamples: 12 },
  })
  t.same(f.setCpuCalls, [{ id: hog.id, cores: 0.25 }])
  t.equal(f.guard.state('hog').level, 'throttled')
  t.match(f.guard.state('hog').instances, [{ id: hog.id, throttledToCores: 0.25 }])

  await f.steps(3, () => ({ cpu: 0.25, demand: 1 })) // flat out against the lowered quota, waiting the rest of the time
  const quarantine = f.guardEvents()[1]
  t.match(quarantine, { type: 'loadguard-quarantine', function: 'hog', data: { reason: 'cpu', samples: 3, cpuRatio: 0.25, demandOfQuota: 4, quotaCores: 0.25 } })
  t.ok(f.quarantined.has('hog'), 'the pool manager was told')
  t.equal(f.guard.state('hog').level, 'quarantined')
  t.equal(f.guard.state('hog').quarantined, true)

  await f.steps(3, () => ({ cpu: 0.25, demand: 1 }))
  t.same(f.destroyed, [], 'not yet')
  await f.step(() => ({ cpu: 0.25, demand: 1 }))
  t.match(f.guardEvents()[2], { type: 'loadguard-kill', instance: hog.id, data: { reason: 'cpu', samples: 4 } })
  t.same(f.destroyed, [hog.id])
  t.equal(f.guardEvents().length, 3)
})

t.test('a spike above a function\'s own range is acted on, the same level as another\'s normal is not', async (t) => {
  const f = fakePlatform()
  const a = await f.add('usually-light')
  const b = await f.add('always-busy')
  await f.steps(12, (i) => ({ cpu: i === a ? 0.2 : 0.7 }))
  await f.steps(3, () => ({ cpu: 0.7 }))
  t.match(f.guardEvents(), [{ type: 'loadguard-throttle', function: 'usually-light', data: { cpuRatio: 0.7, cpuUpper: 0.5 } }])
  t.equal(f.guardEvents().length, 1, 'always-busy at the same 0.7 is untouched')
  t.equal(f.guard.state('always-busy').level, 'normal')
  t.ok(b)
})

t.test('a CPU-bound instance that a busy host holds to a small share is judged by what it wants', async (t) => {
  const f = fakePlatform()
  const light = await f.add('light')
  const hog = await f.add('hog')
  await f.steps(3, (i) => (i === hog ? { cpu: 0.3, demand: 1 } : { cpu: 0.05, demand: 0.15 }))
  t.match(f.guardEvents(), [{ type: 'loadguard-throttle', instance: hog.id, data: { cpuRatio: 0.3, demandRatio: 1 } }])
  t.equal(f.guardEvents().length, 1, 'the light function, waiting a little too, is not touched')
  t.ok(light)
})

t.test('an instance at its pids limit is killed and its gauges go', async (t) => {
  const f = fakePlatform()
  const bomb = await f.add('bomb')
  const other = await f.add('other')
  await f.steps(2, (i) => (i === bomb ? { cpu: 0.1, pids: 64 } : { cpu: 0.1 }))
  t.same(f.destroyed, [])
  const gauges = async () => (await f.registry.getSingleMetric('kindling_instance_cpu_ratio')?.get())?.values.map((v) => v.labels['instance'])
  t.same((await gauges())?.sort(), [bomb.id, other.id].sort(), 'a gauge per instance')
  await f.step((i) => (i === bomb ? { cpu: 0.1, pids: 64 } : { cpu: 0.1 }))
  t.match(f.guardEvents(), [{ type: 'loadguard-kill', function: 'bomb', instance: bomb.id, data: { reason: 'pids', pids: 64, pidsLimit: LIMITS.pids, samples: 3 } }])
  t.same(f.destroyed, [bomb.id])
  t.same(await gauges(), [other.id], 'the killed instance\'s series are removed')
  const actions = await f.registry.getSingleMetric('kindling_loadguard_actions_total')?.get()
  t.match(actions?.values.find((v) => v.labels['action'] === 'kill'), { value: 1 })
  t.match(actions?.values.find((v) => v.labels['action'] === 'throttle'), { value: 0 })
})

t.test('a function that calms down is released after the cool-down: quota restored, quarantine lifted', async (t) => {
  const f = fakePlatform()
  const hog = await f.add('hog')
  await f.steps(6, () => ({ cpu: 1 })) // throttle after 3, then 3 more at 1 core (pegged against 0.25)
  t.match(f.guardEvents().map((e) => e.type), ['loadguard-throttle', 'loadguard-quarantine'])
  const later = await f.add('hog')
  t.equal(later.quarantined, true, 'the next instance starts quarantined')
  await f.steps(9, () => ({ cpu: 0.05 }))
  t.equal(f.guardEvents().length, 2, 'nine calm seconds are not the ten-second cool-down')
  await f.step(() => ({ cpu: 0.05 }))
  const release = f.guardEvents()[2]
  t.match(release, { type: 'loadguard-release', function: 'hog', data: { from: 'quarantined', calmMs: 10_000, restoredInstances: 1, quarantineLifted: true } })
  t.same(f.setCpuCalls.at(-1), { id: hog.id, cores: 1 }, 'the original quota is back')
  t.equal(f.quarantined.has('hog'), false)
  t.same(f.guard.state('hog'), { ...f.guard.state('hog'), level: 'normal', quarantined: false })
  t.match(f.guard.state('hog').lastAction, { action: 'release' })
  await f.steps(20, () => ({ cpu: 0.05 }))
  t.equal(f.guardEvents().length, 3, 'released once')
})

t.test('memory held near the limit counts as outside and is named in the event', async (t) => {
  const f = fakePlatform()
  await f.add('leaky')
  await f.steps(3, () => ({ cpu: 0.1, memoryBytes: 124 * MiB }))
  t.match(f.guardEvents(), [{ type: 'loadguard-throttle', data: { reason: 'memory', memoryBytes: 124 * MiB, memoryLimitBytes: 128 * MiB } }])
})

t.test('a new version learns its range afresh', async (t) => {
  const f = fakePlatform()
  const v1 = await f.add('fn', 1)
  await f.steps(12, () => ({ cpu: 0.2 }))
  t.equal(f.guard.state('fn').range.samples, 12)
  f.remove(v1)
  await f.add('fn', 2)
  await f.steps(2, () => ({ cpu: 0.6 }))
  t.equal(f.guard.state('fn').range.samples, 2, 'only the new version\'s samples')
  t.equal(f.guard.state('fn').range.learned, false)
})
