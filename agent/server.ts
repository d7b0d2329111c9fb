/**
 * The node agent's HTTP API (issue 13, `kindling agent`): the controller's load guard reads and throttles the pods of
 * this node through it. Every route but `GET /healthz` takes the bearer KINDLING_AGENT_TOKEN.
 *
 * - `GET /healthz` → `{ok, node, podIP, cgroup: {root, version}}`
 * - `POST /v1/sample {pods: [{uid, containerId?}]}` → `{node, pods: [{uid, containerId?, stats, limits, demand: [[pid, ns]…]}
 *   | {uid, error: {code: KDL_ERR_AGENT_POD_NOT_FOUND, message}}]}` (one answer per pod, in order)
 * - `PUT /v1/pods/:uid/cpu {cores, containerId?}` → `{uid, cores, containers}`: the CFS quota (cores; 0 = none) of the
 *   pod's container groups (or the one named); 404 KDL_ERR_AGENT_POD_NOT_FOUND when it is not here.
 */
import { timingSafeEqual } from 'node:crypto'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { KdlError, errorBody, isKdlError } from '../common/errors.js'
import { CgroupLocator } from './locate.js'
import { PodCgroups, type PodQuery } from './pods.js'

export interface AgentServerOptions {
  /** Where the cgroup filesystems are. @default '/sys/fs/cgroup' */
  cgroupRoot?: string
  token?: string | undefined
  node?: string | undefined
  podIP?: string | undefined
  log: Logger
  /** Pods one sample may ask for. @default 512 */
  maxPods?: number
}

export interface AgentServer {
  app: FastifyInstance
  locator: CgroupLocator
  listen(host: string, port: number): Promise<string>
  close(): Promise<void>
}

const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export function buildAgentServer(opts: AgentServerOptions): AgentServer {
  const locator = new CgroupLocator({ root: opts.cgroupRoot ?? '/sys/fs/cgroup' })
  const pods = new PodCgroups(locator)
  const maxPods = opts.maxPods ?? 512
  const app = Fastify({ loggerInstance: opts.log as FastifyBaseLogger, bodyLimit: 1024 * 1024 })
  app.setErrorHandler((err, request, reply) => {
    const e = err as Error & { statusCode?: number; validation?: unknown }
    const kdl = isKdlError(err) ? err
      : e.statusCode !== undefined && e.statusCode < 500 ? new KdlError('KDL_ERR_BAD_REQUEST', e.message)
        : new KdlError('KDL_ERR_INTERNAL', e.message, { cause: err })
    if (kdl.statusCode >= 500) request.log.error({ err }, 'agent request failed')
    void reply.code(kdl.statusCode).send(errorBody(kdl))
  })
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send(errorBody(new KdlError('KDL_ERR_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`)))
  })
  if (opts.token !== undefined) {
    const expected = Buffer.from(`Bearer ${opts.token}`)
    app.addHook('onRequest', async (request) => {
      if (request.method === 'GET' && request.url.split('?')[0] === '/healthz') return
      const got = Buffer.from(request.headers.authorization ?? '')
      if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
        throw new KdlError('KDL_ERR_UNAUTHORIZED', 'missing or wrong bearer token (KINDLING_AGENT_TOKEN)')
      }
    })
  }

  app.get('/healthz', async () => {
    const layout = await locator.layout().catch(() => undefined)
    return { ok: layout !== undefined, node: opts.node ?? null, podIP: opts.podIP ?? null, cgroup: { root: locator.root, version: layout?.version ?? null } }
  })

  app.post<{ Body: { pods?: unknown } }>('/v1/sample', async (request) => {
    const list = request.body?.pods
    if (!Array.isArray(list) || list.length > maxPods) throw new KdlError('KDL_ERR_BAD_REQUEST', `body must be {pods: [{uid, containerId?}]} with at most ${maxPods} pods`)
    const queries: PodQuery[] = list.map((p: unknown) => query(p))
    return { node: opts.node ?? null, pods: await pods.sample(queries) }
  })

  app.put<{ Params: { uid: string }; Body: { cores?: unknown; containerId?: unknown } }>('/v1/pods/:uid/cpu', async (request) => {
    const { uid } = request.params
    if (!UID.test(uid)) throw new KdlError('KDL_ERR_BAD_REQUEST', `not a pod UID: ${uid}`)
    const cores = request.body?.cores
    const containerId = request.body?.containerId
    if (typeof cores !== 'number') throw new KdlError('KDL_ERR_BAD_REQUEST', 'body must be {cores: number, containerId?: string}')
    if (containerId !== undefined && typeof containerId !== 'string') throw new KdlError('KDL_ERR_BAD_REQUEST', 'containerId must be a string')
    const result = await pods.setCpu(uid, cores, containerId)
    request.log.info({ pod: uid, cores, containers: result.containers }, 'cpu quota set')
    return result
  })

  return {
    app, locator,
    listen: (host, port) => app.listen({ host, port }),
    close: () => app.close(),
  }
}

function query(p: unknown): PodQuery {
  const o = p as { uid?: unknown; containerId?: unknown } | null
  if (o === null || typeof o !== 'object' || typeof o.uid !== 'string' || !UID.test(o.uid)) throw new KdlError('KDL_ERR_BAD_REQUEST', `a pod must be {uid, containerId?} with a pod UID: ${JSON.stringify(p)}`)
  if (o.containerId !== undefined && typeof o.containerId !== 'string') throw new KdlError('KDL_ERR_BAD_REQUEST', 'containerId must be a string')
  return { uid: o.uid, containerId: o.containerId }
}
