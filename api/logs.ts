import type { FastifyInstance } from 'fastify'
import { Readable } from 'node:stream'
import { KdlError } from '../common/errors.js'
import { parseSince, type FunctionLogs, type LogEntry } from '../common/function-logs.js'
import { assertName } from '../common/spec.js'
import type { Store } from '../common/store.js'
import * as S from './route-schemas.js'

export interface LogsQuerystring {
  since?: string
  after?: string
  limit?: string
  invocation?: string
  follow?: string
}

/** Entries answered at most at once. */
export const MAX_LOG_LIMIT = 10_000
/** A follower that reads slower than the function prints is skipped past this much buffered text. */
const FOLLOW_BUFFER_BYTES = 1024 * 1024

/**
 * `GET /v1/functions/:name/logs`: the function's recent output, oldest first, as `{logs, next}` (`after=next`
 * reads on); `follow=true` streams it as one JSON object a line (application/x-ndjson), the backlog first.
 */
export function registerLogRoutes(app: FastifyInstance, deps: { store: Store; logs: FunctionLogs }): void {
  const { logs } = deps
  app.get<{ Params: { name: string }; Querystring: LogsQuerystring }>('/v1/functions/:name/logs', { schema: S.functionLogs }, async (request, reply) => {
    const { name } = request.params
    assertName('function', name)
    const q = parseLogQuery(request.query)
    if (!logs.has(name) && await deps.store.getFunction(name) === undefined) {
      throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed and has no logs`)
    }
    const backlog = logs.query(name, q)
    if (!q.follow) return backlog

    const out = new Readable({ read() {} })
    let missed = 0
    const push = (line: string): void => {
      if (out.readableLength > FOLLOW_BUFFER_BYTES) { missed++; return }
      if (missed > 0) {
        out.push(`${JSON.stringify({ missed, msg: `${missed} entries skipped: this reader was too slow` })}\n`)
        missed = 0
      }
      out.push(`${line}\n`)
    }
    for (const e of backlog.logs) push(JSON.stringify(e))
    const stop = logs.follow(name, (e: LogEntry) => {
      if (q.invocation === undefined || e.invocation === q.invocation) push(JSON.stringify(e))
    })
    request.raw.once('close', () => { stop(); out.push(null) })
    return reply.type('application/x-ndjson').header('cache-control', 'no-store').send(out)
  })
}

function parseLogQuery(query: LogsQuerystring): { since?: number; after?: number; limit: number; invocation?: string; follow: boolean } {
  const out: { since?: number; after?: number; limit: number; invocation?: string; follow: boolean } = { limit: 200, follow: false }
  if (query.since !== undefined && query.since !== '') {
    const since = parseSince(query.since)
    if (since === undefined) throw new KdlError('KDL_ERR_BAD_REQUEST', `since="${query.since}" is neither a duration (30s, 5m, 2h, 1d), an ISO date nor epoch milliseconds`)
    out.since = since
  }
  if (query.after !== undefined && query.after !== '') {
    if (!/^\d{1,15}$/.test(query.after)) throw new KdlError('KDL_ERR_BAD_REQUEST', `after="${query.after}" is not a log sequence number (the "next" of an earlier answer)`)
    out.after = Number(query.after)
  }
  if (query.limit !== undefined && query.limit !== '') {
    const n = Number(query.limit)
    if (!Number.isInteger(n) || n < 1 || n > MAX_LOG_LIMIT) throw new KdlError('KDL_ERR_BAD_REQUEST', `limit must be an integer from 1 to ${MAX_LOG_LIMIT}`)
    out.limit = n
  }
  if (query.invocation !== undefined && query.invocation !== '') out.invocation = query.invocation
  if (query.follow !== undefined) {
    if (!['true', '1', 'false', '0', ''].includes(query.follow)) throw new KdlError('KDL_ERR_BAD_REQUEST', 'follow must be true or false')
    out.follow = query.follow === 'true' || query.follow === '1' || query.follow === ''
  }
  return out
}
