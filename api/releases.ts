import type { FastifyInstance, FastifyRequest } from 'fastify'
import { KdlError } from '../common/errors.js'
import { assertName } from '../common/spec.js'
import type { FunctionRecord } from '../common/types.js'
import type { CanaryController } from '../releases/canary.js'
import type { Releases } from '../releases/versions.js'
import * as S from './route-schemas.js'

export interface ReleaseRouteDeps {
  releases: Releases
  canary: CanaryController
  /** A head as `GET /v1/functions/:name` shows it. */
  view: (r: FunctionRecord) => Record<string, unknown>
}

/** Who makes a change: the `x-kindling-actor` header (the CLI sends user@host), else the caller's address. */
export function actorOf(request: FastifyRequest): string {
  const h = request.headers['x-kindling-actor']
  if (typeof h === 'string' && h.trim() !== '') return h.trim().slice(0, 200)
  return request.ip
}

/** Versions, aliases, rollback and canaries (issue 15) under `/v1/functions/:name/…`. */
export function registerReleaseRoutes(app: FastifyInstance, deps: ReleaseRouteDeps): void {
  const { releases, canary } = deps
  type Name = { Params: { name: string } }

  app.get<Name>('/v1/functions/:name/versions', { schema: S.listVersions }, async (request) => {
    assertName('function', request.params.name)
    return releases.list(request.params.name)
  })

  app.get<{ Params: { name: string; version: string } }>('/v1/functions/:name/versions/:version', { schema: S.getVersion }, async (request) => {
    assertName('function', request.params.name)
    return releases.get(request.params.name, versionParam(request.params.version))
  })

  app.post<Name>('/v1/functions/:name/rollback', { schema: S.rollback }, async (request) => {
    const { name } = request.params
    assertName('function', name)
    const body = (request.body ?? {}) as Record<string, unknown>
    if (typeof body !== 'object' || Array.isArray(body) || Object.keys(body).some((k) => k !== 'to')) {
      throw new KdlError('KDL_ERR_BAD_REQUEST', 'the body is {} or {"to": N}')
    }
    if (body.to !== undefined && (!Number.isInteger(body.to) || (body.to as number) < 1)) throw new KdlError('KDL_ERR_BAD_REQUEST', 'to: must be a version number')
    const r = await releases.rollback(name, body.to as number | undefined, actorOf(request))
    return { from: r.from, to: r.to, function: deps.view(r.head) }
  })

  app.get<Name>('/v1/functions/:name/aliases', { schema: S.listAliases }, async (request) => {
    assertName('function', request.params.name)
    return { aliases: await releases.aliases(request.params.name) }
  })

  app.put<{ Params: { name: string; alias: string } }>('/v1/functions/:name/aliases/:alias', { schema: S.putAlias }, async (request) => {
    const { name, alias } = request.params
    assertName('function', name)
    return { aliases: await releases.setAlias(name, alias, request.body, actorOf(request)) }
  })

  app.delete<{ Params: { name: string; alias: string } }>('/v1/functions/:name/aliases/:alias', { schema: S.deleteAlias }, async (request) => {
    const { name, alias } = request.params
    assertName('function', name)
    await releases.deleteAlias(name, alias)
    return { deleted: alias }
  })

  app.put<Name>('/v1/functions/:name/canary', { schema: S.startCanary }, async (request, reply) => {
    assertName('function', request.params.name)
    const state = await canary.start(request.params.name, request.body, actorOf(request))
    void reply.code(201)
    return state
  })

  app.get<Name>('/v1/functions/:name/canary', { schema: S.getCanary }, async (request) => {
    assertName('function', request.params.name)
    return canary.status(request.params.name)
  })

  app.delete<Name>('/v1/functions/:name/canary', { schema: S.abortCanary }, async (request) => {
    assertName('function', request.params.name)
    return canary.abort(request.params.name, actorOf(request))
  })
}

function versionParam(raw: string): number {
  if (!/^[1-9][0-9]{0,8}$/.test(raw)) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `"${raw.slice(0, 20)}" is not a version number`)
  return Number(raw)
}
