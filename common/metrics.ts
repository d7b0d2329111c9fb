import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

/** What a pool reports at scrape time (PoolManager.snapshot). */
export interface PoolNumbers {
  pool: string
  idle: number
  starting: number
  target: number
  unmet?: string | undefined
}

/**
 * Every `kindling_*` metric, registered on a Registry that the composition root creates
 * (no default registry: two platforms in one test process must not share counters).
 */
export class Metrics {
  readonly registry: Registry
  readonly invocations: Counter<'function' | 'version' | 'code'>
  readonly invocationDuration: Histogram<'function' | 'version'>
  readonly coldStarts: Counter<'kind'>
  readonly coldStartPhase: Histogram<'phase'>
  readonly poolInstances: Gauge<'pool' | 'state'>
  readonly recycles: Counter<'reason'>
  readonly retries: Counter<'stage'>
  readonly canarySteps: Counter<'result'>
  #poolSource: (() => PoolNumbers[]) | undefined

  /** Where `kindling_pool_instances` and `kindling_pool_unmet` read their numbers at scrape time. */
  setPoolSource(source: () => PoolNumbers[]): void {
    this.#poolSource = source
  }

  /**
   * Drops the series of a function's version (pruned), or of every version (deleted), so the label set
   * stays bounded by the versions kept.
   */
  async forgetVersion(fn: string, version?: string): Promise<void> {
    for (const metric of [this.invocations, this.invocationDuration] as Array<Counter<string> | Histogram<string>>) {
      const { values } = await metric.get()
      const seen = new Set<string>()
      for (const { labels } of values) {
        if (labels.function !== fn || (version !== undefined && labels.version !== version)) continue
        const own: Record<string, string> = {}
        for (const k of ['function', 'version', 'code']) if (labels[k] !== undefined) own[k] = String(labels[k])
        const id = JSON.stringify(own)
        if (seen.has(id)) continue
        seen.add(id)
        metric.remove(own)
      }
    }
  }

  constructor(registry: Registry) {
    this.registry = registry
    const registers = [registry]
    this.invocations = new Counter({ name: 'kindling_invocations_total', help: 'Invocations by function, version and answer code (HTTP status or KDL_ERR_*).', labelNames: ['function', 'version', 'code'], registers })
    this.invocationDuration = new Histogram({
      name: 'kindling_invocation_duration_seconds', help: 'Time from request to response end, through the router.', labelNames: ['function', 'version'], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    })
    this.coldStarts = new Counter({ name: 'kindling_cold_starts_total', help: 'Calls that needed an instance not yet serving the function, by how it was found.', labelNames: ['kind'], registers })
    this.coldStartPhase = new Histogram({
      name: 'kindling_cold_start_phase_seconds', help: 'Cold-start phases: queue wait, instance start, code load.', labelNames: ['phase'], registers,
      buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    })
    const poolGauge: Gauge<'pool' | 'state'> = new Gauge({
      name: 'kindling_pool_instances', help: 'Instances per pool and state.', labelNames: ['pool', 'state'], registers,
      collect: () => {
        if (this.#poolSource === undefined) return
        poolGauge.reset()
        for (const p of this.#poolSource()) {
          poolGauge.set({ pool: p.pool, state: 'idle' }, p.idle)
          poolGauge.set({ pool: p.pool, state: 'starting' }, p.starting)
          poolGauge.set({ pool: p.pool, state: 'target' }, p.target)
        }
      },
    })
    this.poolInstances = poolGauge
    const unmetGauge: Gauge<'pool' | 'reason'> = new Gauge({
      name: 'kindling_pool_unmet', help: 'Instances a pool is short of its target while it cannot fill (reason: budget), by pool; absent when it is full or filling.', labelNames: ['pool', 'reason'], registers,
      collect: () => {
        if (this.#poolSource === undefined) return
        unmetGauge.reset()
        for (const p of this.#poolSource()) if (p.unmet !== undefined) unmetGauge.set({ pool: p.pool, reason: p.unmet }, Math.max(0, p.target - p.idle - p.starting))
      },
    })
    this.retries = new Counter({
      name: 'kindling_call_retries_total', help: 'Calls served on another instance because theirs died before the call reached it, by stage (acquire: start or load; send: connect).',
      labelNames: ['stage'], registers,
    })
    this.canarySteps = new Counter({ name: 'kindling_canary_steps_total', help: 'Canary verdicts (issue 15), by result: pass, hold, breach.', labelNames: ['result'], registers })
    this.recycles = new Counter({ name: 'kindling_recycles_total', help: 'Instances retired by the platform, by reason (ephemeral, max-invocations, max-age, exhausted, retire, idle, crashed, timeout).', labelNames: ['reason'], registers })
  }
}
