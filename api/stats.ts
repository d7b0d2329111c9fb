import type { FastifyInstance } from 'fastify'
import { KdlError } from '../common/errors.js'
import type { Store } from '../common/store.js'
import * as S from './route-schemas.js'

/**
 * What `GET /v1/stats` reads: the router's per-function call counts (router/call-stats.ts; the API does not
 * import the router, it is handed the object by the composition root).
 */
export interface CallStatsSource {
  readonly bucketMs: number
  /** The longest window a read covers, in ms. */
  readonly windowMs: number
  read(fn: string, windowMs: number): unknown
  forget(fn: string): void
}

/**
 * `GET /v1/stats[?function=NAME][&window=SECONDS]`: per deployed function, its calls over the last `window`
 * seconds (default and at most the ring's 15 minutes) in fixed buckets, oldest first, and their totals.
 */
export function registerStatsRoutes(app: FastifyInstance, store: Store, stats: CallStatsSource): void {
  app.get<{ Querystring: { function?: string; window?: string } }>('/v1/stats', { schema: S.getStats }, async (request) => {
    const q = request.query
    let windowMs = stats.windowMs
    if (q.window !== undefined) {
      const s = Number(q.window)
      const max = stats.windowMs / 1000
      if (!/^\d+$/.test(q.window) || s < 1 || s > max) {
        throw new KdlError('KDL_ERR_BAD_REQUEST', `window must be a whole number of seconds from 1 to ${max} (got "${q.window.slice(0, 40)}")`)
      }
      windowMs = s * 1000
    }
    let names: string[]
    if (q.function !== undefined) {
      if (await store.getFunction(q.function) === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${q.function.slice(0, 80)}" is not deployed`)
      names = [q.function]
    } else {
      // Deployed functions only: a call that ended after its function's delete must not bring it back here.
      names = (await store.listFunctions()).map((r) => r.name)
    }
    const functions: Record<string, unknown> = {}
    for (const name of names) functions[name] = stats.read(name, windowMs)
    return { bucketMs: stats.bucketMs, windowMs, now: Date.now(), functions }
  })
}
