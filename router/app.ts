import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { errorBody, KdlError } from '../common/errors.js'
import type { Invoke } from '../common/invoke.js'
import type { Metrics } from '../common/metrics.js'
import type { ExecutorClient } from '../executor/client.js'
import type { VersionSamples } from '../common/version-samples.js'
import { Caller, ROUTE_KEY_HEADER, toKdlError, type CallTransport } from './call.js'
import type { CallStats } from './call-stats.js'
import { createInvoke } from './in-process.js'
import { InstanceTable } from './instance-table.js'
import { drainRefused } from '../common/drain.js'
import { forward, refuseOversized, sendError } from './proxy.js'

export interface RouterDeps {
  executor: ExecutorClient
  metrics: Metrics
  log: Logger
  /** Per-function call counts for the dashboard (`GET /v1/stats`, issue 14). */
  callStats: CallStats
  /** Per-version outcomes and latencies of the functions a canary watches (issue 15). */
  samples?: VersionSamples | undefined
  /**
   * Async invocations (issue 11): takes `/async/fn/:key[/*]` and `/fn/:key[/*]` with `x-kindling-invoke: async`
   * (`rest`: path and query after the key). Absent (file store): those answer 503 KDL_ERR_ASYNC_UNAVAILABLE.
   */
  asyncInvoke?: ((key: string, rest: string, req: IncomingMessage, res: ServerResponse) => void) | undefined
  /** A call carrying this as `x-kindling-async-token` is an async job's: its `x-kindling-async-id`/`-attempt` reach the function. */
  asyncToken?: string | undefined
  /**
   * `GET /readyz` (issue 13): undefined while this router can take calls; else why not (a cluster router that has not
   * reached its controller yet). Absent: always ready.
   */
  notReady?: (() => string | undefined) | undefined
  /** More of the router's state in the `/readyz` body (a cluster router: whether its controller answers now). */
  readiness?: (() => Record<string, unknown>) | undefined
}

export interface RouterConfig {
  /** Largest invocation body in bytes (413 beyond). */
  maxBodyBytes: number
  /** Largest management request body (deploys carry code). */
  maxApiBodyBytes: number
}

export interface Router {
  app: FastifyInstance
  table: InstanceTable
  /** Calls a function from inside the platform (issue 12: workflow steps), through `table` like `/fn/:key`. */
  invoke: Invoke
}

const FN_PREFIX = '/fn/'
const ASYNC_PREFIX = '/async/fn/'

/**
 * The HTTP front: `/fn/:name[/*]` invocations and `/metrics`. It never listens by itself; the
 * composition root registers the management API on the same app and calls `listen`.
 */
