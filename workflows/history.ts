import type { RunEvent, RunStatus } from '../common/workflows.js'

/** One step of a run as `GET /v1/runs/:id` shows it: derived from the run's log, in the order steps started. */
export interface StepView {
  id: string
  state: string
  type: string
  status: 'running' | 'waiting' | 'succeeded' | 'failed' | 'cancelled'
  input?: unknown
  output?: unknown
  error?: { error: string; cause: string }
  attempts: number
  startedAt: string
  endedAt?: string
  ms?: number
}

/** The step history of a run's log; steps still open in a finished run show `cancelled` (cancelled run) or stay as they were. */
export function stepsOf(log: readonly RunEvent[], status: RunStatus): StepView[] {
  const steps = new Map<string, StepView & { t0: number }>()
  for (const e of log) {
    const id = e['id']
    if (typeof id !== 'string') continue
    const at = Number(e['at'])
    const iso = new Date(at).toISOString()
    const s = steps.get(id)
    switch (e['t']) {
      case 'enter':
        steps.set(id, { id, state: String(e['state']), type: String(e['type']), status: 'running', input: e['input'], attempts: 0, startedAt: iso, t0: at })
        break
      case 'try':
        if (s !== undefined) { s.attempts = Number(e['n']); s.status = 'running' }
        break
      case 'retry':
        if (s !== undefined) { s.status = 'waiting'; s.error = e['error'] as StepView['error'] }
        break
      case 'wait':
        if (s !== undefined) s.status = 'waiting'
        break
      case 'exit':
        if (s !== undefined) {
          const caught = e['caught'] as StepView['error'] | undefined
          s.status = caught === undefined ? 'succeeded' : 'failed'
          s.output = e['output']
          if (caught !== undefined) s.error = caught
          else delete s.error
          s.endedAt = iso
          s.ms = at - s.t0
        }
        break
      case 'fail':
        if (s !== undefined) { s.status = 'failed'; s.error = e['error'] as StepView['error']; s.endedAt = iso; s.ms = at - s.t0 }
        break
    }
  }
  return [...steps.values()].map(({ t0: _t0, ...v }) => {
    if (status === 'cancelled' && (v.status === 'running' || v.status === 'waiting')) v.status = 'cancelled'
    return v
  })
}
