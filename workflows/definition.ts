import jsonata from 'jsonata'
import { KdlError, type ErrorCode } from '../common/errors.js'

/**
 * The workflow definition language (issue 12): the Step Functions state set users know, in camelCase YAML or
 * JSON, with JSONata (never `eval`) wherever data is shaped or tested. `parseDefinition` validates a document
 * and returns it normalised; every refusal names the state and the field.
 */

export interface Branch {
  startAt: string
  states: Record<string, State>
}

export interface Definition extends Branch {
  comment?: string
}

/** What every state may carry: how it reads its input and places its result (README, Workflows). */
interface Flow {
  comment?: string
  next?: string
  end?: boolean
  /** JSONata over the state's input (`$`): what the state works on. Default: the input itself. */
  input?: string
  /** JSONata over the result (`$`, with `$input` the state's input): the state's output. Default: the result. */
  output?: string
  /** Instead of `output`: keep the input and put the result at this dotted path (`charge`, `order.total`); null drops the result. */
  resultPath?: string | null
}

export interface Retrier {
  /** Error names matched (`*` matches any). */
  errors: string[]
  /** Retries after the first attempt (Step Functions' MaxAttempts). */
  maxAttempts: number
  intervalMs: number
  backoffRate: number
  maxIntervalMs?: number
  jitter: 'full' | 'none'
}

export interface Catcher {
  errors: string[]
  next: string
  /** Where the error object `{error, cause}` goes in the input; absent: it replaces the input. */
  resultPath?: string | null
}

export interface TaskState extends Flow {
  type: 'task'
  /** `name` or `name@alias`: the version it routes to is pinned when a run starts. */
  function: string
  /** A fixed version instead of the one `function` routes to. */
  version?: number
  timeoutMs?: number
  headers?: Record<string, string>
  retry?: Retrier[]
  catch?: Catcher[]
}

export interface ChoiceRule {
  /** JSONata over the state's input: the first truthy rule's `next` is taken. */
  condition: string
  next: string
}

export interface ChoiceState extends Flow {
  type: 'choice'
  choices: ChoiceRule[]
  default?: string
}

export interface ParallelState extends Flow {
  type: 'parallel'
  branches: Branch[]
  retry?: Retrier[]
  catch?: Catcher[]
}

export interface MapState extends Flow {
  type: 'map'
  /** JSONata over the input giving the array; default the input itself. */
  items?: string
  /** Items in flight at once; 0 = the engine's bound (40, as Step Functions' inline map). */
  maxConcurrency: number
  processor: Branch
  retry?: Retrier[]
  catch?: Catcher[]
}

export interface WaitState extends Flow {
  type: 'wait'
  /** A number, or `{% expression %}`. */
  seconds?: number | string
  /** An ISO 8601 time, or `{% expression %}`. */
  timestamp?: string
}

export interface PassState extends Flow {
  type: 'pass'
  /** A literal result (the input passes through without one). */
  result?: unknown
}

export interface SucceedState extends Flow { type: 'succeed' }

export interface FailState extends Flow {
  type: 'fail'
  error?: string
  cause?: string
}

export type State = TaskState | ChoiceState | ParallelState | MapState | WaitState | PassState | SucceedState | FailState
export type StateType = State['type']

