import { Counter, Histogram, type Registry } from 'prom-client'

/** The async invocations' metrics (issue 11), on the platform's registry. */
export class AsyncMetrics {
  readonly jobs: Counter<'result'>
  readonly queueSeconds: Histogram

  constructor(registry: Registry) {
    const registers = [registry]
    this.jobs = new Counter({
      name: 'kindling_async_jobs_total', help: 'Settled async deliveries, by result: succeeded, failed (4xx, not retried), retried, dead, lost (a reclaimed delivery whose late worker tried to settle it).',
      labelNames: ['result'], registers,
    })
    this.queueSeconds = new Histogram({
      name: 'kindling_async_queue_seconds', help: 'Time from an async job becoming due (enqueue, retry due time, redrive) to a worker starting it.', registers,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    })
  }
}
