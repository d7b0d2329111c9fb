import type { Cron } from 'croner'
import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import type { EventLog } from '../common/events.js'
import { KeyedMutex } from '../common/keyed-mutex.js'
import { scheduleOf, targetOf, type TriggerRecord } from './spec.js'
import type { TriggerStore } from './store.js'

/** Calls the trigger's function for one tick; rejects when the call failed (an `Error` with `status` / `code` when it has them). */
/** Makes the tick's call; may resolve what names it (the async job's id) for the `trigger.fired` event. */
export type FireFn = (trigger: TriggerRecord, tickAt: Date) => Promise<Record<string, unknown> | void>

/** How late a tick may still be fired (a replica starting, a timer delayed); an older one is reported missed. */
export const LATE_TICK_MS = 2000
/** Missed ticks counted one by one at most; beyond it the count says "at least". */
const MAX_COUNTED = 10_000
/** Longest single timer: a later tick is re-armed on the way (and a clock change is noticed). */
const MAX_TIMER_MS = 60_000

export interface TriggerSchedulerOptions {
  store: TriggerStore
  fire: FireFn
  events: EventLog
  log: Logger
  /** `kindling_trigger_fires_total` is registered here. */
  registry: Registry
  replicaId: string
  lateTickMs?: number
}

interface Scheduled {
  record: TriggerRecord
  cron: Cron
  timer: NodeJS.Timeout | undefined
}

/**
 * Fires every enabled trigger on every replica (issue 11). Croner computes the schedule; this arms one timer
 * per trigger for croner's next planned time and, when it fires, races the other replicas for that tick
 * (TriggerStore.claimTick: a Redis lock per trigger and planned tick): only the winner calls `fire`. Croner's
 * own job timer is not used because its callback is not told the planned time, only the moment it ran.
 *
 * Missed ticks (every replica down, Redis away, a timer far behind) are reported, not fired: on each load of
 * a trigger the ticks between its watermark and now are counted, and the one replica whose compare-and-set of
 * the watermark succeeds emits one `trigger.missed` event; a claimer that finds ticks skipped before its own
 * reports those.
 */
export class TriggerScheduler {
  readonly #o: TriggerSchedulerOptions
  readonly #late: number
  readonly #jobs = new Map<string, Scheduled>()
  readonly #locks = new KeyedMutex()
  readonly #fires: Counter<'trigger' | 'result'>
  #unsubscribe: (() => void) | undefined
  #closed = false

