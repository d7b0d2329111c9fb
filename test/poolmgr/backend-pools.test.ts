import { pino } from 'pino'
import t from 'tap'
import type { ContainerBackend, GenericPoolSpec, InstanceExit, InstanceHandle, InstanceRequest } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import { PoolManager } from '../../poolmgr/pool-manager.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 10: a backend that keeps the generic pools itself (kubernetes: a Deployment per runtime) is handed each
// runtime's pool; the pool manager keeps none, and every take goes to the backend's start().

/** A backend that records what it is asked and starts nothing real (dispatchers connect only when used). */
class PoolOwningBackend implements ContainerBackend {
  readonly name = 'fake'
  readonly ownsGenericPools = true
  readonly pools: GenericPoolSpec[] = []
  readonly starts: InstanceRequest[] = []
  failPools = 0

  genericPoolIdle(): number { return 2 }

  async setGenericPool(pool: GenericPoolSpec): Promise<void> {
    if (this.failPools > 0) {
      this.failPools--
      throw new KdlError('KDL_ERR_BACKEND', 'the API server is away')
    }
    this.pools.push(pool)
  }

  async start(req: InstanceRequest): Promise<InstanceHandle> {
    this.starts.push(req)
    const fits = req.memoryMb === 128 && req.network === 'none' && req.quarantine !== true
    return { id: req.id, runtime: req.runtime, pool: req.pool, address: { host: '127.0.0.1', port: 9 }, startedAt: Date.now(), pooled: fits }
  }

  async stop(): Promise<void> {}
  async list(): Promise<Array<{ id: string; pool: string; runtime: string }>> { return [] }
  async prepareCode(): Promise<string> { return '/code' }
  onExit(_listener: (exit: InstanceExit) => void): void {}
  async exitReason(): Promise<undefined> { return undefined }
  async close(): Promise<void> {}
}

const runtime = { name: 'node', poolSize: 3, memoryMb: 128, cpu: 0.5 }

t.test('a backend that owns the generic pools gets each runtime\'s pool, and the pool manager keeps none of its own', async (t) => {
  const backend = new PoolOwningBackend()
  const pools = new PoolManager({ backend, log: pino({ level: 'silent' }), pidsLimit: 64, retryMs: 20 })
  t.teardown(() => pools.close())
  pools.setRuntime(runtime)
  await waitFor(() => backend.pools.length === 1, 'the pool to reach the backend')
  t.same(backend.pools[0], { runtime: 'node', size: 3, memoryMb: 128, cpu: 0.5, image: undefined })
  t.match(pools.snapshot().find((s) => s.pool === 'generic:node'), { target: 3, idle: 2, starting: 0 }, 'the snapshot shows the backend\'s pool: its size and its idle instances')
  t.equal(backend.starts.length, 0, 'nothing started to fill a pool')

  pools.setRuntime({ ...runtime, poolSize: 5 })
  await waitFor(() => backend.pools.length === 2, 'the resize to reach the backend')
  t.equal(backend.pools[1]?.size, 5)

  const warm = await pools.takeOrStart('f', 'node', { memoryMb: 128, cpu: 0.5, network: 'none' })
  t.equal(warm.started, false, 'an instance claimed from the backend\'s pool is a warm start')
  t.equal(backend.starts[0]?.pool, 'fn:f', 'the take went to the backend\'s start, for the function')
  const cold = await pools.takeOrStart('g', 'node', { memoryMb: 256, cpu: 0.5, network: 'none' })
  t.equal(cold.started, true, 'one started for other resources is a cold start')
})

t.test('a pool the backend refuses is retried after the back-off until it is taken', async (t) => {
  const backend = new PoolOwningBackend()
  backend.failPools = 2
  const pools = new PoolManager({ backend, log: pino({ level: 'silent' }), pidsLimit: 64, retryMs: 20 })
  t.teardown(() => pools.close())
  pools.setRuntime(runtime)
  await waitFor(() => backend.pools.length === 1, 'the pool to be taken after two refusals')
  t.equal(backend.failPools, 0, 'both refusals were retried')
  t.equal(backend.pools[0]?.size, 3)
})
