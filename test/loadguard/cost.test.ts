import { performance } from 'node:perf_hooks'
import t from 'tap'
import { detectCgroups, measureStatsCost } from '../../cgroups/index.js'
import { readDemand } from '../../loadguard/reader.js'
import { startPlatform } from '../fixtures/platform.js'
import { waitFor } from './fixtures/helpers.js'

const INSTANCES = 8
const PASSES = 300

t.test('the sampler reads every live instance of a function each pass, and what a pass costs is measured', async (t) => {
  // An interval of an hour: only the passes this test runs happen.
  const p = await startPlatform(t, { KINDLING_LOADGUARD_INTERVAL_MS: 3_600_000, KINDLING_LOADGUARD_IDLE_EVERY: 1 })
  const guard = p.loadGuard
  t.ok(guard, 'the guard runs (root, cgroup v1)')
  if (guard === undefined) return
  await p.deploy('idle', { runtime: 'node', prewarm: INSTANCES, code: 'export default () => "idle"' })
  const instances = await waitFor(() => {
    const loaded = [...p.pools.instances()].filter((i) => i.fn === 'idle' && i.state === 'loaded')
    return loaded.length >= INSTANCES ? loaded : undefined
  }, `${INSTANCES} prewarmed instances`)

  await guard.tick() // limits and the counters' baseline
  await guard.tick()
  const sampled = guard.state('idle').instances
  t.equal(sampled.length, instances.length, 'every instance was sampled')
  t.ok(sampled.every((s) => s.memoryBytes > 0 && s.pids > 0), 'with its memory and tasks')

  const before = guard.cost()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < PASSES; i++) await guard.tick()
  const wallUs = (performance.now() - t0) * 1000
  const cpu = process.cpuUsage(cpu0)
  const samples = guard.cost().samples - before.samples
  t.equal(samples, PASSES * instances.length, 'one sample per instance per pass')

  const driver = await detectCgroups()
  const ref = instances[0]?.handle.cgroup
  if (driver !== undefined && ref !== undefined) {
    const statsUs = await measureStatsCost(driver, ref, 500)
    const d0 = performance.now()
    for (let i = 0; i < 500; i++) readDemand(ref)
    const demandUs = ((performance.now() - d0) * 1000) / 500
    t.comment(`of which cgroup counters (driver.stats): ${statsUs.toFixed(1)} µs, process demand (cgroup.procs + schedstat): ${demandUs.toFixed(1)} µs`)
  }
  t.comment(`sampler: ${(wallUs / samples).toFixed(1)} µs wall, ${((cpu.user + cpu.system) / samples).toFixed(1)} µs CPU per instance sample `
    + `(${PASSES} passes over ${instances.length} idle instances); at the default 1 s interval that is the cost per instance per second`)
})

t.test('an instance waiting in its prewarm pool is read every idleEvery-th pass; one serving calls every pass', async (t) => {
  const p = await startPlatform(t, { KINDLING_LOADGUARD_INTERVAL_MS: 3_600_000, KINDLING_LOADGUARD_IDLE_EVERY: 5 })
  const guard = p.loadGuard
  t.ok(guard, 'the guard runs (root, cgroup v1)')
  if (guard === undefined) return
  await p.deploy('waits', { runtime: 'node', prewarm: 4, code: 'export default () => "w"' })
  await p.deploy('works', { runtime: 'node', mode: 'persistent', code: 'export default () => "w"' })
  t.equal((await p.invoke('works')).status, 200)
  await waitFor(() => [...p.pools.instances()].filter((i) => i.fn === 'waits' && i.state === 'loaded').length >= 4 || undefined, 'four prewarmed instances')
  t.ok([...p.pools.instances()].some((i) => i.fn === 'works' && i.state === 'leased'), 'the working one is held by the router')
  await guard.tick() // every instance's first read: the baseline
  const before = guard.cost().samples
  for (let i = 0; i < 20; i++) await guard.tick()
  // 20 passes: the leased instance 20 reads, each of the 4 idle ones 4 (every 5th pass).
  t.equal(guard.cost().samples - before, 20 + 4 * 4)
})
