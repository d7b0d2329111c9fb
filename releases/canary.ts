import type { Logger } from 'pino'
import type { Counter } from 'prom-client'
import { aliasesOf, assertAlias, LATEST } from '../common/aliases.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import type { CanaryState, CanaryStep, FunctionRecord } from '../common/types.js'
import type { VersionSamples } from '../common/version-samples.js'
import type { Executor } from '../executor/executor.js'
import { judge, type Verdict } from './judge.js'
import { endCanary, type Releases } from './versions.js'

export interface CanaryDeps {
  releases: Releases
  executor: Executor
  samples: VersionSamples
  events: EventLog
  /** `kindling_canary_steps_total{result}`. */
  steps: Counter<'result'>
  log: Logger
  /**
   * Several replicas (issue 11): whether this replica drives the canary of `name` for the next `ttlMs` (a lease,
   * renewed at each tick). The others keep watching, and take over when the driver stops renewing. None: always.
   */
  drives?: ((name: string, ttlMs: number) => Promise<boolean>) | undefined
  /** The lease of a canary that ended here is given up. */
  leaves?: ((name: string) => void) | undefined
}

/** How often a canary's window is judged: a quarter of its interval, between 50 and 250 ms. */
function tickOf(c: CanaryState): number {
  return Math.max(50, Math.min(250, Math.floor(c.intervalMs / 4)))
}

/** What `PUT /v1/functions/:name/canary` takes, and its defaults. */
export const CANARY_DEFAULTS = Object.freeze({ alias: LATEST, steps: [10, 50, 100], intervalMs: 60_000, minCalls: 50, maxErrorRate: 0.05 })
const HISTORY = 50

/** The live view of a canary: its state and the window of the step running now. */
export interface CanaryStatus extends CanaryState {
  window?: { elapsedMs: number; verdict: Verdict } | undefined
}

interface Running {
  timer: NodeJS.Timeout | undefined
  /** When the window is judged for a step (or a hold) at the latest. */
  judgeAt: number
  busy: boolean
  /** The step's start as last seen (another replica moving the step resets this one's window). */
  stepStartedAt: string
}

/**
 * Canary releases (issue 15). The alias's weight moves to the new version step by step. Every tick (a
 * quarter of the interval, at most 250 ms) the canary's window is judged against the baseline's over the
 * same time (releases/judge.ts): a breach rolls the alias back to the baseline at once, mid-window; at the
 * end of a window a pass moves to the next step (or promotes after the last), too few calls hold the step
 * (the window goes on until it has them). Every step writes the head, so a restarted platform resumes the
 * canary at its step with a fresh window.
 */
export class CanaryController {
  readonly #d: CanaryDeps
  readonly #running = new Map<string, Running>()
  #closed = false

  constructor(deps: CanaryDeps) {
    this.#d = deps
  }

  /** Start-up: canaries that were running go on at their step. */
  resume(heads: readonly FunctionRecord[]): void {
    for (const head of heads) if (head.canary?.state === 'running') this.#watch(head.name, head.canary)
  }

  /**
   * A head another replica wrote (issue 11): a canary it started is watched here too (this replica records its
   * calls, and drives it when the driver goes away); one that ended there stops being watched.
   */
  follow(head: FunctionRecord): void {
    const c = head.canary
    const r = this.#running.get(head.name)
    if (c?.state === 'running') {
      if (r === undefined) this.#watch(head.name, c)
      else if (r.stepStartedAt !== c.stepStartedAt) {
        r.stepStartedAt = c.stepStartedAt
        this.#d.samples.reset(head.name)
      }
    } else if (r !== undefined && !r.busy) {
      this.#stopWatching(head.name, r)
    }
  }

