import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { splitQualifier } from '../common/aliases.js'
import { errorBody, isKdlError, KdlError } from '../common/errors.js'
import type { Metrics } from '../common/metrics.js'
import type { ExecutorClient } from '../executor/client.js'
import type { VersionSamples } from '../common/version-samples.js'
import type { CallOutcome, CallStats } from './call-stats.js'
import { InstanceTable, type Granted } from './instance-table.js'
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
}

const FN_PREFIX = '/fn/'
const ASYNC_PREFIX = '/async/fn/'
/** Names the caller whose calls a weighted alias sends to the same version (issue 15). */
const ROUTE_KEY_HEADER = 'x-kindling-route-key'
/** The version that answered, on every answer of a call routed to one. */
const VERSION_HEADER = 'x-kindling-version'
/** Instances one call may be refused unrun by (x-kindling-retire) before it fails with KDL_ERR_LOAD_FAILED (issue 8). */
const SEND_ATTEMPTS = 3

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
          // `name@alias`, also when a client encoded the @ (`name%40alias`); the key's length stays the segment's.
          handleInvocation(segment, segment.includes('%') ? segment.replaceAll('%40', '@') : segment, req, res, log).catch((err: unknown) => {
            // A bug or an unexpected backend failure: the caller still gets an answer, the platform stays up.
            log.error({ err }, 'invocation failed unexpectedly')
            sendError(res, toKdlError(err))
          })
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
  const { metrics, callStats, samples } = deps

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

  async function handleInvocation(segment: string, key: string, req: IncomingMessage, res: ServerResponse, log: FastifyBaseLogger): Promise<void> {
    const t0 = performance.now()
    const url = req.url ?? '/'
    const rest = url.slice(FN_PREFIX.length + segment.length)
    const path = rest === '' || rest[0] === '?' ? `/${rest}` : rest
    const sticky = req.headers[ROUTE_KEY_HEADER]
    const routeKey = typeof sticky === 'string' ? sticky : undefined
    // An async job's call (issue 11) tells the function its job id and attempt, so it can deduplicate, and the
    // cron tick that made it, if one did. Only the platform's own calls carry the token: a client cannot forge these.
    const job = deps.asyncToken !== undefined && req.headers['x-kindling-async-token'] === deps.asyncToken ? trustedHeaders(req) : undefined
    // The warm path: the route's pick (weights, sticky key), then a free slot of that version.
    let picked = table.pick(key, routeKey)
    let granted: Granted | undefined = picked === undefined ? undefined : table.tryWarm(picked)
    let refusals = 0
    for (let attempt = 1; ; attempt++) {
      if (granted === undefined) {
        try {
          granted = await table.acquire(key, routeKey, attempt > 1, picked)
        } catch (err) {
          const kdl = toKdlError(err)
          const name = picked?.spec.name ?? splitQualifier(key).name
          if (kdl.statusCode >= 500) log.error({ err, fn: name }, 'no instance for call')
          // Unknown names are not labels: a client must not be able to grow the metric set at will.
          const unknown = kdl.code === 'KDL_ERR_FN_NOT_FOUND' || kdl.code === 'KDL_ERR_VERSION_NOT_FOUND'
          metrics.invocations.inc({ function: unknown ? '' : name, version: picked?.versionText ?? '', code: kdl.code })
          if (!unknown) callStats.record(name, 'refused', Number.NaN, undefined)
          if (picked !== undefined) {
            samples?.record(name, picked.spec.version, false, performance.now() - t0)
            sendError(res, kdl, { [VERSION_HEADER]: picked.versionText })
          } else {
            sendError(res, kdl)
          }
          return
        }
      }
      picked = granted.entry
      const { entry, slot, kind } = granted
      const name = entry.spec.name
      let outcome: CallOutcome = 'ok'
      const result = await forward(req, res, slot.lease.dispatcher, path, entry.spec.timeoutMs, cfg.maxBodyBytes, kind, entry.versionText, job)
      if (result.outcome === 'unsent' && result.retire === true) refusals++
      if (result.outcome === 'unsent' && refusals < SEND_ATTEMPTS && performance.now() - t0 < entry.spec.timeoutMs) {
        // The instance was gone before the call reached it (issue 8): its slot goes, the call takes another —
        // until the call's deadline (a dead instance says nothing about the next one). An instance that
        // refused the call unrun (its function no longer loads) may be followed by others that do: those
        // count, SEND_ATTEMPTS at most.
        log.warn({ fn: name, instance: slot.lease.instanceId, attempt }, result.retire === true ? 'instance refused the call unrun: trying another' : 'instance gone before the call was sent: trying another')
        metrics.retries.inc({ stage: 'send' })
        table.done(entry, slot, result.retire === true ? 'exhausted' : 'crashed')
        granted = undefined
        continue
      }
      if (result.outcome === 'ok') {
        if (result.retire === true) table.retire(entry, slot, 'exhausted')
        table.done(entry, slot, 'ok')
        entry.countStatus(result.status)
        if (result.status >= 500) outcome = 'http5xx'
      } else if (result.retire === true) {
        // Refused unrun by instance after instance, out of attempts: the function no longer loads.
        table.done(entry, slot, 'exhausted')
        outcome = 'refused'
        const err = new KdlError('KDL_ERR_LOAD_FAILED', `function "${name}" no longer loads a fresh copy in its instances; see its logs`)
        metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
        sendError(res, err, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
      } else if (result.outcome === 'timeout') {
        table.done(entry, slot, 'timeout')
        outcome = 'timeout'
        const err = new KdlError('KDL_ERR_FN_TIMEOUT', `function "${name}" did not answer within ${entry.spec.timeoutMs} ms; its instance was replaced`)
        metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
        sendError(res, err, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
      } else {
        const why = await deps.executor.diagnose(slot.lease).catch(() => 'crashed' as const)
        table.done(entry, slot, 'crashed')
        const err = why === 'oom'
          ? new KdlError('KDL_ERR_FN_OOM', `function "${name}" exceeded its memory limit; its instance was killed`)
          : new KdlError('KDL_ERR_FN_CRASHED', `function "${name}" crashed during the call on instance ${slot.lease.instanceId} (${(result.error as Error | undefined)?.message ?? 'connection lost'})`)
        outcome = why === 'oom' ? 'oom' : 'crashed'
        log.warn({ fn: name, instance: slot.lease.instanceId, code: err.code }, 'instance lost during call')
        metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
        sendError(res, err, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
      }
      const ms = performance.now() - t0
      entry.observeDuration(ms / 1000)
      callStats.record(name, outcome, ms, kind)
      samples?.record(name, entry.spec.version, outcome === 'ok', ms)
      return
    }
  }

  app.addHook('onClose', async () => table.close())
  return { app, table }
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

/** Fastify's own errors (body too large, bad JSON) mapped onto the platform's codes. */
export function toKdlError(err: unknown): KdlError {
  if (isKdlError(err)) return err
  const e = err as { code?: string; statusCode?: number; message?: string }
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', e.message ?? 'request body too large', { cause: err })
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new KdlError('KDL_ERR_BAD_REQUEST', e.message ?? 'bad request', { cause: err })
  }
  return new KdlError('KDL_ERR_INTERNAL', 'internal error', { cause: err })
}
