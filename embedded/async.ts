import { randomBytes } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { asyncIngress, submit, type AsyncCall } from '../async/ingress.js'
import { AsyncMetrics } from '../async/metrics.js'
import { AsyncQueue } from '../async/queue.js'
import { AsyncWorkers } from '../async/worker.js'
import type { Config } from '../common/config.js'
import type { EventLog } from '../common/events.js'
import type { Shared } from './shared.js'

/** Longest back-off of a retry, ms (Lambda's async retries wait up to minutes). */
const RETRY_CAP_MS = 5 * 60_000

/** Async invocations of one replica (issue 11): the queue, the router's hand-over, the workers. */
export interface AsyncPart {
  queue: AsyncQueue
  /** For RouterDeps.asyncInvoke. */
  invoke: (key: string, rest: string, req: IncomingMessage, res: ServerResponse) => void
  /** For RouterDeps.asyncToken: a job's call carries it. */
  token: string
  /** Enqueues a call the platform makes itself (a cron tick); `idempotencyKey` makes a repeat a no-op. */
  submit(key: string, call: AsyncCall, idempotencyKey?: string): Promise<{ id: string; existing: boolean }>
  /** Starts this replica's workers once it listens on `url`. */
  start(url: string): Promise<void>
  /** Stops the workers (jobs in flight finish within `graceMs`, the rest stay pending for reclaim). */
  close(graceMs: number): Promise<void>
}

export async function openAsync(opts: { shared: Shared; config: Config; log: Logger; registry: Registry; events: EventLog }): Promise<AsyncPart> {
  const { shared, config } = opts
  const log = opts.log.child({ component: 'async' })
  const queue = new AsyncQueue({ redis: shared.redis, prefix: shared.prefix })
  await queue.init()
  const metrics = new AsyncMetrics(opts.registry)
  const token = randomBytes(16).toString('hex')
  let workers: AsyncWorkers | undefined
  return {
    queue,
    token,
    invoke: asyncIngress({ queue, store: shared.store, maxBodyBytes: config.KINDLING_ASYNC_MAX_BODY_BYTES, reclaimMarginMs: config.KINDLING_ASYNC_RECLAIM_MARGIN_MS, log }),
    submit: (key, call, idempotencyKey) => submit({ queue, store: shared.store, reclaimMarginMs: config.KINDLING_ASYNC_RECLAIM_MARGIN_MS }, key, call, idempotencyKey),
    start: async (url) => {
      workers = new AsyncWorkers({
        queue, blocking: await shared.connect('async', { blocking: true }), consumer: shared.replicaId, concurrency: config.KINDLING_ASYNC_CONCURRENCY, url, token,
        retry: { baseMs: config.KINDLING_ASYNC_RETRY_BASE_MS, capMs: RETRY_CAP_MS }, minReclaimMs: config.KINDLING_ASYNC_RECLAIM_MARGIN_MS,
        maxResultBytes: config.KINDLING_ASYNC_MAX_BODY_BYTES, metrics, events: opts.events, log,
      })
      await workers.start()
    },
    close: async (graceMs) => { await workers?.close(graceMs) },
  }
}
