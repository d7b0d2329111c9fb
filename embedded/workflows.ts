import { join } from 'node:path'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { WorkflowRouteDeps } from '../api/workflows.js'
import type { Config } from '../common/config.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import type { Invoke } from '../common/invoke.js'
import type { Locks } from '../common/keyed-mutex.js'
import type { WorkflowStore } from '../common/workflows.js'
import type { Executor } from '../executor/executor.js'
import type { Releases } from '../releases/versions.js'
import { FileWorkflowStore } from '../store/file-workflows.js'
import { RedisWorkflowStore } from '../store/redis-workflows.js'
import { WorkflowEngine } from '../workflows/engine.js'
import { WorkflowMetrics } from '../workflows/metrics.js'
import type { Shared } from './shared.js'

/** Sleeps at least this long, with nothing else of the run running, take the run out of memory (a stored timer wakes it). */
const PARK_AFTER_MS = 2000

export interface Workflows {
  store: WorkflowStore
  engine: WorkflowEngine
  /** For the API's workflow routes and `/wf/:name`. */
  routes: WorkflowRouteDeps
  /** Stops advancing runs (steps in flight finish, bounded), then the store. */
  close(graceMs: number): Promise<void>
}

/**
 * Workflows of one replica (issue 12): runs live where specs do — the file store on the embedded default,
 * Redis when configured — and every step calls its function through the router's own path (`invoke`).
 */
export async function openWorkflows(o: {
  config: Config; dataDir: string; shared: Shared | undefined; invoke: Invoke; executor: Executor; releases: Releases
  locks: Locks; events: EventLog; registry: Registry; log: Logger
}): Promise<Workflows> {
  const { config } = o
  const store: WorkflowStore = o.shared === undefined
    ? await FileWorkflowStore.open({ dir: join(o.dataDir, 'store', 'workflows') })
    : await RedisWorkflowStore.open({ redis: o.shared.redis, prefix: o.shared.prefix })
  const engine = new WorkflowEngine({
    store, invoke: o.invoke, owner: o.shared?.replicaId ?? 'local', events: o.events, metrics: new WorkflowMetrics(o.registry), log: o.log,
    limits: { maxPayloadBytes: config.KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES, maxSteps: config.KINDLING_WORKFLOW_MAX_STEPS, parkAfterMs: PARK_AFTER_MS },
    pin: (name, version) => o.releases.pin(name, version),
    resolve: async (key) => {
      const route = await o.executor.resolve(key)
      // A weighted alias (a canary) is drawn once, at the run's start: the whole run keeps that version.
      const total = route.targets.reduce((n, t) => n + t.weight, 0)
      let draw = Math.random() * total
      const target = route.targets.find((t) => (draw -= t.weight) < 0) ?? route.targets[0]
      if (target === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `"${key}" routes to no version`)
      return { name: route.name, version: target.spec.version }
    },
  })
  return {
    store, engine,
    routes: { store, engine, locks: o.locks, maxInputBytes: config.KINDLING_WORKFLOW_MAX_INPUT_BYTES, syncWaitMs: config.KINDLING_WORKFLOW_SYNC_WAIT_MS },
    close: async (graceMs) => {
      await engine.close(graceMs)
      await store.close()
    },
  }
}
