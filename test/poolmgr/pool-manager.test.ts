import t from 'tap'
import { HOST_BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

const generic = (p: TestPlatform) => p.pools.snapshot().find((s) => s.pool === 'generic:node')!

t.test('a generic pool grows after cold starts and shrinks back one step per calm window', async (t) => {
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 0, KINDLING_POOL_MAX_SIZE: 3, KINDLING_POOL_ADAPT_INTERVAL_MS: 3_600_000 })
  for (let i = 0; i < 4; i++) {
    await p.deploy(`f${i}`, { runtime: 'node', code: 'export default () => "x"', mode: 'persistent' })
    const res = await p.invoke(`f${i}`)
    t.equal(res.headers['x-kindling-start'], 'cold', `f${i} started cold: the pool is empty`)
  }
  p.pools.adapt()
  t.equal(generic(p).target, 2, '4 cold starts / threshold 2 × increment 1 → 2')
  await waitFor(() => generic(p).idle === 2, 'the pool to fill to its new target')
  await p.deploy('g', { runtime: 'node', code: 'export default () => "y"', mode: 'persistent' })
  await waitFor(() => generic(p).idle === 2, 'the pool to refill after the trial load')
  t.equal((await p.invoke('g')).headers['x-kindling-start'], 'specialized', 'the grown pool turns a cold start into a specialized one')
  p.pools.adapt()
  t.equal(generic(p).target, 1, 'a calm window shrinks the target by one')
  await waitFor(() => generic(p).idle <= 1, 'the surplus idle instance to go')
  p.pools.adapt()
  t.equal(generic(p).target, 0, 'down to the configured poolSize, not below')
  p.pools.adapt()
  t.equal(generic(p).target, 0)
})

t.test('the memory budget evicts idle pooled instances first, then refuses with KDL_ERR_NO_CAPACITY', async (t) => {
  const p = await startPlatform(t, { KINDLING_POOL_SIZE: 2, KINDLING_MEMORY_BUDGET_MB: 256, KINDLING_IDLE_MEMORY_RATIO: 1, KINDLING_POOL_ADAPTIVE: 'false' })
  await waitFor(() => generic(p).idle === 2, 'two generic instances (2 × 128 MiB = the whole budget)')
  t.equal(p.pools.usedMemoryMb(), 256)
  const big = await p.deploy('big', { runtime: 'node', code: 'export default () => "big"', memoryMb: 256, mode: 'persistent' })
  t.equal(big.status, 201, 'the deploy made room by evicting the idle generic instances')
  const res = await p.invoke('big')
  t.equal(res.status, 200)
  t.ok(p.pools.usedMemoryMb() <= 256, 'never over the budget')
  const huge = await p.deploy('huge', { runtime: 'node', code: 'export default () => "huge"', memoryMb: 512 })
  t.equal(huge.status, 503)
  t.equal(huge.json['code'], 'KDL_ERR_NO_CAPACITY')
})

for (const backend of HOST_BACKENDS) t.test(`on the ${backend} backend, pool instances start at a small CPU share and get a full one when they serve a call`, async (t) => {
  const { readFile } = await import('node:fs/promises')
  const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_POOL_SIZE: 1, KINDLING_POOL_ADAPTIVE: 'false' })
  await waitFor(() => generic(p).idle === 1, 'the generic pool to fill')
  const shares = async (id: string): Promise<number> => {
    const inst = [...p.pools.instances()].find((i) => i.id === id)
    return Number(await readFile(`${inst!.handle.cgroup!.paths['cpu']}/cpu.shares`, 'utf8'))
  }
  const idle = [...p.pools.instances()].find((i) => i.state === 'generic')!
  t.equal(await shares(idle.id), 64, 'a refill runs in the background: it never competes with calls being served')
  await p.deploy('served', { runtime: 'node', code: 'export default () => "s"', mode: 'persistent', prewarm: 1 })
  await waitFor(() => p.pools.snapshot().find((s) => s.pool === 'fn:served@1')?.idle === 1, 'the prewarm pool to fill')
  const res = await p.invoke('served')
  t.equal(res.headers['x-kindling-start'], 'prewarmed')
  const serving = [...p.pools.instances()].find((i) => i.fn === 'served' && i.state === 'leased')!
  t.equal(await shares(serving.id), 1024, 'the instance serving the call has the full share')
})

for (const backend of HOST_BACKENDS) t.test(`on the ${backend} backend, no more instance starts run at once than KINDLING_MAX_STARTING; the calls beyond wait their turn`, async (t) => {
  const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_POOL_SIZE: 0, KINDLING_POOL_ADAPTIVE: 'false', KINDLING_MAX_STARTING: 2 })
  t.same((await p.api('GET', '/v1/pools')).json['starts'], { running: 0, waiting: 0, limit: 2 }, 'GET /v1/pools shows the start gate')
  await p.deploy('burst', { runtime: 'node', code: 'export default () => "b"', mode: 'ephemeral', maxInstances: 6 })
  // Counted where the engine is asked: every start that reaches the backend, and how many are in it at once.
  const real = p.pools.backend
  const start = real.start.bind(real)
  let inBackend = 0
  let most = 0
  let started = 0
  real.start = async (req) => {
    inBackend++
    started++
    most = Math.max(most, inBackend)
    try { return await start(req) } finally { inBackend-- }
  }
  t.teardown(() => { real.start = start })
  const answers = await Promise.all(Array.from({ length: 6 }, () => p.invoke('burst')))
  t.same(answers.map((a) => a.status), [200, 200, 200, 200, 200, 200], 'every call of the burst is answered')
  t.same(answers.map((a) => a.headers['x-kindling-start']), ['cold', 'cold', 'cold', 'cold', 'cold', 'cold'], 'each on an instance started for it')
  t.ok(started >= 6, `${started} starts reached the backend`)
  t.equal(most, 2, 'two at a time, never more')
  t.same(p.pools.starts(), { running: 0, waiting: 0, limit: 2 }, 'every turn was given back')
})