  constructor(o: TriggerSchedulerOptions) {
    this.#o = o
    this.#late = o.lateTickMs ?? LATE_TICK_MS
    this.#fires = new Counter({
      name: 'kindling_trigger_fires_total', help: 'Trigger ticks by result: ok and failed (fired by this replica), missed (reported by it).',
      labelNames: ['trigger', 'result'], registers: [o.registry],
    })
  }

  /** Loads and schedules every trigger (reporting what was missed meanwhile), then follows changes. */
  async start(): Promise<void> {
    this.#unsubscribe = this.#o.store.changes((c) => {
      const work = c.kind === 'resync' ? this.reloadAll() : this.reload(c.name)
      work.catch((err: unknown) => this.#o.log.warn({ err, change: c }, 'trigger reload failed'))
    })
    await this.reloadAll()
  }

  /** The triggers this replica has scheduled, as it holds them, by name. */
  scheduled(): TriggerRecord[] {
    return [...this.#jobs.values()].map((j) => j.record).sort((a, b) => a.name.localeCompare(b.name))
  }

  async reloadAll(): Promise<void> {
    const records = await this.#o.store.list()
    const names = new Set(records.map((r) => r.name))
    for (const name of this.#jobs.keys()) if (!names.has(name)) await this.#locks.run(name, async () => this.#unschedule(name))
    for (const r of records) await this.#locks.run(r.name, () => this.#apply(r.name, r))
  }

  async reload(name: string): Promise<void> {
    await this.#locks.run(name, async () => this.#apply(name, await this.#o.store.get(name)))
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#unsubscribe?.()
    for (const name of [...this.#jobs.keys()]) this.#unschedule(name)
  }

  async #apply(name: string, record: TriggerRecord | undefined): Promise<void> {
    if (this.#closed) return
    const current = this.#jobs.get(name)
    if (record === undefined || !record.enabled) {
      this.#unschedule(name)
      return
    }
    let job = current
    if (job === undefined || job.record.updatedAt !== record.updatedAt) {
      this.#unschedule(name)
      job = { record, cron: scheduleOf(record), timer: undefined }
      this.#jobs.set(name, job)
    }
    await this.#checkMissed(job)
    if (job.timer === undefined && this.#jobs.get(name) === job) this.#arm(job, new Date(Date.now() - this.#late))
  }

  #unschedule(name: string): void {
    const job = this.#jobs.get(name)
    if (job === undefined) return
    if (job.timer !== undefined) clearTimeout(job.timer)
    job.timer = undefined
    job.cron.stop()
    this.#jobs.delete(name)
  }

  /** Arms the timer for the first planned tick after `after`. */
  #arm(job: Scheduled, after: Date): void {
    if (this.#closed || this.#jobs.get(job.record.name) !== job) return
    const next = job.cron.nextRun(after)
    if (next === null) return
    const wait = (): void => {
      const left = next.getTime() - Date.now()
      if (left > 0) {
        job.timer = setTimeout(wait, Math.min(left, MAX_TIMER_MS))
        return
      }
      job.timer = undefined
      this.#tick(job, next)
    }
    wait()
  }

  #tick(job: Scheduled, tick: Date): void {
    if (this.#closed || this.#jobs.get(job.record.name) !== job) return
    const behind = Date.now() - tick.getTime()
    if (behind > this.#late) {
      // Far behind (a blocked loop, a suspended host): report what passed, go on from now.
      void this.#locks.run(job.record.name, () => this.#checkMissed(job))
        .catch((err: unknown) => this.#o.log.warn({ err, trigger: job.record.name }, 'missed-tick check failed'))
        .finally(() => { if (job.timer === undefined) this.#arm(job, new Date(Date.now() - this.#late)) })
      return
    }
    this.#arm(job, tick)
    void this.#claimAndFire(job.record, tick).catch((err: unknown) => {
      if (this.#closed) return
      this.#o.log.warn({ err, trigger: job.record.name, tick: tick.toISOString() }, 'trigger tick not claimed (store unavailable?)')
    })
  }

  async #claimAndFire(record: TriggerRecord, tick: Date): Promise<void> {
    const claim = await this.#o.store.claimTick(record, tick)
    if (claim.result === 'stale') {
      // Updated or deleted meanwhile and the message not seen yet: take the stored one.
      await this.reload(record.name)
      return
    }
    if (claim.result === 'lost') return
    const skipped = this.#between(record, claim.previous, tick.getTime() - 1)
    if (claim.previous > 0 && skipped.count > 0 && skipped.first !== undefined && skipped.last !== undefined) {
      this.#missed(record, skipped.count, skipped.first, skipped.last, skipped.capped)
      await this.#o.store.addMissed(record, skipped.count)
    }
    const started = Date.now()
    const fn = targetOf(record.function).name
    const data = { trigger: record.name, target: record.function, tick: tick.toISOString(), replica: this.#o.replicaId }
    try {
      const made = await this.#o.fire(record, tick)
      this.#fires.inc({ trigger: record.name, result: 'ok' })
      this.#o.events.add({ type: 'trigger.fired', function: fn, message: `trigger ${record.name} fired ${record.function} for ${data.tick}`, data: { ...data, ...made, ms: Date.now() - started } })
    } catch (err) {
      const e = err as { status?: unknown; code?: unknown; message?: unknown }
      this.#fires.inc({ trigger: record.name, result: 'failed' })
      this.#o.events.add({
        type: 'trigger.failed', function: fn, message: `trigger ${record.name} failed to call ${record.function} for ${data.tick}: ${String(e.message ?? err)}`,
        data: { ...data, ms: Date.now() - started, ...(typeof e.status === 'number' ? { status: e.status } : {}), ...(typeof e.code === 'string' ? { code: e.code } : {}), error: String(e.message ?? err) },
      })
    }
  }

  /** Reports the ticks between the watermark and `now - late` (the later ones are still fired); one replica wins. */
  async #checkMissed(job: Scheduled): Promise<void> {
    const { record } = job
    const state = await this.#o.store.state(record.name)
    if (state.rev !== record.updatedAt) return
    const got = this.#between(record, Number(state.watermark), Date.now() - this.#late)
    if (got.count === 0 || got.first === undefined || got.last === undefined) return
    if (await this.#o.store.reportMissed(record, state.watermark, got.last, got.count)) this.#missed(record, got.count, got.first, got.last, got.capped)
  }

  #missed(record: TriggerRecord, count: number, first: Date, last: Date, capped: boolean): void {
    this.#fires.inc({ trigger: record.name, result: 'missed' }, count)
    this.#o.events.add({
      type: 'trigger.missed', function: targetOf(record.function).name,
      message: `trigger ${record.name} missed ${capped ? 'at least ' : ''}${count} tick${count === 1 ? '' : 's'} from ${first.toISOString()} to ${last.toISOString()} (not fired late)`,
      data: { trigger: record.name, count, first: first.toISOString(), last: last.toISOString(), ...(capped ? { capped: true } : {}), replica: this.#o.replicaId },
    })
  }

  /** The planned ticks after `afterMs` and at or before `untilMs`. */
  #between(record: TriggerRecord, afterMs: number, untilMs: number): { count: number; first: Date | undefined; last: Date | undefined; capped: boolean } {
    const cron = scheduleOf(record)
    try {
      const first = cron.nextRun(new Date(afterMs))
      if (first === null || first.getTime() > untilMs) return { count: 0, first: undefined, last: undefined, capped: false }
      let count = 1
      let last = first
      for (;;) {
        const n = cron.nextRun(last)
        if (n === null || n.getTime() > untilMs) return { count, first, last, capped: false }
        if (count === MAX_COUNTED) {
          const prev = cron.previousRuns(1, new Date(untilMs + 1))[0]
          return { count, first, last: prev ?? last, capped: true }
        }
        count++
        last = n
      }
    } finally {
      cron.stop()
    }
  }
}
