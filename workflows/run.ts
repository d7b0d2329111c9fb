import type { Invoke } from '../common/invoke.js'
import type { RunEvent } from '../common/workflows.js'
import { checkPayload, matches, placeAt, plain, StepError, type StepErrorInfo } from './data.js'
import { expressionOf, type Branch, type Catcher, type Definition, type MapState, type ParallelState, type Retrier, type State, type TaskState } from './definition.js'
import type { Expressions } from './expressions.js'

/**
 * One run, advanced in memory by the replica that holds its claim (issue 12). The run's log is the truth:
 * on a resume the same interpreter walks the definition again, and every state the log shows finished is
 * taken from the log instead of being done again — so a restart re-runs at most the steps that were in
 * flight. Everything a step does to the world (a function call, a timer) happens only after the log
 * entries that lead to it are durable (`flush`).
 *
 * Log entries (`t`): `run` (first: definition, input, pins), `enter` (a state's input), `try` (a task's,
 * parallel's or map's attempt), `retry` (an attempt failed; due again at `wakeAt`), `wait` (a wait state
 * sleeps until `until`), `exit` (a state's output and next, `caught` when a catcher routed an error),
 * `fail` (a state's error, not caught), `end` (the run's status and result).
 */

export interface RunStart {
  id: string
  workflow: string
  version: number
  definition: Definition
  input: unknown
  /** Task key (`fn`, `fn@alias`, `fn@7`) → the version the run calls, fixed at its start. */
  pins: Record<string, { name: string; version: number }>
}

export interface RunLimits {
  maxPayloadBytes: number
  maxSteps: number
  /** Sleeps at least this long with nothing else running park the run (it leaves memory; a timer is stored). */
  parkAfterMs: number
}

export interface RunDeps {
  invoke: Invoke
  expressions: Expressions
  limits: RunLimits
  /** Makes the entries pushed so far durable (the store's fenced append). */
  append(events: RunEvent[]): Promise<void>
  /** A state finished (metrics): its type and how long it took, ms. */
  stepDone?(type: State['type'], ms: number): void
}

export type RunOutcome =
  | { status: 'succeeded'; output: unknown }
  | { status: 'failed'; error: StepErrorInfo }
  | { status: 'cancelled'; error: StepErrorInfo }
  /** Every path of the run sleeps (a wait, a back-off): it leaves memory until `wakeAt`. */
  | { status: 'parked'; wakeAt: number }
  /** Stopped without writing: the claim was lost or the store failed (another replica, or a later poll, resumes it). */
  | { status: 'dropped'; reason: unknown }

/** Items a map without a `maxConcurrency` of its own runs at once (Step Functions' inline map: 40). */
const UNBOUNDED_MAP_CONCURRENCY = 40

/** Why the coroutines of a run unwind without recording anything. */
class Stop extends Error {
  constructor(readonly kind: 'park' | 'cancel' | 'drop' | 'abort', readonly reason?: unknown) {
    super(kind)
  }
}

/** What the log says of one step id. */
interface Seen {
  entered: boolean
  tries: number
  /** The last try's failure was recorded (a retry): the next try is due at this time. */
  retryAt: number | undefined
  /** Retries used per retrier index. */
  used: number[]
  waitUntil: number | undefined
  exit: { output: unknown; next: string | null } | undefined
  fail: StepErrorInfo | undefined
}

/** A scope that can be aborted (a parallel whose other branch failed): its sleepers wake with Stop('abort'). */
interface Scope {
  parent: Scope | undefined
  aborted: boolean
}

interface Sleeper {
  at: number
  scope: Scope
  timer: NodeJS.Timeout | undefined
  resolve: () => void
  reject: (err: Error) => void
}

