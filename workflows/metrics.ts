import { Counter, Histogram, type Registry } from 'prom-client'

/** The workflows' metrics (issue 12), on the platform's registry. */
export class WorkflowMetrics {
  readonly runs: Counter<'workflow' | 'status'>
  readonly steps: Histogram<'workflow' | 'type'>

  constructor(registry: Registry) {
    const registers = [registry]
    this.runs = new Counter({
      name: 'kindling_workflow_runs_total', help: 'Workflow runs that ended (succeeded, failed, cancelled) and that started (started), by workflow.',
      labelNames: ['workflow', 'status'], registers,
    })
    this.steps = new Histogram({
      name: 'kindling_workflow_step_duration_seconds', help: 'Time of one workflow state from its entry to its output, by workflow and state type (retries and waits included).',
      labelNames: ['workflow', 'type'], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    })
  }
}
