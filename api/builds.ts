import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import type { Builder, BuildRecord } from '../builder/builder.js'
import { KdlError } from '../common/errors.js'
import * as S from './route-schemas.js'

/** A build as the API shows it: its record and where its log is. */
export function buildView(r: BuildRecord): Record<string, unknown> {
  return { ...r, links: { self: `/v1/builds/${r.id}`, log: `/v1/builds/${r.id}/log` } }
}

/** `GET /v1/builds`, `GET /v1/builds/:id`, `GET /v1/builds/:id/log` (streamed while the build runs). */
export function registerBuildRoutes(app: FastifyInstance, builder: Builder): void {
  const find = (id: string): BuildRecord => {
    const r = builder.get(id)
    if (r === undefined) throw new KdlError('KDL_ERR_BUILD_NOT_FOUND', `no build "${id}" is on record`)
    return r
  }

  app.get<{ Querystring: { function?: string; limit?: string } }>('/v1/builds', { schema: S.listBuilds }, async (request) => {
    const { function: fn, limit } = request.query
    let builds = builder.list()
    if (fn !== undefined) builds = builds.filter((b) => b.functions.includes(fn))
    return { builds: builds.slice(0, Math.min(500, Math.max(1, Number(limit ?? 100) || 100))).map(buildView) }
  })

  app.get<{ Params: { id: string } }>('/v1/builds/:id', { schema: S.getBuild }, async (request) => buildView(find(request.params.id)))

  app.get<{ Params: { id: string }; Querystring: { follow?: string } }>('/v1/builds/:id/log', { schema: S.getBuildLog }, async (request, reply) => {
    const r = find(request.params.id)
    void reply.type('text/plain; charset=utf-8').header('x-kindling-build-state', r.state)
    const live = builder.liveLog(r.id)
    if (live !== undefined && request.query.follow !== 'false') {
      const ac = new AbortController()
      request.raw.once('close', () => ac.abort())
      return reply.send(Readable.from(live.follow(ac.signal)))
    }
    const path = builder.logPath(r.id)
    const exists = await stat(path).then(() => true, () => false)
    return reply.send(exists ? createReadStream(path) : '')
  })
}