export const STATE_TYPES: readonly StateType[] = ['task', 'choice', 'parallel', 'map', 'wait', 'pass', 'succeed', 'fail']
/** Largest definition, as JSON (Step Functions allows 1 MiB). */
const MAX_DEFINITION_CHARS = 1024 * 1024
/** States one definition may have, its branches' included. */
const MAX_STATES = 5000
/** Longest state name; step ids are built from them. */
const MAX_STATE_NAME = 80
/** Characters step ids use as separators (`Items[2]/Charge`, `Both#1/A`, `Poll@3`). */
const RESERVED = /[/[\]#@]/
const EXPRESSION = /^\{%([\s\S]*)%\}$/
const FLOW_FIELDS = ['type', 'comment', 'next', 'end', 'input', 'output', 'resultPath']
const FIELDS: Record<StateType, readonly string[]> = {
  task: [...FLOW_FIELDS, 'function', 'version', 'timeoutMs', 'headers', 'retry', 'catch'],
  choice: [...FLOW_FIELDS, 'choices', 'default'],
  parallel: [...FLOW_FIELDS, 'branches', 'retry', 'catch'],
  map: [...FLOW_FIELDS, 'items', 'maxConcurrency', 'processor', 'task', 'retry', 'catch'],
  wait: [...FLOW_FIELDS, 'seconds', 'timestamp'],
  pass: [...FLOW_FIELDS, 'result'],
  succeed: ['type', 'comment', 'input', 'output'],
  fail: ['type', 'comment', 'error', 'cause'],
}
const FN_KEY = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(@[A-Za-z0-9][A-Za-z0-9._-]{0,62})?$/

/** The text of a `{% … %}` field, or undefined for a literal. */
export function expressionOf(value: unknown): string | undefined {
  return typeof value === 'string' ? EXPRESSION.exec(value.trim())?.[1]?.trim() : undefined
}

/** True for a state that ends its branch by itself (no `next`). */
export function isTerminal(s: State): boolean {
  return s.type === 'succeed' || s.type === 'fail' || (s.type !== 'choice' && s.end === true)
}

/** Every state a state may go to: `next`, a choice's rules and default, its catchers. */
export function successors(s: State): string[] {
  const out: string[] = []
  if (s.type !== 'choice' && s.type !== 'succeed' && s.type !== 'fail' && s.next !== undefined) out.push(s.next)
  if (s.type === 'choice') {
    for (const r of s.choices) out.push(r.next)
    if (s.default !== undefined) out.push(s.default)
  }
  if ((s.type === 'task' || s.type === 'parallel' || s.type === 'map') && s.catch !== undefined) for (const c of s.catch) out.push(c.next)
  return out
}

/** Validates a definition document and returns it normalised (defaults filled, `map.task` as a processor). */
export function parseDefinition(doc: unknown): Definition {
  const v = new Validator()
  const size = JSON.stringify(doc)?.length ?? 0
  if (size > MAX_DEFINITION_CHARS) v.fail('KDL_ERR_WF_INVALID', '', '', `the definition is ${size} characters as JSON, over the ${MAX_DEFINITION_CHARS} a definition may have`)
  const root = v.branch(doc, '')
  const out: Definition = root
  if (isObject(doc) && doc['comment'] !== undefined) out.comment = v.str(doc['comment'], '', 'comment')
  for (const k of Object.keys(isObject(doc) ? doc : {})) {
    if (!['startAt', 'states', 'comment'].includes(k)) v.fail('KDL_ERR_WF_INVALID', '', k, `unknown field "${k}" (a definition has startAt, states and comment)`)
  }
  return out
}

/** Every JSONata expression of a definition is parsed once here; the engine keeps its own compiled cache. */
export function compile(text: string): jsonata.Expression {
  return jsonata(text)
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x)
}

class Validator {
  /** States seen so far, over every branch. */
  states = 0

  fail(code: ErrorCode, state: string, field: string, message: string, extra: Record<string, unknown> = {}): never {
    const where = state === '' ? (field === '' ? '' : `field "${field}": `) : `state "${state}"${field === '' ? '' : `, field "${field}"`}: `
    throw new KdlError(code, `${where}${message}`, { details: { state: state === '' ? null : state, field: field === '' ? null : field, ...extra } })
  }

  str(x: unknown, state: string, field: string): string {
    if (typeof x !== 'string' || x === '') this.fail('KDL_ERR_WF_INVALID', state, field, 'must be a non-empty string')
    return x
  }

