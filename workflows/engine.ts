import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import type { Invoke } from '../common/invoke.js'
import type { RunEvent, RunRecord, WorkflowRecord, WorkflowStore } from '../common/workflows.js'
import { tasksOf, type Definition } from './definition.js'
import { Expressions } from './expressions.js'
import type { WorkflowMetrics } from './metrics.js'
import { RunTask, type RunLimits, type RunOutcome, type RunStart } from './run.js'

export interface EngineDeps {
  store: WorkflowStore
  invoke: Invoke
  /** The version a task's function key (`fn`, `fn@alias`, `fn@7`) routes to now: what a new run pins. */
  resolve(key: string): Promise<{ name: string; version: number }>
  /** Keeps a version from being pruned while a run here may still call it (Releases.pin). */
  pin(name: string, version: number): () => void
  /** This replica: the owner of the claims it takes. */
  owner: string
  events: EventLog
  metrics: WorkflowMetrics
  log: Logger
  limits: RunLimits
  /** How long a claim lasts without renewal (a dead replica's runs are taken over after it), ms. */
  claimTtlMs?: number
  /** How often open runs are looked for (due timers, orphaned runs), ms. */
  pollMs?: number
}

interface Live {
  task: RunTask
  record: RunRecord
  done: Promise<RunRecord | undefined>
  unpin: Array<() => void>
}

const DEFAULT_CLAIM_TTL_MS = 15_000
const DEFAULT_POLL_MS = 1000

/**
 * The workflow runs of one replica (issue 12): starts them, advances the ones whose claim it holds, parks
 * the ones that only wait, and resumes what is due or orphaned — its own after a restart, another replica's
 * after that replica's claims lapse. Each run advances on one replica at a time: the store fences every
 * write of a run by its claim.
 */
export class WorkflowEngine {
  readonly #d: EngineDeps
  readonly #expressions = new Expressions()
  readonly #live = new Map<string, Live>()
  /** Ids being resumed or cancelled right now (one local actor per run). */
  readonly #busy = new Set<string>()
  readonly #waiters = new Map<string, Set<(r: RunRecord) => void>>()
  readonly #wakeTimers = new Map<string, NodeJS.Timeout>()
  readonly #ttl: number
  #poll: NodeJS.Timeout | undefined
  #renew: NodeJS.Timeout | undefined
  #closed = false

  constructor(deps: EngineDeps) {
    this.#d = deps
    this.#ttl = deps.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS
  }

  /** Resumes every open run that is due (a restart's unfinished runs) and starts polling. */
  async start(): Promise<void> {
    await this.#pollOnce().catch((err: unknown) => this.#d.log.warn({ err }, 'open workflow runs not read yet'))
    const tick = (): void => {
      this.#poll = setTimeout(() => { void this.#pollOnce().catch((err: unknown) => this.#d.log.warn({ err }, 'polling open workflow runs failed')).finally(() => { if (!this.#closed) tick() }) }, this.#d.pollMs ?? DEFAULT_POLL_MS)
      this.#poll.unref()
    }
    tick()
    this.#renew = setInterval(() => { void this.#renewAll() }, Math.max(100, Math.floor(this.#ttl / 3)))
    this.#renew.unref()
  }

