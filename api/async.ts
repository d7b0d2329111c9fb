import type { FastifyInstance } from 'fastify'
import type { AsyncQueue } from '../async/queue.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import * as S from './async-schemas.js'

/**
 * `/v1/async`: async jobs and the dead-letter queue (issue 11). Without a queue (the file store) every route
 * answers 503 KDL_ERR_ASYNC_UNAVAILABLE.
 */
export function registerAsyncRoutes(app: FastifyInstance, queue: AsyncQueue | undefined, events: EventLog): void {
  const q = (): AsyncQueue => {
    if (queue === undefined) throw new KdlError('KDL_ERR_ASYNC_UNAVAILABLE', 'async invocations need the shared store: start the platform with KINDLING_STORE=redis')
    return queue
  }
  const notFound = (id: string, where = ''): KdlError => new KdlError('KDL_ERR_JOB_NOT_FOUND', `no async job "${id.slice(0, 80)}"${where}`)
  const redriven = (ids: string[]): void => {
    if (ids.length > 0) events.add({ type: 'async.redriven', message: `redrove ${ids.length} async job(s) from the dead-letter queue: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ', …' : ''}`, data: { jobs: ids.slice(0, 100), count: ids.length } })
  }

  app.get<{ Querystring: { limit?: string } }>('/v1/async/dlq', { schema: S.listDlq }, async (request) => {
    const raw = request.query.limit
    const limit = raw === undefined ? 100 : Number(raw)
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new KdlError('KDL_ERR_BAD_REQUEST', `limit must be a whole number from 1 to 1000 (got "${String(raw).slice(0, 40)}")`)
    return { jobs: await q().dlqList(limit) }
  })
  app.post('/v1/async/dlq/redrive', { schema: S.redriveAll }, async () => {
    const ids: string[] = []
    for (const id of await q().dlqIds()) if (await q().redrive(id)) ids.push(id)
    redriven(ids)
    return { redriven: ids }
  })
  app.delete('/v1/async/dlq', { schema: S.purgeAll }, async () => {
    const ids: string[] = []
    for (const id of await q().dlqIds()) if (await q().purge(id)) ids.push(id)
    await q().dlqTrim()
    return { purged: ids }
  })
  app.get<{ Params: { id: string } }>('/v1/async/dlq/:id', { schema: S.getDlq }, async (request) => {
    const job = await q().dlqGet(request.params.id)
    if (job === undefined) throw notFound(request.params.id, ' in the dead-letter queue')
    return job
  })
  app.post<{ Params: { id: string } }>('/v1/async/dlq/:id/redrive', { schema: S.redriveOne }, async (request) => {
    const { id } = request.params
    if (!await q().redrive(id)) throw notFound(id, ' in the dead-letter queue')
    redriven([id])
    return { redriven: [id] }
  })
  app.delete<{ Params: { id: string } }>('/v1/async/dlq/:id', { schema: S.purgeOne }, async (request) => {
    const { id } = request.params
    if (!await q().purge(id)) throw notFound(id, ' in the dead-letter queue')
    return { purged: [id] }
  })
  app.get<{ Params: { id: string } }>('/v1/async/:id', { schema: S.getJob }, async (request) => {
    const job = await q().get(request.params.id)
    if (job === undefined) throw notFound(request.params.id, ' (never enqueued, or past its retention)')
    return job
  })
}
