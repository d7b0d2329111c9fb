import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { AsyncCall } from '../async/ingress.js'
import type { EventLog } from '../common/events.js'
import { TriggerScheduler, type FireFn } from '../triggers/scheduler.js'
import type { TriggerRecord } from '../triggers/spec.js'
import { TriggerStore } from '../triggers/store.js'
import type { AsyncPart } from './async.js'
import type { Shared } from './shared.js'

export interface Triggers {
  store: TriggerStore
  scheduler: TriggerScheduler
  /** Schedules every trigger; once the platform listens (a tick calls it). */
  start(): Promise<void>
  /** Stops every timer and the change subscription; before the store closes. */
  close(): Promise<void>
}

/**
 * Cron triggers on the shared store (issue 11). `fire` is the one seam between a tick and its call: the tick is
 * enqueued as an async job (so it gets the function's retries and the dead-letter queue, and runs on whichever
 * replica has a free worker), under the idempotency key `trigger:<name>:<tick ms>` — one job per tick even if a
 * tick were claimed twice. The function sees `x-kindling-trigger` and `x-kindling-trigger-tick`.
 */
export async function openTriggers(shared: Shared, o: { events: EventLog; registry: Registry; log: Logger; submit: AsyncPart['submit'] }): Promise<Triggers> {
  const store = await TriggerStore.open({ redis: shared.redis, subscriber: await shared.connect('triggers-sub', { blocking: true }), prefix: shared.prefix, replicaId: shared.replicaId })
  const fire: FireFn = async (trigger, tickAt) => {
    const { id } = await o.submit(trigger.function, callOf(trigger, tickAt), `trigger:${trigger.name}:${tickAt.getTime()}`)
    return { job: id }
  }
  const scheduler = new TriggerScheduler({ store, fire, events: o.events, registry: o.registry, log: o.log, replicaId: shared.replicaId })
  return {
    store, scheduler,
    start: () => scheduler.start(),
    close: async () => {
      await scheduler.close()
      await store.close()
    },
  }
}

/** A tick as a call: POST of the trigger's body (JSON unless it is a string), GET without one. */
function callOf(trigger: TriggerRecord, tickAt: Date): AsyncCall {
  const headers: Record<string, string> = { ...trigger.headers, 'x-kindling-trigger': trigger.name, 'x-kindling-trigger-tick': tickAt.toISOString() }
  if (trigger.body === undefined) return { method: 'GET', path: '/', headers, body: Buffer.alloc(0) }
  if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = typeof trigger.body === 'string' ? 'text/plain; charset=utf-8' : 'application/json'
  return { method: 'POST', path: '/', headers, body: Buffer.from(typeof trigger.body === 'string' ? trigger.body : JSON.stringify(trigger.body)) }
}