export function buildRouter(deps: RouterDeps, cfg: RouterConfig): Router {
  // Invocations bypass fastify: `/fn/*` is answered straight from node's request event (no routing,
  // no request/reply objects, no body parsing — the body is streamed to the instance as it arrives).
  // Everything else (the /v1 API, /metrics) is fastify's.
  const log = deps.log as FastifyBaseLogger
  const serverFactory = (handler: (req: IncomingMessage, res: ServerResponse) => void): Server => {
    const server = createServer((req, res) => {
      const url = req.url
      // A body announced over its limit is refused before anything reads it (or takes an instance for it).
      const declared = req.headers['content-length']
      if (declared !== undefined) {
        const limit = url !== undefined && url.startsWith(FN_PREFIX) ? cfg.maxBodyBytes : cfg.maxApiBodyBytes
        if (Number(declared) > limit) {
          refuseOversized(req, res, limit)
          return
        }
      }
      // Issue 11: an async invocation is handed over whole (its body read and enqueued there).
      const async = url !== undefined && (url.startsWith(ASYNC_PREFIX) || (url.startsWith(FN_PREFIX) && req.headers['x-kindling-invoke'] === 'async'))
      if (async) {
        const prefix = url.startsWith(ASYNC_PREFIX) ? ASYNC_PREFIX : FN_PREFIX
        const segment = /^[^/?]*/.exec(url.slice(prefix.length))?.[0] ?? ''
        if (segment !== '') {
          const key = segment.replaceAll('%40', '@')
          if (deps.asyncInvoke === undefined) {
            drainRefused(req)
            sendError(res, new KdlError('KDL_ERR_ASYNC_UNAVAILABLE', 'async invocations need the shared store: start the platform with KINDLING_STORE=redis'))
          } else {
            deps.asyncInvoke(key, url.slice(prefix.length + segment.length), req, res)
          }
          return
        }
      }
      if (url !== undefined && url.startsWith(FN_PREFIX)) {
        let end = FN_PREFIX.length
        while (end < url.length) {
          const c = url.charCodeAt(end)
          if (c === 47 /* / */ || c === 63 /* ? */) break
          end++
        }
        if (end > FN_PREFIX.length) {
          const segment = url.slice(FN_PREFIX.length, end)
          // `name@alias`, also when a client encoded the @ (`name%40alias`).
          const key = segment.includes('%') ? segment.replaceAll('%40', '@') : segment
          const rest = url.slice(end)
          const path = rest === '' || rest[0] === '?' ? `/${rest}` : rest
          const sticky = req.headers[ROUTE_KEY_HEADER]
          // The Caller answers every outcome itself, an unexpected failure included.
          void caller.run(http, res, key, path, typeof sticky === 'string' ? sticky : undefined, undefined)
          return
        }
      }
      handler(req, res)
    })
    server.keepAliveTimeout = 72_000
    return server
  }
  const app = Fastify({ loggerInstance: log, bodyLimit: cfg.maxApiBodyBytes, return503OnClosing: true, serverFactory })
  const table = new InstanceTable({ executor: deps.executor, log: deps.log.child({ component: 'router' }), metrics: deps.metrics })
  const { metrics } = deps
  const caller = new Caller({ table, executor: deps.executor, metrics, callStats: deps.callStats, samples: deps.samples, log: deps.log })
  // Made once: an HTTP call's state is its response (`res.req` its request), so a call allocates nothing for its transport.
  const http: CallTransport<ServerResponse> = {
    send: (res, granted, path, timeoutMs) => {
      const req = res.req
      // An async job's call (issue 11) tells the function its job id and attempt, so it can deduplicate, and the
      // cron tick that made it, if one did. Only the platform's own calls carry the token: a client cannot forge these.
      const job = deps.asyncToken !== undefined && req.headers['x-kindling-async-token'] === deps.asyncToken ? trustedHeaders(req) : undefined
      return forward(req, res, granted.slot.lease.dispatcher, path, timeoutMs, cfg.maxBodyBytes, granted.kind, granted.entry.versionText, job)
    },
    fail: (res, err, _entry, headers) => sendError(res, err, headers),
  }

  app.setErrorHandler((err, request, reply) => {
    const kdl = toKdlError(err)
    // Redis away is an outage the platform rides out (issue 11), not a fault of this request.
    if (kdl.code === 'KDL_ERR_STORE_UNAVAILABLE') request.log.warn({ code: kdl.code, url: request.url, reason: kdl.message }, 'request refused: the store does not answer')
    else if (kdl.statusCode >= 500) request.log.error({ err }, 'request failed')
    else request.log.info({ code: kdl.code, url: request.url }, 'request refused')
    // A chunked body that outgrew the limit mid-stream: fastify would close at once ("connection: close"),
    // resetting a sender that has not read yet; drain it instead, so it gets to read the 413.
    if (kdl.code === 'KDL_ERR_PAYLOAD_TOO_LARGE') {
      reply.removeHeader('connection')
      drainRefused(request.raw)
    }
    void reply.code(kdl.statusCode).headers(kdl.headers ?? {}).send(errorBody(kdl))
  })
  app.setNotFoundHandler((request, reply) => {
    const err = new KdlError('KDL_ERR_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`)
    void reply.code(404).send(errorBody(err))
  })

  app.get('/metrics', async (_request, reply) => {
    void reply.header('content-type', metrics.registry.contentType)
    return metrics.registry.metrics()
  })

  // Probes (issue 13): alive while the process answers; ready once calls can be routed. A kubelet asks every second:
  // their requests are not logged at info.
  app.get('/healthz', { logLevel: 'warn' }, async () => ({ status: 'ok' }))
  app.get('/readyz', { logLevel: 'warn' }, async (_request, reply) => {
    const why = deps.notReady?.()
    const more = deps.readiness?.() ?? {}
    if (why === undefined) return { status: 'ready', ...more }
    return reply.code(503).send({ status: 'not ready', reason: why, ...more })
  })

  app.addHook('onClose', async () => table.close())
  return { app, table, invoke: createInvoke(caller) }
}

/** Headers only the platform's own calls (async jobs) may set; the router strips every other `x-kindling-*`. */
const TRUSTED_HEADERS = ['x-kindling-async-id', 'x-kindling-async-attempt', 'x-kindling-trigger', 'x-kindling-trigger-tick'] as const

function trustedHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {}
  for (const h of TRUSTED_HEADERS) {
    const v = req.headers[h]
    if (typeof v === 'string') out[h] = v
  }
  return out
}