export class RunTask {
  readonly start: RunStart
  readonly #d: RunDeps
  readonly #seen = new Map<string, Seen>()
  readonly #visits = new Map<string, number>()
  #pending: RunEvent[] = []
  #steps = 0
  /** Calls and flushes in flight: the run parks only when none is. */
  #active = 0
  readonly #sleepers = new Set<Sleeper>()
  #stop: Stop | undefined
  #parkCheck: NodeJS.Immediate | undefined
  #parkedUntil = 0
  #draining = false
  /** Rejects when the run is stopped: a call in flight is not waited for (its answer is dropped). */
  readonly #stopped: Promise<never>
  #rejectStopped: (err: Error) => void = () => {}

  constructor(start: RunStart, log: readonly RunEvent[], deps: RunDeps) {
    this.start = start
    this.#d = deps
    this.#stopped = new Promise<never>((_, reject) => { this.#rejectStopped = reject })
    this.#stopped.catch(() => {})
    for (const e of log) this.#replay(e)
  }

  /** Runs to an outcome (the caller records `end` and the summary from it). */
  async drive(): Promise<RunOutcome> {
    try {
      const output = await this.#branch(this.start.definition, this.start.input, '', { parent: undefined, aborted: false })
      return { status: 'succeeded', output }
    } catch (err) {
      if (err instanceof Stop) {
        if (err.kind === 'park') return { status: 'parked', wakeAt: this.#parkedUntil }
        if (err.kind === 'cancel') return { status: 'cancelled', error: { error: 'KDL_ERR_WF_RUN_CANCELLED', cause: 'the run was cancelled' } }
        return { status: 'dropped', reason: err.reason }
      }
      if (this.#stop !== undefined) return this.#stop.kind === 'cancel' ? { status: 'cancelled', error: { error: 'KDL_ERR_WF_RUN_CANCELLED', cause: 'the run was cancelled' } } : { status: 'dropped', reason: this.#stop.reason }
      return { status: 'failed', error: StepError.from(err).info }
    } finally {
      if (this.#parkCheck !== undefined) clearImmediate(this.#parkCheck)
      for (const s of this.#sleepers) clearTimeout(s.timer)
    }
  }

  /** Stops the run at once: in-flight calls finish, their answers are dropped; nothing more is written (`drop`) or the end is (`cancel`). */
  stop(kind: 'cancel' | 'drop', reason?: unknown): void {
    if (this.#stop !== undefined) return
    this.#stop = new Stop(kind, reason)
    this.#rejectStopped(this.#stop)
    for (const s of [...this.#sleepers]) this.#wake(s, this.#stop)
  }

  #wake(s: Sleeper, err: Error): void {
    clearTimeout(s.timer)
    this.#sleepers.delete(s)
    s.reject(err)
  }

  /**
   * A platform stopping: the run records what finishes and stops at its next step — a call in flight ends
   * and is recorded (so it is not run again), no new call starts, sleepers stop (their timers are stored).
   */
  drain(): void {
    this.#draining = true
    for (const s of [...this.#sleepers]) this.#wake(s, new Stop('drop', 'draining'))
  }

  get stopped(): boolean {
    return this.#stop !== undefined
  }

  /** The entries pushed and not yet flushed, plus `extra`, made durable. */
  async flush(extra: RunEvent[] = []): Promise<void> {
    this.#pending.push(...extra)
    if (this.#pending.length === 0) return
    const batch = this.#pending
    this.#pending = []
    this.#active++
    try {
      await this.#d.append(batch)
    } catch (err) {
      this.stop('drop', err)
      throw this.#stop as Stop
    } finally {
      this.#active--
      this.#maybePark()
    }
  }

  #push(e: RunEvent): void {
    this.#pending.push({ ...e, at: Date.now() })
  }

  #replay(e: RunEvent): void {
    const id = e['id']
    if (typeof id !== 'string') return
    const s = this.#seenOf(id)
    switch (e['t']) {
      case 'enter': s.entered = true; this.#steps++; break
      case 'try': s.tries = Number(e['n']); s.retryAt = undefined; break
      case 'retry': {
        s.retryAt = Number(e['wakeAt'])
        const r = Number(e['r'])
        s.used[r] = (s.used[r] ?? 0) + 1
        break
      }
      case 'wait': s.waitUntil = Number(e['until']); break
      case 'exit': s.exit = { output: e['output'], next: typeof e['next'] === 'string' ? e['next'] : null }; break
      case 'fail': s.fail = e['error'] as StepErrorInfo; break
    }
  }

  #seenOf(id: string): Seen {
    let s = this.#seen.get(id)
    if (s === undefined) {
      s = { entered: false, tries: 0, retryAt: undefined, used: [], waitUntil: undefined, exit: undefined, fail: undefined }
      this.#seen.set(id, s)
    }
    return s
  }

  #check(scope: Scope): void {
    if (this.#stop !== undefined) throw this.#stop
    for (let s: Scope | undefined = scope; s !== undefined; s = s.parent) if (s.aborted) throw new Stop('abort')
  }

  async #branch(branch: Branch, input: unknown, prefix: string, scope: Scope): Promise<unknown> {
    let name = branch.startAt
    let data = input
    for (;;) {
      this.#check(scope)
      if (this.#draining) {
        await this.flush()
        throw new Stop('drop', 'draining')
      }
      const state = branch.states[name] as State
      const visit = (this.#visits.get(prefix + name) ?? 0) + 1
      this.#visits.set(prefix + name, visit)
      const id = `${prefix}${name}${visit > 1 ? `@${visit}` : ''}`
      const { output, next } = await this.#state(id, name, state, data, scope)
      if (next === null) return output
      data = output
      name = next
    }
  }

  async #state(id: string, name: string, state: State, input: unknown, scope: Scope): Promise<{ output: unknown; next: string | null }> {
    const seen = this.#seenOf(id)
    if (seen.exit !== undefined) return seen.exit
    if (seen.fail !== undefined) throw new StepError(seen.fail.error, seen.fail.cause)
    if (!seen.entered) {
      if (++this.#steps > this.#d.limits.maxSteps) throw new StepError('KDL_ERR_WF_STEP_LIMIT', `the run took more than ${this.#d.limits.maxSteps} steps (KINDLING_WORKFLOW_MAX_STEPS)`)
      seen.entered = true
      this.#push({ t: 'enter', id, state: name, type: state.type, input })
    }
    const t0 = performance.now()
    try {
      const ctx = { run: this.start.id, workflow: this.start.workflow, state: name, step: id }
      const effective = state.input === undefined ? input : plain(await this.#d.expressions.evaluate(state.input, input, { input, context: ctx }, `state "${id}", field "input"`))
      checkPayload(effective, this.#d.limits.maxPayloadBytes, `the input of "${id}"`)
      let next: string | null = state.type === 'choice' || state.type === 'succeed' || state.type === 'fail' || state.end === true ? null : state.next ?? null
      let result: unknown
      switch (state.type) {
        case 'task': result = await this.#withRetry(id, state, seen, scope, (n) => this.#call(id, state, effective, n)); break
        case 'parallel': result = await this.#withRetry(id, state, seen, scope, (n) => this.#parallel(id, state, effective, n, scope)); break
        case 'map': result = await this.#withRetry(id, state, seen, scope, (n) => this.#map(id, state, effective, n, scope, ctx)); break
        case 'pass': result = Object.hasOwn(state, 'result') ? state.result : effective; break
        case 'wait': await this.#wait(id, state, effective, seen, scope, ctx); result = effective; break
        case 'choice': {
          next = null
          for (const [i, rule] of state.choices.entries()) {
            if (truthy(await this.#d.expressions.evaluate(rule.condition, effective, { input, context: ctx }, `state "${id}", field "choices[${i}].condition"`))) { next = rule.next; break }
          }
          if (next === null) {
            if (state.default === undefined) throw new StepError('KDL_ERR_WF_NO_CHOICE', `no rule of "${id}" matched and it has no default`)
            next = state.default
          }
          result = effective
          break
        }
        case 'succeed': result = effective; break
        case 'fail': throw new StepError(state.error ?? 'WorkflowFailed', state.cause ?? `the run reached the fail state "${id}"`)
      }
      this.#check(scope)
      const output = await this.#shape(id, state, input, result, ctx)
      checkPayload(output, this.#d.limits.maxPayloadBytes, `the output of "${id}"`)
      seen.exit = { output, next }
      this.#push({ t: 'exit', id, output, next })
      this.#d.stepDone?.(state.type, performance.now() - t0)
      return seen.exit
    } catch (err) {
      if (err instanceof Stop) throw err
      if (this.#stop !== undefined) throw this.#stop
      const failure = StepError.from(err)
      const catcher = catchersOf(state)?.find((c) => matches(c.errors, failure))
      if (catcher !== undefined) {
        const output = placeError(input, catcher, failure.info)
        seen.exit = { output, next: catcher.next }
        this.#push({ t: 'exit', id, output, next: catcher.next, caught: failure.info })
        this.#d.stepDone?.(state.type, performance.now() - t0)
        return seen.exit
      }
      seen.fail = failure.info
      this.#push({ t: 'fail', id, error: failure.info })
      throw failure
    }
  }

  async #shape(id: string, state: State, input: unknown, result: unknown, ctx: Record<string, unknown>): Promise<unknown> {
    if (state.output !== undefined) return plain(await this.#d.expressions.evaluate(state.output, result, { input, result, context: ctx }, `state "${id}", field "output"`))
    if (state.resultPath === null) return input
    if (state.resultPath !== undefined) return placeAt(input, state.resultPath, result)
    return result
  }

  /** Attempts of a task (or a parallel, a map) with its retriers: each failure a retrier takes is a stored back-off. */
  async #withRetry(id: string, state: TaskState | ParallelState | MapState, seen: Seen, scope: Scope, attempt: (n: number) => Promise<unknown>): Promise<unknown> {
    for (;;) {
      // A back-off the log shows (a resume during it): sleep out what is left of it.
      if (seen.retryAt !== undefined) await this.#sleepUntil(seen.retryAt, scope)
      const n = seen.tries + 1
      seen.tries = n
      seen.retryAt = undefined
      this.#push({ t: 'try', id, n })
      try {
        return await attempt(n)
      } catch (err) {
        if (err instanceof Stop || this.#stop !== undefined) throw err
        const failure = StepError.from(err)
        const r = (state.retry ?? []).findIndex((x) => matches(x.errors, failure))
        const retrier = r < 0 ? undefined : (state.retry as Retrier[])[r] as Retrier
        if (retrier === undefined || (seen.used[r] ?? 0) >= retrier.maxAttempts) throw failure
        const used = seen.used[r] ?? 0
        seen.used[r] = used + 1
        const wakeAt = Date.now() + backoff(retrier, used)
        seen.retryAt = wakeAt
        this.#push({ t: 'retry', id, n, r, error: failure.info, wakeAt })
      }
    }
  }

  async #call(id: string, state: TaskState, effective: unknown, attempt: number): Promise<unknown> {
    const key = state.version === undefined ? state.function : `${state.function}@${state.version}`
    const pin = this.start.pins[key]
    if (pin === undefined) throw new StepError('KDL_ERR_INTERNAL', `no version pinned for "${key}"`)
    await this.flush()
    if (this.#stop !== undefined) throw this.#stop
    if (this.#draining) throw new Stop('drop', 'draining')
    const body = Buffer.from(JSON.stringify(effective) ?? 'null')
    this.#active++
    let r
    try {
      r = await Promise.race([this.#stopped, this.#d.invoke(`${pin.name}@${pin.version}`, {
        method: 'POST', path: '/', body, timeoutMs: state.timeoutMs, maxResponseBytes: this.#d.limits.maxPayloadBytes,
        headers: {
          ...state.headers, 'content-type': 'application/json',
          'x-kindling-workflow': this.start.workflow, 'x-kindling-workflow-run': this.start.id, 'x-kindling-workflow-step': id, 'x-kindling-workflow-attempt': String(attempt),
        },
      })])
    } finally {
      this.#active--
      this.#maybePark()
    }
    if (r.error !== undefined) {
      throw r.error.code === 'KDL_ERR_PAYLOAD_TOO_LARGE'
        ? new StepError('KDL_ERR_WF_PAYLOAD_TOO_LARGE', `the answer of "${id}" is over the ${this.#d.limits.maxPayloadBytes}-byte limit (KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES)`)
        : new StepError(r.error.code, r.error.message)
    }
    const text = r.body.toString('utf8')
    const type = String(r.headers['content-type'] ?? '')
    let value: unknown = text
    if (text === '') value = null
    else if (type.includes('json')) {
      try { value = JSON.parse(text) } catch { value = text }
    }
    if (r.status >= 400) throw functionError(r.status, value)
    return value
  }

  async #parallel(id: string, state: ParallelState, input: unknown, attempt: number, scope: Scope): Promise<unknown> {
    const inner: Scope = { parent: scope, aborted: false }
    const tag = attempt > 1 ? `~${attempt}` : ''
    return this.#all(state.branches.map((b, i) => () => this.#branch(b, input, `${id}${tag}#${i}/`, inner)), 0, inner)
  }

  async #map(id: string, state: MapState, input: unknown, attempt: number, scope: Scope, ctx: Record<string, unknown>): Promise<unknown> {
    const items = state.items === undefined ? input : plain(await this.#d.expressions.evaluate(state.items, input, { input, context: ctx }, `state "${id}", field "items"`))
    if (!Array.isArray(items)) throw new StepError('KDL_ERR_WF_EXPRESSION_FAILED', `the items of map "${id}" are not an array (${items === null ? 'null' : typeof items})`)
    const inner: Scope = { parent: scope, aborted: false }
    const tag = attempt > 1 ? `~${attempt}` : ''
    return this.#all(items.map((item, i) => () => this.#branch(state.processor, item, `${id}${tag}[${i}]/`, inner)), state.maxConcurrency, inner)
  }

  /**
   * Runs `jobs` with at most `limit` at once (0: all), results in order. The first failure aborts the scope:
   * no job starts after it, sleeping ones wake with Stop('abort'), and it is thrown once every started job settled.
   */
  async #all(jobs: Array<() => Promise<unknown>>, limit: number, scope: Scope): Promise<unknown[]> {
    const results: unknown[] = new Array(jobs.length)
    let failure: unknown
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < jobs.length && failure === undefined) {
        const i = next++
        try {
          results[i] = await (jobs[i] as () => Promise<unknown>)()
        } catch (err) {
          if (failure === undefined && !(err instanceof Stop && err.kind === 'abort')) {
            failure = err
            scope.aborted = true
            for (const s of [...this.#sleepers]) if (within(s.scope, scope)) this.#wake(s, new Stop('abort'))
          }
        }
      }
    }
    const n = Math.min(limit > 0 ? limit : UNBOUNDED_MAP_CONCURRENCY, jobs.length)
    await Promise.all(Array.from({ length: n }, worker))
    if (failure !== undefined) throw failure
    return results
  }

  async #wait(id: string, state: State & { type: 'wait' }, input: unknown, seen: Seen, scope: Scope, ctx: Record<string, unknown>): Promise<void> {
    if (seen.waitUntil === undefined) {
      let until: number
      if (state.seconds !== undefined) {
        const e = expressionOf(state.seconds)
        const sec = e === undefined ? state.seconds : await this.#d.expressions.evaluate(e, input, { input, context: ctx }, `state "${id}", field "seconds"`)
        if (typeof sec !== 'number' || !Number.isFinite(sec) || sec < 0) throw new StepError('KDL_ERR_WF_EXPRESSION_FAILED', `the seconds of "${id}" are not a number ≥ 0 (${JSON.stringify(sec)})`)
        until = Date.now() + Math.round(sec * 1000)
      } else {
        const e = expressionOf(state.timestamp)
        const ts = e === undefined ? state.timestamp : await this.#d.expressions.evaluate(e, input, { input, context: ctx }, `state "${id}", field "timestamp"`)
        const ms = typeof ts === 'string' ? Date.parse(ts) : Number.NaN
        if (Number.isNaN(ms)) throw new StepError('KDL_ERR_WF_EXPRESSION_FAILED', `the timestamp of "${id}" is not an ISO 8601 time (${JSON.stringify(ts)})`)
        until = ms
      }
      seen.waitUntil = until
      this.#push({ t: 'wait', id, until })
    }
    await this.#sleepUntil(seen.waitUntil, scope)
  }

  /** A stored timer: the entries that set it are flushed first; a run whose every path sleeps long enough parks. */
  async #sleepUntil(at: number, scope: Scope): Promise<void> {
    await this.flush()
    this.#check(scope)
    if (this.#draining) throw new Stop('drop', 'draining')
    if (at <= Date.now()) return
    await new Promise<void>((resolve, reject) => {
      const s: Sleeper = { at, scope, timer: undefined, resolve, reject }
      s.timer = setTimeout(() => { this.#sleepers.delete(s); resolve() }, at - Date.now())
      this.#sleepers.add(s)
      this.#maybePark()
    })
  }

  /** After the current I/O turn: when nothing of the run runs and its earliest timer is far enough, it parks. */
  #maybePark(): void {
    if (this.#parkCheck !== undefined || this.#sleepers.size === 0 || this.#stop !== undefined) return
    this.#parkCheck = setImmediate(() => {
      this.#parkCheck = undefined
      if (this.#active > 0 || this.#sleepers.size === 0 || this.#stop !== undefined || this.#pending.length > 0) return
      const earliest = Math.min(...[...this.#sleepers].map((s) => s.at))
      if (earliest - Date.now() < this.#d.limits.parkAfterMs) return
      this.#parkedUntil = earliest
      const park = new Stop('park')
      for (const s of [...this.#sleepers]) this.#wake(s, park)
    })
  }
}

function within(s: Scope | undefined, scope: Scope): boolean {
  for (; s !== undefined; s = s.parent) if (s === scope) return true
  return false
}

function truthy(v: unknown): boolean {
  return v !== undefined && v !== null && v !== false && v !== 0 && v !== ''
}

function catchersOf(s: State): Catcher[] | undefined {
  return s.type === 'task' || s.type === 'parallel' || s.type === 'map' ? s.catch : undefined
}

function placeError(input: unknown, c: Catcher, info: StepErrorInfo): unknown {
  if (c.resultPath === undefined) return info
  if (c.resultPath === null) return input
  return placeAt(input, c.resultPath, info)
}

/** Step Functions' back-off: interval × rate^n, capped; full jitter draws from [0, that]. */
export function backoff(r: Retrier, n: number): number {
  let ms = r.intervalMs * Math.pow(r.backoffRate, n)
  if (r.maxIntervalMs !== undefined) ms = Math.min(ms, r.maxIntervalMs)
  return Math.round(r.jitter === 'full' ? Math.random() * ms : ms)
}

/**
 * A function's failing answer as a step error: a handler's throw is its error's name (`OutOfStock`, matching
 * KDL_ERR_FN_ERROR too); a JSON `{error, cause}` answer names its own error; anything else is `HTTP.<status>`.
 */
function functionError(status: number, value: unknown): StepError {
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const v = value as Record<string, unknown>
    const message = typeof v['message'] === 'string' ? v['message'] : typeof v['cause'] === 'string' ? v['cause'] : ''
    if (v['code'] === 'KDL_ERR_FN_ERROR') {
      const name = typeof v['name'] === 'string' && v['name'] !== 'Error' && v['name'] !== '' ? v['name'] : 'KDL_ERR_FN_ERROR'
      return new StepError(name, message, ['KDL_ERR_FN_ERROR'])
    }
    if (typeof v['error'] === 'string' && v['error'] !== '') return new StepError(v['error'], message, [`HTTP.${status}`])
  }
  return new StepError(`HTTP.${status}`, (typeof value === 'string' ? value : JSON.stringify(value) ?? '').slice(0, 1000))
}
