import { Counter, Gauge, type Registry } from 'prom-client'

export type GuardAction = 'throttle' | 'quarantine' | 'kill' | 'release'

/** The load guard's metrics, on the Registry the composition root passes in. */
export class GuardMetrics {
  readonly actions: Counter<'action'>
  readonly cpuRatio: Gauge<'function' | 'instance'>
  readonly memoryBytes: Gauge<'function' | 'instance'>
  readonly tickSeconds: Gauge

  constructor(registry: Registry) {
    const registers = [registry]
    this.actions = new Counter({ name: 'kindling_loadguard_actions_total', help: 'Load-guard actions (throttle, quarantine, kill, release).', labelNames: ['action'], registers })
    // Every action is exported from the start, so a rate over it is defined before the first one.
    for (const action of ['throttle', 'quarantine', 'kill', 'release'] satisfies GuardAction[]) this.actions.inc({ action }, 0)
    this.cpuRatio = new Gauge({
      name: 'kindling_instance_cpu_ratio', help: 'CPU used over the last sampling interval as a fraction of the instance\'s CPU quota at start.', labelNames: ['function', 'instance'], registers,
    })
    this.memoryBytes = new Gauge({ name: 'kindling_instance_memory_bytes', help: 'Memory charged to the instance\'s cgroup.', labelNames: ['function', 'instance'], registers })
    this.tickSeconds = new Gauge({ name: 'kindling_loadguard_tick_seconds', help: 'Wall time of the last sampling pass over all instances.', registers })
  }

  /** The gauge children of one instance. */
  bind(fn: string, instance: string): { cpu: { set(v: number): void }; memory: { set(v: number): void } } {
    return { cpu: this.cpuRatio.labels(fn, instance), memory: this.memoryBytes.labels(fn, instance) }
  }

  forget(fn: string, instance: string): void {
    this.cpuRatio.remove({ function: fn, instance })
    this.memoryBytes.remove({ function: fn, instance })
  }
}
