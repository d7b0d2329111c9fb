import t from 'tap'
import { parseDefinition } from '../../workflows/definition.js'

// The definition language (issue 12): what is refused, with which code, naming which state and field.

function refusal(doc: unknown): { code: string; state: unknown; field: unknown; message: string; position?: unknown } {
  try {
    parseDefinition(doc)
  } catch (err) {
    const e = err as { code: string; message: string; details?: Record<string, unknown> }
    return { code: e.code, message: e.message, state: e.details?.['state'], field: e.details?.['field'], ...(e.details?.['position'] === undefined ? {} : { position: e.details['position'] }) }
  }
  throw new Error('the definition was accepted')
}

const task = (fn: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({ type: 'task', function: fn, ...more })

t.test('a valid definition is normalised: defaults filled, map.task becomes a one-state processor', async (t) => {
  const def = parseDefinition({
    startAt: 'Charge',
    states: {
      Charge: task('charge', { retry: [{ errors: ['Flaky'] }], next: 'Items' }),
      Items: { type: 'map', items: 'lines', task: { function: 'ship', timeoutMs: 500 }, end: true },
    },
  })
  t.same(def.states['Charge'], { type: 'task', function: 'charge', next: 'Items', retry: [{ errors: ['Flaky'], maxAttempts: 3, intervalMs: 1000, backoffRate: 2, jitter: 'none' }] })
  t.match(def.states['Items'], { type: 'map', maxConcurrency: 0, items: 'lines', processor: { startAt: 'task', states: { task: { type: 'task', function: 'ship', timeoutMs: 500, end: true } } } })
})

t.test('an unknown state type, a typo in a field, a next and end together: KDL_ERR_WF_INVALID naming state and field', async (t) => {
  t.match(refusal({ startAt: 'A', states: { A: { type: 'lambda', end: true } } }), { code: 'KDL_ERR_WF_INVALID', state: 'A', field: 'type' })
  t.match(refusal({ startAt: 'A', states: { A: task('f', { nxt: 'B', end: true }) } }), { code: 'KDL_ERR_WF_INVALID', state: 'A', field: 'nxt' })
  t.match(refusal({ startAt: 'A', states: { A: task('f', { next: 'B', end: true }), B: { type: 'succeed' } } }), { code: 'KDL_ERR_WF_INVALID', state: 'A', field: 'next' })
  t.match(refusal({ startAt: 'A', states: { A: task('F_bad', { end: true }) } }), { code: 'KDL_ERR_WF_INVALID', state: 'A', field: 'function' })
  t.match(refusal({ startAt: 'A', states: { A: { type: 'succeed' }, Lost: { type: 'succeed' } } }), { code: 'KDL_ERR_WF_INVALID', state: 'Lost', message: /never reached/ })
  t.match(refusal({ startAt: 'A', states: { 'A/B': { type: 'succeed' } } }), { code: 'KDL_ERR_WF_INVALID', state: 'A/B' })
  t.match(refusal({ startAt: 'A', states: {} }), { code: 'KDL_ERR_WF_INVALID', field: 'states' })
})

t.test('a target that is not a state: KDL_ERR_WF_UNKNOWN_STATE, also inside a parallel branch', async (t) => {
  t.match(refusal({ startAt: 'Nope', states: { A: { type: 'succeed' } } }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', field: 'startAt' })
  t.match(refusal({ startAt: 'A', states: { A: task('f', { next: 'Shipp' }), Ship: { type: 'succeed' } } }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', state: 'A', field: 'next', message: /"Shipp"/ })
  t.match(refusal({
    startAt: 'C', states: { C: { type: 'choice', choices: [{ condition: '$.ok', next: 'Yes' }], default: 'No' }, Yes: { type: 'succeed' } },
  }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', state: 'C', field: 'default' })
  t.match(refusal({
    startAt: 'P', states: { P: { type: 'parallel', branches: [{ startAt: 'X', states: { X: task('f', { next: 'Y' }) } }], end: true } },
  }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', state: 'P#0/X', field: 'next' })
  t.match(refusal({ startAt: 'A', states: { A: task('f', { catch: [{ errors: ['*'], next: 'Gone' }], end: true }) } }), { code: 'KDL_ERR_WF_UNKNOWN_STATE', state: 'A', field: 'catch[0].next' })
})

t.test('a state without next or end: KDL_ERR_WF_MISSING_NEXT', async (t) => {
  t.match(refusal({ startAt: 'A', states: { A: task('f') } }), { code: 'KDL_ERR_WF_MISSING_NEXT', state: 'A', field: 'next' })
  t.match(refusal({ startAt: 'W', states: { W: { type: 'wait', seconds: 1 } } }), { code: 'KDL_ERR_WF_MISSING_NEXT', state: 'W' })
  t.match(refusal({ startAt: 'C', states: { C: { type: 'choice', choices: [{ condition: 'true' }] } } }), { code: 'KDL_ERR_WF_MISSING_NEXT', state: 'C', field: 'choices[0].next' })
})

t.test('a cycle with no exit: KDL_ERR_WF_NO_EXIT; a loop with a way out is fine', async (t) => {
  t.match(refusal({ startAt: 'A', states: { A: task('f', { next: 'B' }), B: { type: 'wait', seconds: 1, next: 'A' } } }), { code: 'KDL_ERR_WF_NO_EXIT', state: 'A' })
  // A choice that only ever loops back is still a cycle with no exit.
  t.match(refusal({
    startAt: 'Poll', states: { Poll: task('f', { next: 'Check' }), Check: { type: 'choice', choices: [{ condition: '$.done', next: 'Poll' }], default: 'Poll' } },
  }), { code: 'KDL_ERR_WF_NO_EXIT' })
  t.doesNotThrow(() => parseDefinition({
    startAt: 'Poll', states: { Poll: task('f', { next: 'Check' }), Check: { type: 'choice', choices: [{ condition: '$.done', next: 'Done' }], default: 'Poll' }, Done: { type: 'succeed' } },
  }))
})

t.test('an expression that does not parse: KDL_ERR_WF_BAD_EXPRESSION with its position', async (t) => {
  t.match(refusal({ startAt: 'A', states: { A: { type: 'pass', input: '$sum(items.price', end: true } } }), { code: 'KDL_ERR_WF_BAD_EXPRESSION', state: 'A', field: 'input', position: 16 })
  t.match(refusal({ startAt: 'C', states: { C: { type: 'choice', choices: [{ condition: '$.total >', next: 'D' }] }, D: { type: 'succeed' } } }), { code: 'KDL_ERR_WF_BAD_EXPRESSION', state: 'C', field: 'choices[0].condition' })
  t.match(refusal({ startAt: 'W', states: { W: { type: 'wait', seconds: '{% $.delay * %}', end: true } } }), { code: 'KDL_ERR_WF_BAD_EXPRESSION', state: 'W', field: 'seconds' })
  t.match(refusal({ startAt: 'M', states: { M: { type: 'map', items: 'lines', processor: { startAt: 'X', states: { X: { type: 'pass', output: '{', end: true } } }, end: true } } }), { code: 'KDL_ERR_WF_BAD_EXPRESSION', state: 'M[]/X', field: 'output' })
})