  /** Starts a run of `wf` (its head or a version) and returns its summary at once; it advances in the background. */
  async run(wf: WorkflowRecord, input: unknown): Promise<RunRecord> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
    const definition = wf.definition as Definition
    const pins = await this.#pinsOf(definition)
    const id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
    const record: RunRecord = { id, workflow: wf.name, version: wf.version, status: 'running', startedAt: new Date().toISOString() }
    const start: RunStart = { id, workflow: wf.name, version: wf.version, definition, input, pins }
    const first: RunEvent = { t: 'run', at: Date.now(), workflow: wf.name, version: wf.version, definition, input, pins }
    // Claimed before it exists, so no other replica's poll can take it between the two.
    await this.#d.store.claim(id, this.#d.owner, this.#ttl)
    await this.#d.store.createRun(record, [first])
    this.#d.metrics.runs.inc({ workflow: wf.name, status: 'started' })
    this.#drive(record, start, [first])
    return record
  }

  /** The run as it is once it ends, or after `ms` (then as it is then); undefined for no such run. */
  async wait(id: string, ms: number): Promise<RunRecord | undefined> {
    const now = await this.#d.store.getRun(id)
    if (now === undefined || now.status !== 'running' || ms <= 0) return now
    return new Promise((resolve) => {
      let settled = false
      const finish = (r: RunRecord | undefined): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        clearInterval(check)
        this.#waiters.get(id)?.delete(finish)
        resolve(r)
      }
      let set = this.#waiters.get(id)
      if (set === undefined) { set = new Set(); this.#waiters.set(id, set) }
      set.add(finish)
      const timer = setTimeout(() => { void this.#d.store.getRun(id).then(finish, () => finish(now)) }, ms)
      // A run another replica advances (or resumes after a park) ends there: read it now and then.
      const check = setInterval(() => {
        if (this.#live.has(id)) return
        void this.#d.store.getRun(id).then((r) => { if (r !== undefined && r.status !== 'running') finish(r) }, () => {})
      }, 1000)
    })
  }

  /** Cancels a run: at once when this replica holds it (or nobody does), at the owner's next renewal otherwise. */
  async cancel(id: string): Promise<RunRecord> {
    const live = this.#live.get(id)
    if (live !== undefined) {
      live.task.stop('cancel')
      return (await live.done) ?? live.record
    }
    const asked = await this.#d.store.requestCancel(id)
    if (asked === undefined) throw new KdlError('KDL_ERR_WF_RUN_NOT_FOUND', `no workflow run "${id}"`)
    if (asked.status !== 'running') throw new KdlError('KDL_ERR_WF_RUN_FINISHED', `run "${id}" already ${asked.status}`)
    if (this.#busy.has(id)) return asked
    this.#busy.add(id)
    try {
      // Parked or orphaned: nobody advances it, so this replica ends it.
      if (!await this.#d.store.claim(id, this.#d.owner, this.#ttl)) return asked
      const current = await this.#d.store.getRun(id)
      if (current === undefined || current.status !== 'running') {
        await this.#d.store.release(id, this.#d.owner)
        return current ?? asked
      }
      this.#clearWake(id)
      const error = { error: 'KDL_ERR_WF_RUN_CANCELLED', cause: 'the run was cancelled' }
      await this.#d.store.append(id, this.#d.owner, [{ t: 'end', at: Date.now(), status: 'cancelled', error }])
      const final: RunRecord = { ...current, status: 'cancelled', endedAt: new Date().toISOString(), error, wakeAt: undefined }
      await this.#d.store.putRun(final, this.#d.owner)
      await this.#d.store.release(id, this.#d.owner)
      this.#ended(final)
      return final
    } finally {
      this.#busy.delete(id)
    }
  }

  /** Stops advancing: steps in flight finish and are recorded (within `graceMs`), timers stay stored, claims are given up. */
  async close(graceMs = 5000): Promise<void> {
    this.#closed = true
    clearTimeout(this.#poll)
    clearInterval(this.#renew)
    for (const t of this.#wakeTimers.values()) clearTimeout(t)
    this.#wakeTimers.clear()
    const live = [...this.#live.values()]
    for (const l of live) l.task.drain()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([Promise.all(live.map((l) => l.done)), new Promise((r) => { timer = setTimeout(r, graceMs) })])
    clearTimeout(timer)
    for (const l of live) l.task.stop('drop', 'closing')
    await Promise.all(live.map((l) => this.#d.store.release(l.record.id, this.#d.owner).catch(() => {})))
  }

  /** How many runs this replica advances now. */
  get running(): number {
    return this.#live.size
  }

  async #pinsOf(definition: Definition): Promise<RunStart['pins']> {
    const pins: RunStart['pins'] = {}
    for (const t of tasksOf(definition)) {
      const key = t.version === undefined ? t.function : `${t.function}@${t.version}`
      if (pins[key] === undefined) pins[key] = await this.#d.resolve(key)
    }
    return pins
  }

  #drive(record: RunRecord, start: RunStart, log: readonly RunEvent[]): void {
    const { store, owner } = this.#d
    const task = new RunTask(start, log, {
      invoke: this.#d.invoke,
      expressions: this.#expressions,
      limits: this.#d.limits,
      append: (events) => store.append(record.id, owner, events),
      stepDone: (type, ms) => this.#d.metrics.steps.observe({ workflow: start.workflow, type }, ms / 1000),
    })
    const unpin = Object.values(start.pins).map((p) => this.#d.pin(p.name, p.version))
    const live: Live = { task, record, unpin, done: Promise.resolve(undefined) }
    live.done = task.drive().then((outcome) => this.#settle(live, outcome)).catch((err: unknown) => {
      this.#d.log.warn({ err, run: record.id }, 'a workflow run could not record its end: it is resumed later')
      return undefined
    }).finally(() => {
      for (const u of unpin) u()
      this.#live.delete(record.id)
    })
    this.#live.set(record.id, live)
  }

  async #settle(live: Live, outcome: RunOutcome): Promise<RunRecord | undefined> {
    const { store, owner } = this.#d
    const { task, record } = live
    const id = record.id
    if (outcome.status === 'dropped') {
      if (!this.#closed) this.#d.log.warn({ run: id, reason: String((outcome.reason as Error | undefined)?.message ?? outcome.reason) }, 'workflow run stopped here without recording: resumed when its claim is free')
      return undefined
    }
    if (outcome.status === 'parked') {
      await task.flush()
      await store.putRun({ ...record, wakeAt: outcome.wakeAt }, owner)
      await store.release(id, owner)
      this.#wakeAt(id, outcome.wakeAt)
      return undefined
    }
    const endedAt = new Date().toISOString()
    const final: RunRecord = outcome.status === 'succeeded'
      ? { ...record, status: 'succeeded', endedAt, output: outcome.output, wakeAt: undefined }
      : { ...record, status: outcome.status, endedAt, error: outcome.error, wakeAt: undefined }
    await task.flush([{ t: 'end', at: Date.now(), status: final.status, ...(final.output === undefined ? {} : { output: final.output }), ...(final.error === undefined ? {} : { error: final.error }) }])
    await store.putRun(final, owner)
    await store.release(id, owner)
    this.#ended(final)
    return final
  }

  #ended(final: RunRecord): void {
    this.#d.metrics.runs.inc({ workflow: final.workflow, status: final.status })
    if (final.status !== 'succeeded') {
      this.#d.events.add({
        type: `workflow.${final.status}`, message: `run ${final.id} of workflow ${final.workflow} ${final.status}: ${final.error?.error ?? ''}`,
        data: { workflow: final.workflow, run: final.id, error: final.error },
      })
    }
    const waiters = this.#waiters.get(final.id)
    this.#waiters.delete(final.id)
    for (const w of waiters ?? []) w(final)
  }

  /** A parked run of this replica wakes here on time (any replica's poll takes it too, if this one is gone). */
  #wakeAt(id: string, at: number): void {
    this.#clearWake(id)
    if (this.#closed) return
    const t = setTimeout(() => { this.#wakeTimers.delete(id); void this.#resume(id) }, Math.max(0, at - Date.now()))
    t.unref()
    this.#wakeTimers.set(id, t)
  }

  #clearWake(id: string): void {
    const t = this.#wakeTimers.get(id)
    if (t !== undefined) { clearTimeout(t); this.#wakeTimers.delete(id) }
  }

  async #pollOnce(): Promise<void> {
    if (this.#closed) return
    const now = Date.now()
    for (const open of await this.#d.store.openRuns()) {
      if ((open.wakeAt ?? 0) <= now && !this.#live.has(open.id)) await this.#resume(open.id)
    }
  }

  /** Takes up a run from its log: the claim first, then a replay of what the log holds. */
  async #resume(id: string): Promise<void> {
    if (this.#closed || this.#live.has(id) || this.#busy.has(id)) return
    this.#busy.add(id)
    try {
      if (!await this.#d.store.claim(id, this.#d.owner, this.#ttl)) return
      const record = await this.#d.store.getRun(id)
      const log = record === undefined || record.status !== 'running' ? [] : await this.#d.store.readLog(id)
      const first = log[0]
      if (record === undefined || record.status !== 'running' || first === undefined || first['t'] !== 'run') {
        await this.#d.store.release(id, this.#d.owner)
        return
      }
      this.#clearWake(id)
      const start: RunStart = {
        id, workflow: record.workflow, version: record.version,
        definition: first['definition'] as Definition, input: first['input'], pins: first['pins'] as RunStart['pins'],
      }
      this.#drive({ ...record, wakeAt: undefined }, start, log)
      // Asked to cancel while nobody advanced it: it ends at once, recording the cancel.
      if (record.cancelRequested === true) this.#live.get(id)?.task.stop('cancel')
    } catch (err) {
      this.#d.log.warn({ err, run: id }, 'resuming a workflow run failed; the next poll tries again')
    } finally {
      this.#busy.delete(id)
    }
  }

  /** Renews this replica's claims; a run whose claim was lost stops here, one asked to cancel elsewhere is cancelled. */
  async #renewAll(): Promise<void> {
    if (this.#live.size === 0) return
    const ids = [...this.#live.keys()]
    try {
      for (const id of await this.#d.store.renew(ids, this.#d.owner, this.#ttl)) {
        this.#live.get(id)?.task.stop('drop', new KdlError('KDL_ERR_WF_RUN_LOST', `run "${id}" was taken over by another replica`))
      }
      for (const id of ids) {
        const live = this.#live.get(id)
        if (live === undefined) continue
        const r = await this.#d.store.getRun(id)
        if (r?.cancelRequested === true) live.task.stop('cancel')
      }
    } catch (err) {
      this.#d.log.warn({ err }, 'renewing workflow run claims failed')
    }
  }
}
