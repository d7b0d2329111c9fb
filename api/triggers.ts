import type { FastifyInstance } from 'fastify'
import { KdlError } from '../common/errors.js'
import type { Store } from '../common/store.js'
import { assertTriggerName, NEXT_RUNS, nextRuns, parseTriggerBody, targetOf, type TriggerRecord } from '../triggers/spec.js'
import type { TriggerStore } from '../triggers/store.js'
import * as S from './route-schemas.js'

export interface TriggerRouteDeps {
  /** Undefined on the file store: every trigger route answers 503 KDL_ERR_ASYNC_UNAVAILABLE. */
  triggers: TriggerStore | undefined
  store: Store
}

/** Cron triggers (issue 11) under `/v1/triggers`. */
export function registerTriggerRoutes(app: FastifyInstance, deps: TriggerRouteDeps): void {
  const triggers = (): TriggerStore => {
    if (deps.triggers === undefined) throw new KdlError('KDL_ERR_ASYNC_UNAVAILABLE', 'triggers need the shared store: start the platform with KINDLING_STORE=redis')
    return deps.triggers
  }
  const view = async (r: TriggerRecord): Promise<Record<string, unknown>> => {
    const state = await triggers().state(r.name)
    return {
      ...r,
      lastTick: state.lastTick === undefined ? null : new Date(state.lastTick).toISOString(),
      missedTicks: state.missed,
      nextRuns: r.enabled ? nextRuns(r, NEXT_RUNS).map((d) => d.toISOString()) : [],
    }
  }
  type Name = { Params: { name: string } }

  app.get('/v1/triggers', { schema: S.listTriggers }, async () => {
    const all = await triggers().list()
    return { triggers: await Promise.all(all.map(view)) }
  })

  app.get<Name>('/v1/triggers/:name', { schema: S.getTrigger }, async (request) => {
    const t = triggers()
    assertTriggerName(request.params.name)
    const r = await t.get(request.params.name)
    if (r === undefined) throw new KdlError('KDL_ERR_TRIGGER_NOT_FOUND', `trigger "${request.params.name}" is not defined`)
    return view(r)
  })

  app.put<Name>('/v1/triggers/:name', { schema: S.putTrigger }, async (request, reply) => {
    const t = triggers()
    const { name } = request.params
    const current = await t.get(name)
    const record = parseTriggerBody(name, request.body, current)
    const target = targetOf(record.function)
    const fn = await deps.store.getFunction(target.name)
    if (fn === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function: "${target.name}" is not deployed`)
    await t.put(record)
    void reply.code(current === undefined ? 201 : 200)
    return view(record)
  })

  app.delete<Name>('/v1/triggers/:name', { schema: S.deleteTrigger }, async (request) => {
    const t = triggers()
    assertTriggerName(request.params.name)
    if (!await t.delete(request.params.name)) throw new KdlError('KDL_ERR_TRIGGER_NOT_FOUND', `trigger "${request.params.name}" is not defined`)
    return { deleted: request.params.name }
  })
}
