import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { Agent, request } from 'undici'
import type { EventLog } from '../common/events.js'
import { TriggerScheduler, type FireFn } from '../triggers/scheduler.js'
import type { TriggerRecord } from '../triggers/spec.js'
import { TriggerStore } from '../triggers/store.js'
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
 * Cron triggers on the shared store (issue 11). `fire` is the one seam between a tick and its call: for now a
 * direct call of the platform's own `/fn/<function>` (the async queue takes this place when it lands).
 */
export async function openTriggers(shared: Shared, o: { events: EventLog; registry: Registry; log: Logger; url: () => string }): Promise<Triggers> {
  const store = await TriggerStore.open({ redis: shared.redis, subscriber: await shared.connect('triggers-sub', { blocking: true }), prefix: shared.prefix, replicaId: shared.replicaId })
  // A function may run for up to its timeout (15 min at most): no client-side timeouts.
  const agent = new Agent({ headersTimeout: 0, bodyTimeout: 0 })
  const fire: FireFn = (trigger, tickAt) => callFunction(agent, o.url(), trigger, tickAt)
  const scheduler = new TriggerScheduler({ store, fire, events: o.events, registry: o.registry, log: o.log, replicaId: shared.replicaId })
  return {
    store, scheduler,
    start: () => scheduler.start(),
    close: async () => {
      await scheduler.close()
      await store.close()
      await agent.close().catch(() => {})
    },
  }
}

/** One call of the trigger's function; rejects with `status` and `code` when it answered an error. */
async function callFunction(agent: Agent, url: string, trigger: TriggerRecord, tickAt: Date): Promise<void> {
  const headers: Record<string, string> = { ...trigger.headers, 'x-kindling-trigger': trigger.name, 'x-kindling-trigger-tick': tickAt.toISOString() }
  let body: string | undefined
  if (trigger.body !== undefined) {
    body = typeof trigger.body === 'string' ? trigger.body : JSON.stringify(trigger.body)
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = typeof trigger.body === 'string' ? 'text/plain; charset=utf-8' : 'application/json'
  }
  const res = await request(`${url}/fn/${trigger.function}`, { method: body === undefined ? 'GET' : 'POST', headers, body: body ?? null, dispatcher: agent })
  const text = await res.body.text()
  if (res.statusCode < 400) return
  let code: string | undefined
  try { code = (JSON.parse(text) as { code?: string }).code } catch { /* not JSON */ }
  throw Object.assign(new Error(`${trigger.function} answered ${res.statusCode}${code === undefined ? '' : ` ${code}`}`), { status: res.statusCode, code })
}