  int(x: unknown, state: string, field: string, min: number, max: number): number {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) this.fail('KDL_ERR_WF_INVALID', state, field, `must be an integer from ${min} to ${max}`)
    return x
  }

  num(x: unknown, state: string, field: string, min: number, max: number): number {
    if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max) this.fail('KDL_ERR_WF_INVALID', state, field, `must be a number from ${min} to ${max}`)
    return x
  }

  /** A JSONata expression field: it must parse. */
  expr(x: unknown, state: string, field: string): string {
    const text = this.str(x, state, field)
    this.compiles(text, state, field)
    return text
  }

  compiles(text: string, state: string, field: string): void {
    try {
      jsonata(text)
    } catch (err) {
      const e = err as { message?: string; position?: number; code?: string }
      this.fail('KDL_ERR_WF_BAD_EXPRESSION', state, field, `${e.message ?? 'does not parse'} (JSONata ${e.code ?? 'error'} at ${e.position ?? 0})`, { position: e.position ?? null })
    }
  }

  errorNames(x: unknown, state: string, field: string): string[] {
    if (!Array.isArray(x) || x.length === 0 || !x.every((e) => typeof e === 'string' && e !== '')) this.fail('KDL_ERR_WF_INVALID', state, field, 'must be a non-empty list of error names ("*" matches any)')
    return x as string[]
  }

  resultPath(x: unknown, state: string, field: string): string | null {
    if (x === null) return null
    const p = this.str(x, state, field).replace(/^\$\.?/, '')
    if (!/^[A-Za-z_$][\w$-]*(\.[A-Za-z_$][\w$-]*)*$/.test(p)) this.fail('KDL_ERR_WF_INVALID', state, field, 'must be a dotted path such as "charge" or "order.total" (or null to drop the result)')
    return p
  }

  retriers(x: unknown, state: string): Retrier[] {
    if (!Array.isArray(x)) this.fail('KDL_ERR_WF_INVALID', state, 'retry', 'must be a list of retriers')
    return x.map((r, i) => {
      const f = `retry[${i}]`
      if (!isObject(r)) this.fail('KDL_ERR_WF_INVALID', state, f, 'must be an object')
      for (const k of Object.keys(r)) if (!['errors', 'maxAttempts', 'intervalMs', 'backoffRate', 'maxIntervalMs', 'jitter'].includes(k)) this.fail('KDL_ERR_WF_INVALID', state, `${f}.${k}`, 'unknown field')
      const out: Retrier = {
        errors: this.errorNames(r['errors'], state, `${f}.errors`),
        maxAttempts: r['maxAttempts'] === undefined ? 3 : this.int(r['maxAttempts'], state, `${f}.maxAttempts`, 0, 100),
        intervalMs: r['intervalMs'] === undefined ? 1000 : this.int(r['intervalMs'], state, `${f}.intervalMs`, 0, 86_400_000),
        backoffRate: r['backoffRate'] === undefined ? 2 : this.num(r['backoffRate'], state, `${f}.backoffRate`, 1, 100),
        jitter: r['jitter'] === undefined ? 'none' : r['jitter'] === 'full' || r['jitter'] === 'none' ? r['jitter'] : this.fail('KDL_ERR_WF_INVALID', state, `${f}.jitter`, 'must be "full" or "none"'),
      }
      if (r['maxIntervalMs'] !== undefined) out.maxIntervalMs = this.int(r['maxIntervalMs'], state, `${f}.maxIntervalMs`, 1, 86_400_000)
      return out
    })
  }

  catchers(x: unknown, state: string): Catcher[] {
    if (!Array.isArray(x)) this.fail('KDL_ERR_WF_INVALID', state, 'catch', 'must be a list of catchers')
    return x.map((c, i) => {
      const f = `catch[${i}]`
      if (!isObject(c)) this.fail('KDL_ERR_WF_INVALID', state, f, 'must be an object')
      for (const k of Object.keys(c)) if (!['errors', 'next', 'resultPath'].includes(k)) this.fail('KDL_ERR_WF_INVALID', state, `${f}.${k}`, 'unknown field')
      const out: Catcher = { errors: this.errorNames(c['errors'], state, `${f}.errors`), next: this.str(c['next'], state, `${f}.next`) }
      if (c['resultPath'] !== undefined) out.resultPath = this.resultPath(c['resultPath'], state, `${f}.resultPath`)
      return out
    })
  }

  /** One branch (the definition itself, a parallel's branch, a map's processor): its states and its graph. */
  branch(doc: unknown, prefix: string): Branch {
    const where = prefix.replace(/\/$/, '')
    if (!isObject(doc)) this.fail('KDL_ERR_WF_INVALID', where, '', 'must be an object with startAt and states')
    const startAt = this.str(doc['startAt'], where, 'startAt')
    const rawStates = doc['states']
    if (!isObject(rawStates) || Object.keys(rawStates).length === 0) this.fail('KDL_ERR_WF_INVALID', where, 'states', 'must be an object of at least one state')
    const states: Record<string, State> = {}
    this.states += Object.keys(rawStates).length
    if (this.states > MAX_STATES) this.fail('KDL_ERR_WF_INVALID', where, 'states', `a definition may have at most ${MAX_STATES} states, its branches' included`)
    for (const [name, raw] of Object.entries(rawStates)) {
      if (name.length > MAX_STATE_NAME || RESERVED.test(name) || name.trim() !== name || name === '') {
        this.fail('KDL_ERR_WF_INVALID', `${prefix}${name}`, '', `a state name is 1 to ${MAX_STATE_NAME} characters without / [ ] # @ or surrounding spaces`)
      }
      states[name] = this.state(raw, `${prefix}${name}`)
    }
    if (states[startAt] === undefined) this.fail('KDL_ERR_WF_UNKNOWN_STATE', where, 'startAt', `names "${startAt}", which is not a state here (states: ${Object.keys(states).join(', ')})`)
    // Every target is a state of this branch (a branch cannot jump into or out of another).
    for (const [name, s] of Object.entries(states)) {
      const targets: Array<[string, string | undefined]> = []
      if (s.type !== 'choice' && s.type !== 'succeed' && s.type !== 'fail') targets.push(['next', s.next])
      if (s.type === 'choice') {
        s.choices.forEach((r, i) => targets.push([`choices[${i}].next`, r.next]))
        targets.push(['default', s.default])
      }
      if (s.type === 'task' || s.type === 'parallel' || s.type === 'map') s.catch?.forEach((c, i) => targets.push([`catch[${i}].next`, c.next]))
      for (const [field, target] of targets) {
        if (target !== undefined && states[target] === undefined) this.fail('KDL_ERR_WF_UNKNOWN_STATE', `${prefix}${name}`, field, `names "${target}", which is not a state of this branch`)
      }
    }
    // Reached from startAt, and able to reach an end: a state that is neither is a mistake worth refusing.
    const reached = new Set<string>([startAt])
    const todo = [startAt]
    while (todo.length > 0) {
      for (const n of successors(states[todo.pop() as string] as State)) if (!reached.has(n)) { reached.add(n); todo.push(n) }
    }
    for (const name of Object.keys(states)) if (!reached.has(name)) this.fail('KDL_ERR_WF_INVALID', `${prefix}${name}`, '', `is never reached from "${startAt}"`)
    // Backwards from the ends over the reversed edges: every state that can reach one (linear in states + edges).
    const preds = new Map<string, string[]>()
    for (const [name, s] of Object.entries(states)) for (const n of successors(s)) preds.set(n, [...preds.get(n) ?? [], name])
    const exits = new Set(Object.entries(states).filter(([, s]) => isTerminal(s)).map(([n]) => n))
    const back = [...exits]
    while (back.length > 0) {
      for (const p of preds.get(back.pop() as string) ?? []) if (!exits.has(p)) { exits.add(p); back.push(p) }
    }
    for (const name of Object.keys(states)) {
      if (!exits.has(name)) this.fail('KDL_ERR_WF_NO_EXIT', `${prefix}${name}`, '', 'is on a cycle with no exit: no path from it reaches an end (end: true, succeed or fail)')
    }
    return { startAt, states }
  }

  state(raw: unknown, at: string): State {
    if (!isObject(raw)) this.fail('KDL_ERR_WF_INVALID', at, '', 'must be an object with a type')
    const type = raw['type']
    if (typeof type !== 'string' || !(STATE_TYPES as readonly string[]).includes(type)) {
      this.fail('KDL_ERR_WF_INVALID', at, 'type', `must be one of ${STATE_TYPES.join(', ')} (got ${JSON.stringify(type)})`)
    }
    const t = type as StateType
    for (const k of Object.keys(raw)) if (!FIELDS[t].includes(k)) this.fail('KDL_ERR_WF_INVALID', at, k, `unknown field for a ${t} state (it takes ${FIELDS[t].join(', ')})`)
    const flow: Flow = {}
    if (raw['comment'] !== undefined) flow.comment = this.str(raw['comment'], at, 'comment')
    if (raw['input'] !== undefined) flow.input = this.expr(raw['input'], at, 'input')
    if (raw['output'] !== undefined) flow.output = this.expr(raw['output'], at, 'output')
    if (raw['resultPath'] !== undefined) {
      if (raw['output'] !== undefined) this.fail('KDL_ERR_WF_INVALID', at, 'resultPath', 'give output or resultPath, not both')
      flow.resultPath = this.resultPath(raw['resultPath'], at, 'resultPath')
    }
    if (t !== 'choice' && t !== 'succeed' && t !== 'fail') {
      const hasNext = raw['next'] !== undefined
      const end = raw['end'] === undefined ? false : raw['end'] === true ? true : this.fail('KDL_ERR_WF_INVALID', at, 'end', 'must be true when given')
      if (hasNext && end) this.fail('KDL_ERR_WF_INVALID', at, 'next', 'give next or end: true, not both')
      if (!hasNext && !end) this.fail('KDL_ERR_WF_MISSING_NEXT', at, 'next', `a ${t} state needs next (the state after it) or end: true`)
      if (hasNext) flow.next = this.str(raw['next'], at, 'next')
      else flow.end = true
    }
    switch (t) {
      case 'task': {
        const fn = this.str(raw['function'], at, 'function')
        if (!FN_KEY.test(fn)) this.fail('KDL_ERR_WF_INVALID', at, 'function', `"${fn}" is not a function name (or name@alias)`)
        const s: TaskState = { type: 'task', ...flow, function: fn }
        if (raw['version'] !== undefined) {
          if (fn.includes('@')) this.fail('KDL_ERR_WF_INVALID', at, 'version', 'give a version or an alias in function, not both')
          s.version = this.int(raw['version'], at, 'version', 1, Number.MAX_SAFE_INTEGER)
        }
        if (raw['timeoutMs'] !== undefined) s.timeoutMs = this.int(raw['timeoutMs'], at, 'timeoutMs', 1, 900_000)
        if (raw['headers'] !== undefined) {
          const h = raw['headers']
          if (!isObject(h) || !Object.entries(h).every(([k, x]) => /^[A-Za-z0-9-]+$/.test(k) && !k.toLowerCase().startsWith('x-kindling-') && typeof x === 'string')) {
            this.fail('KDL_ERR_WF_INVALID', at, 'headers', 'must map header names (not x-kindling-*) to strings')
          }
          s.headers = h as Record<string, string>
        }
        if (raw['retry'] !== undefined) s.retry = this.retriers(raw['retry'], at)
        if (raw['catch'] !== undefined) s.catch = this.catchers(raw['catch'], at)
        return s
      }
      case 'choice': {
        const rules = raw['choices']
        if (!Array.isArray(rules) || rules.length === 0) this.fail('KDL_ERR_WF_INVALID', at, 'choices', 'must be a non-empty list of {condition, next}')
        const s: ChoiceState = {
          type: 'choice', ...flow,
          choices: rules.map((r, i) => {
            if (!isObject(r)) this.fail('KDL_ERR_WF_INVALID', at, `choices[${i}]`, 'must be {condition, next}')
            for (const k of Object.keys(r)) if (k !== 'condition' && k !== 'next') this.fail('KDL_ERR_WF_INVALID', at, `choices[${i}].${k}`, 'unknown field')
            if (r['next'] === undefined) this.fail('KDL_ERR_WF_MISSING_NEXT', at, `choices[${i}].next`, 'a choice rule needs next')
            return { condition: this.expr(r['condition'], at, `choices[${i}].condition`), next: this.str(r['next'], at, `choices[${i}].next`) }
          }),
        }
        if (raw['default'] !== undefined) s.default = this.str(raw['default'], at, 'default')
        return s
      }
      case 'parallel': {
        const bs = raw['branches']
        if (!Array.isArray(bs) || bs.length === 0) this.fail('KDL_ERR_WF_INVALID', at, 'branches', 'must be a non-empty list of {startAt, states}')
        const s: ParallelState = { type: 'parallel', ...flow, branches: bs.map((b, i) => this.branch(b, `${at}#${i}/`)) }
        if (raw['retry'] !== undefined) s.retry = this.retriers(raw['retry'], at)
        if (raw['catch'] !== undefined) s.catch = this.catchers(raw['catch'], at)
        return s
      }
      case 'map': {
        if ((raw['processor'] === undefined) === (raw['task'] === undefined)) this.fail('KDL_ERR_WF_INVALID', at, 'processor', 'give processor (a sub-flow) or task (one task per item), exactly one')
        let processor: Branch
        if (raw['task'] !== undefined) {
          if (!isObject(raw['task'])) this.fail('KDL_ERR_WF_INVALID', at, 'task', 'must be a task state without type, next and end')
          processor = this.branch({ startAt: 'task', states: { task: { ...raw['task'], type: 'task', end: true } } }, `${at}[]/`)
        } else {
          processor = this.branch(raw['processor'], `${at}[]/`)
        }
        const s: MapState = {
          type: 'map', ...flow, processor,
          maxConcurrency: raw['maxConcurrency'] === undefined ? 0 : this.int(raw['maxConcurrency'], at, 'maxConcurrency', 0, 1000),
        }
        if (raw['items'] !== undefined) s.items = this.expr(raw['items'], at, 'items')
        if (raw['retry'] !== undefined) s.retry = this.retriers(raw['retry'], at)
        if (raw['catch'] !== undefined) s.catch = this.catchers(raw['catch'], at)
        return s
      }
      case 'wait': {
        if ((raw['seconds'] === undefined) === (raw['timestamp'] === undefined)) this.fail('KDL_ERR_WF_INVALID', at, 'seconds', 'give seconds or timestamp, exactly one')
        const s: WaitState = { type: 'wait', ...flow }
        const sec = raw['seconds']
        if (sec !== undefined) {
          const e = expressionOf(sec)
          if (e !== undefined) { this.compiles(e, at, 'seconds'); s.seconds = sec as string }
          else s.seconds = this.num(sec, at, 'seconds', 0, 366 * 86_400)
        }
        const ts = raw['timestamp']
        if (ts !== undefined) {
          const e = expressionOf(ts)
          if (e !== undefined) this.compiles(e, at, 'timestamp')
          else if (typeof ts !== 'string' || Number.isNaN(Date.parse(ts))) this.fail('KDL_ERR_WF_INVALID', at, 'timestamp', 'must be an ISO 8601 time or a {% expression %}')
          s.timestamp = ts as string
        }
        return s
      }
      case 'pass': {
        const s: PassState = { type: 'pass', ...flow }
        if (Object.hasOwn(raw, 'result')) s.result = raw['result']
        return s
      }
      case 'succeed':
        return { type: 'succeed', ...flow }
      case 'fail': {
        const s: FailState = { type: 'fail', ...(flow.comment === undefined ? {} : { comment: flow.comment }) }
        if (raw['error'] !== undefined) s.error = this.str(raw['error'], at, 'error')
        if (raw['cause'] !== undefined) s.cause = this.str(raw['cause'], at, 'cause')
        return s
      }
    }
  }
}

/** Every task of a definition, nested branches included (what a run pins). */
export function tasksOf(b: Branch): TaskState[] {
  const out: TaskState[] = []
  for (const s of Object.values(b.states)) {
    if (s.type === 'task') out.push(s)
    else if (s.type === 'parallel') for (const x of s.branches) out.push(...tasksOf(x))
    else if (s.type === 'map') out.push(...tasksOf(s.processor))
  }
  return out
}