  async start(name: string, raw: unknown, actor: string): Promise<CanaryState> {
    const body = parseCanaryBody(raw)
    const { releases } = this.#d
    return releases.locks.run(name, async () => {
      const head = await this.#head(name)
      const c = head.canary
      if (c?.state === 'running') throw new KdlError('KDL_ERR_CANARY_CONFLICT', `a canary of version ${c.to} already runs on alias "${c.alias}"`)
      const current = aliasesOf(head)[body.alias]
      if (current === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no alias "${body.alias}"`)
      if (!('version' in current)) throw new KdlError('KDL_ERR_CANARY_CONFLICT', `alias "${body.alias}" is already split by weight: set it to one version first`)
      const baseline = current.version
      if (body.to === baseline) throw new KdlError('KDL_ERR_CANARY_CONFLICT', `alias "${body.alias}" already serves version ${baseline}`)
      await this.#d.executor.version(name, body.to)
      const now = new Date().toISOString()
      const state: CanaryState = {
        alias: body.alias, baseline, to: body.to, steps: body.steps, intervalMs: body.intervalMs, minCalls: body.minCalls,
        maxErrorRate: body.maxErrorRate, maxP99Ms: body.maxP99Ms, step: 0, state: 'running', startedAt: now, stepStartedAt: now, history: [],
      }
      this.#d.samples.watch(name)
      await releases.reheadLocked(head, { aliases: { ...aliasesOf(head), [body.alias]: weights(state) }, canary: state })
      this.#d.events.add({
        type: 'canary.started', function: name, message: `canary of version ${body.to} on ${body.alias} (baseline ${baseline}) at ${body.steps[0]} %`,
        data: { ...summaryOf(state), by: actor },
      })
      this.#watch(name, state)
      return state
    })
  }

  /** The canary's state, with the running step's window judged now. */
  async status(name: string): Promise<CanaryStatus> {
    // What calls are routed by now: the executor's head (the store's may be a write ahead of the router's).
    const head = this.#d.executor.head(name) ?? await this.#head(name)
    const c = head.canary
    if (c === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has had no canary`)
    if (c.state !== 'running') return c
    return { ...c, window: { elapsedMs: Date.now() - Date.parse(c.stepStartedAt), verdict: this.#judge(name, c) } }
  }

  /** Stops a running canary: the alias goes back to the baseline. */
  async abort(name: string, actor: string): Promise<CanaryState> {
    return this.#d.releases.locks.run(name, async () => {
      const head = await this.#head(name)
      const c = head.canary
      if (c?.state !== 'running') throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no running canary`)
      return this.#end(head, c, 'aborted', `aborted by ${actor}`, { version: c.baseline })
    })
  }

  close(): void {
    this.#closed = true
    // A lease given up now lets another replica drive the canary at its next tick, not after the lease's ttl.
    for (const [name, r] of this.#running) { clearTimeout(r.timer); this.#d.leaves?.(name) }
    this.#running.clear()
  }

  #watch(name: string, c: CanaryState): void {
    const old = this.#running.get(name)
    if (old !== undefined) clearTimeout(old.timer)
    if (!this.#d.samples.isWatched(name)) this.#d.samples.watch(name)
    const r: Running = { timer: undefined, judgeAt: Date.now() + c.intervalMs, busy: false, stepStartedAt: c.stepStartedAt }
    this.#running.set(name, r)
    this.#schedule(name, r, c)
  }

  #schedule(name: string, r: Running, c: CanaryState): void {
    if (this.#closed || this.#running.get(name) !== r) return
    r.timer = setTimeout(() => { void this.#tick(name, r) }, tickOf(c))
    r.timer.unref()
  }

  async #tick(name: string, r: Running): Promise<void> {
    if (this.#running.get(name) !== r || r.busy) return
    r.busy = true
    let next: CanaryState | undefined
    try {
      next = await this.#advance(name, r)
    } catch (err) {
      this.#d.log.error({ err, fn: name }, 'canary step failed; trying again at the next tick')
      next = this.#d.executor.head(name)?.canary
    } finally {
      r.busy = false
    }
    if (next?.state === 'running') this.#schedule(name, r, next)
    else this.#stopWatching(name, r)
  }

  #stopWatching(name: string, r: Running): void {
    if (this.#running.get(name) !== r) return
    clearTimeout(r.timer)
    this.#running.delete(name)
    this.#d.samples.unwatch(name)
    this.#d.leaves?.(name)
  }

  /** One tick: judges the window and acts. Resolves the canary's state after it. */
  async #advance(name: string, r: Running): Promise<CanaryState | undefined> {
    // Cheap look first (no lock, no I/O): most ticks find a window still running and nothing wrong.
    const seen = this.#d.executor.head(name)?.canary
    if (seen?.state !== 'running') return seen
    // One replica drives a canary (the lease outlives a few ticks, so a driver that stops is replaced quickly).
    if (this.#d.drives !== undefined && !await this.#d.drives(name, 4 * tickOf(seen) + 1000)) {
      r.judgeAt = Date.now() + seen.intervalMs
      return seen
    }
    const early = this.#judge(name, seen)
    if (early.result !== 'breach' && Date.now() < r.judgeAt) return seen
    return this.#d.releases.locks.run(name, async () => {
      const head = await this.#head(name)
      const c = head.canary
      if (c?.state !== 'running' || c.to !== seen.to || c.startedAt !== seen.startedAt) return c
      const verdict = this.#judge(name, c)
      const detectedAt = Date.now()
      if (verdict.result === 'breach') {
        const step = this.#record(name, c, verdict)
        const ended = await this.#end(head, { ...c, history: trim([...c.history, step]) }, 'rolled-back', verdict.reasons.join('; '), { version: c.baseline })
        this.#d.log.warn({ fn: name, version: c.to, reasons: verdict.reasons, switchMs: Date.now() - detectedAt }, 'canary breached: rolled back')
        return ended
      }
      if (Date.now() < r.judgeAt) return c
      const step = this.#record(name, c, verdict)
      const history = trim([...c.history, step])
      if (verdict.result === 'hold') {
        // Too few calls: the step holds and its window goes on (no reset) until it has them.
        r.judgeAt = Date.now() + c.intervalMs
        return (await this.#d.releases.reheadLocked(head, { canary: { ...c, history } })).canary
      }
      if (c.step + 1 >= c.steps.length) {
        return this.#end(head, { ...c, history }, 'promoted', `every step passed: version ${c.to} serves ${c.alias}`, { version: c.to })
      }
      const moved: CanaryState = { ...c, history, step: c.step + 1, stepStartedAt: new Date().toISOString() }
      this.#d.samples.reset(name)
      r.stepStartedAt = moved.stepStartedAt
      r.judgeAt = Date.now() + c.intervalMs
      const next = await this.#d.releases.reheadLocked(head, { aliases: { ...aliasesOf(head), [c.alias]: weights(moved) }, canary: moved })
      this.#d.events.add({ type: 'canary.step', function: name, message: `canary of version ${c.to} moves to ${moved.steps[moved.step]} %`, data: summaryOf(moved) })
      return next.canary
    })
  }

  #judge(name: string, c: CanaryState): Verdict {
    const s = this.#d.samples
    return judge(s.read(name, c.to), s.read(name, c.baseline), c)
  }

  /** A verdict as a history step, an event and a metric. */
  #record(name: string, c: CanaryState, v: Verdict): CanaryStep {
    const step: CanaryStep = { step: c.step, weight: c.steps[c.step] ?? 100, at: new Date().toISOString(), ...v }
    this.#d.steps.inc({ result: v.result })
    this.#d.events.add({
      type: `canary.${v.result}`, function: name,
      message: `canary of version ${c.to} at ${step.weight} %: ${v.result}${v.reasons.length > 0 ? ` (${v.reasons.join('; ')})` : ''}`,
      data: { ...step, version: c.to, baselineVersion: c.baseline },
    })
    return step
  }

  /** Ends a canary (under the lock): the alias serves `target`, the state says why. */
  async #end(head: FunctionRecord, c: CanaryState, state: CanaryState['state'], reason: string, target: { version: number }): Promise<CanaryState> {
    const ended = endCanary(c, c.alias, state, reason) ?? c
    const next = await this.#d.releases.reheadLocked(head, { aliases: { ...aliasesOf(head), [c.alias]: target }, canary: ended })
    const r = this.#running.get(head.name)
    if (r !== undefined) this.#stopWatching(head.name, r)
    this.#d.events.add({ type: `canary.${state}`, function: head.name, message: `canary of version ${c.to} ${state}: ${reason}`, data: summaryOf(ended) })
    return next.canary ?? ended
  }

  #head(name: string): Promise<FunctionRecord> {
    return this.#d.releases.head(name)
  }
}

/** The alias's weights at the canary's step. */
function weights(c: CanaryState): { weights: Record<string, number> } | { version: number } {
  const w = c.steps[c.step] ?? 100
  if (w >= 100) return { version: c.to }
  return { weights: { [String(c.baseline)]: 100 - w, [String(c.to)]: w } }
}

function trim(history: CanaryStep[]): CanaryStep[] {
  return history.length > HISTORY ? history.slice(-HISTORY) : history
}

function summaryOf(c: CanaryState): Record<string, unknown> {
  return { alias: c.alias, baseline: c.baseline, to: c.to, step: c.step, weight: c.steps[c.step], state: c.state, reason: c.reason }
}

interface CanaryBody {
  to: number
  alias: string
  steps: number[]
  intervalMs: number
  minCalls: number
  maxErrorRate: number
  maxP99Ms?: number | undefined
}

const FIELDS = new Set(['to', 'alias', 'steps', 'interval', 'intervalMs', 'minCalls', 'maxErrorRate', 'maxP99Ms'])

/** Validates a canary body; every problem names its field. */
export function parseCanaryBody(raw: unknown): CanaryBody {
  const bad = (field: string, message: string): KdlError => new KdlError('KDL_ERR_BAD_SPEC', `${field}: ${message}`, { details: { field } })
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new KdlError('KDL_ERR_BAD_SPEC', 'the body must be an object: {"to": N, ...}')
  const b = raw as Record<string, unknown>
  for (const k of Object.keys(b)) if (!FIELDS.has(k)) throw bad(k, 'unknown field')
  if (!Number.isInteger(b.to) || (b.to as number) < 1) throw bad('to', 'must be a version number (an integer ≥ 1)')
  const alias = b.alias ?? CANARY_DEFAULTS.alias
  if (typeof alias !== 'string') throw bad('alias', 'must be a string')
  assertAlias(alias)
  const steps = b.steps ?? [...CANARY_DEFAULTS.steps]
  if (!Array.isArray(steps) || steps.length === 0 || steps.length > 20) throw bad('steps', 'must be 1 to 20 weights in percent, rising, ending at 100 (e.g. [10, 50, 100])')
  for (let i = 0; i < steps.length; i++) {
    const w = steps[i] as unknown
    if (!Number.isInteger(w) || (w as number) < 1 || (w as number) > 100) throw bad(`steps[${i}]`, 'must be an integer percent between 1 and 100')
    if (i > 0 && (w as number) <= (steps[i - 1] as number)) throw bad(`steps[${i}]`, 'steps must rise')
  }
  if (steps[steps.length - 1] !== 100) throw bad('steps', 'the last step must be 100 (the canary serves every call before it is promoted)')
  let intervalMs: number = CANARY_DEFAULTS.intervalMs
  if (b.interval !== undefined && b.intervalMs !== undefined) throw bad('interval', 'give interval or intervalMs, not both')
  if (b.intervalMs !== undefined) {
    if (!Number.isInteger(b.intervalMs)) throw bad('intervalMs', 'must be an integer of milliseconds')
    intervalMs = b.intervalMs as number
  } else if (b.interval !== undefined) {
    intervalMs = parseDuration(b.interval, 'interval')
  }
  if (intervalMs < 100 || intervalMs > 86_400_000) throw bad(b.intervalMs !== undefined ? 'intervalMs' : 'interval', 'must be between 100 ms and 24 h')
  const minCalls = b.minCalls ?? CANARY_DEFAULTS.minCalls
  if (!Number.isInteger(minCalls) || (minCalls as number) < 1 || (minCalls as number) > 1_000_000) throw bad('minCalls', 'must be an integer between 1 and 1000000')
  const maxErrorRate = b.maxErrorRate ?? CANARY_DEFAULTS.maxErrorRate
  if (typeof maxErrorRate !== 'number' || !(maxErrorRate >= 0 && maxErrorRate <= 1)) throw bad('maxErrorRate', 'must be a fraction between 0 and 1 (0.05 is 5 %)')
  const maxP99Ms = b.maxP99Ms
  if (maxP99Ms !== undefined && (typeof maxP99Ms !== 'number' || !(maxP99Ms > 0))) throw bad('maxP99Ms', 'must be a number of milliseconds above 0')
  return { to: b.to as number, alias, steps: steps as number[], intervalMs, minCalls: minCalls as number, maxErrorRate, maxP99Ms: maxP99Ms as number | undefined }
}

/** `"30s"`, `"5m"`, `"500ms"`, `"1h"`, or a number of milliseconds. */
function parseDuration(v: unknown, field: string): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v
  const m = typeof v === 'string' ? /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/.exec(v.trim()) : null
  if (m === null) throw new KdlError('KDL_ERR_BAD_SPEC', `${field}: must be a duration such as "30s", "5m", "500ms"`, { details: { field } })
  const n = Number(m[1])
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h']
  return Math.round(n * unit)
}
