import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { splitQualifier, versionQualifier } from '../common/aliases.js'
import { drainRefused } from '../common/drain.js'
import { errorBody, isKdlError, KdlError } from '../common/errors.js'
import { FUNCTION_DEFAULTS } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { AsyncQueue } from './queue.js'

/** Request headers a job does not keep: hop-by-hop, framing, and the platform's own. */
const DROPPED = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-connection', 'host', 'content-length', 'expect', 'idempotency-key'])
const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,200}$/
/** Slack for an instance start on top of the call's queue wait and timeout, ms. */
const START_SLACK_MS = 1000

export interface AsyncIngressOptions {
  queue: AsyncQueue
  store: Store
  /** Largest async body (KINDLING_ASYNC_MAX_BODY_BYTES). */
  maxBodyBytes: number
  /** Added to a call's longest run to make its reclaim time (KINDLING_ASYNC_RECLAIM_MARGIN_MS). */
  reclaimMarginMs: number
  log: Logger
}

/**
 * Takes an async invocation from the router's raw server (`POST /async/fn/:name[/*]`, or `/fn/...` with
 * `x-kindling-invoke: async`): reads the body (at most `maxBodyBytes`), checks the function, enqueues the job and
 * answers `202 {id}` with `location: /v1/async/<id>` once Redis has it.
 */
export function asyncIngress(opts: AsyncIngressOptions): (key: string, rest: string, req: IncomingMessage, res: ServerResponse) => void {
  return (key, rest, req, res) => {
    enqueue(opts, key, rest, req, res).catch((err: unknown) => {
      const kdl = isKdlError(err) ? err : new KdlError('KDL_ERR_INTERNAL', 'internal error', { cause: err })
      if (kdl.code === 'KDL_ERR_STORE_UNAVAILABLE') opts.log.warn({ code: kdl.code }, 'async enqueue refused: the store does not answer')
      else if (kdl.statusCode >= 500) opts.log.error({ err }, 'async enqueue failed')
      if (kdl.code === 'KDL_ERR_PAYLOAD_TOO_LARGE') drainRefused(req)
      send(res, kdl.statusCode, errorBody(kdl), kdl.headers)
    })
  }
}

async function enqueue(opts: AsyncIngressOptions, key: string, rest: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const max = opts.maxBodyBytes
  const tooLarge = (): KdlError => new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `async request body exceeds the ${max}-byte limit (KINDLING_ASYNC_MAX_BODY_BYTES)`)
  const declared = req.headers['content-length']
  if (declared !== undefined && Number(declared) > max) throw tooLarge()
  const idem = req.headers['idempotency-key']
  if (idem !== undefined && (typeof idem !== 'string' || !IDEMPOTENCY_KEY_RE.test(idem))) {
    throw new KdlError('KDL_ERR_BAD_REQUEST', 'Idempotency-Key must be 1 to 200 printable ASCII characters without spaces')
  }
  const body = await readBody(req, max, tooLarge)
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined || DROPPED.has(k) || k.startsWith('x-kindling-')) continue
    headers[k] = Array.isArray(v) ? v.join(', ') : v
  }
  const path = rest === '' || rest[0] === '?' ? `/${rest}` : rest
  const { id, existing } = await submit(opts, key, { method: req.method ?? 'POST', path, headers, body }, idem)
  send(res, 202, { id, location: `/v1/async/${id}` }, { location: `/v1/async/${id}`, ...(existing ? { 'x-kindling-idempotent-replay': 'true' } : {}) })
}

/** One call to enqueue: what a job keeps of a request (or what the platform makes, e.g. a cron tick). */
export interface AsyncCall {
  method: string
  /** Path and query after the function key (`/` at least). */
  path: string
  headers: Record<string, string>
  body: Buffer
}

/**
 * Checks that `key` (`name`, `name@alias`, `name@7`) names a deployed function and enqueues the call as a job
 * with the function's retries, max age and reclaim time. The router's hand-over and cron ticks both come here.
 */
export async function submit(opts: Pick<AsyncIngressOptions, 'queue' | 'store' | 'reclaimMarginMs'>, key: string, call: AsyncCall, idempotencyKey?: string): Promise<{ id: string; existing: boolean }> {
  const { name, qualifier } = splitQualifier(key)
  const record = await opts.store.getFunction(name)
  if (record === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name.slice(0, 80)}" is not deployed`)
  const version = versionQualifier(qualifier)
  if (qualifier !== 'latest' && version === undefined && record.aliases?.[qualifier] === undefined) {
    throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no alias "${qualifier.slice(0, 80)}"`)
  }
  if (version !== undefined && version !== record.version && await opts.store.getVersion(name, version) === undefined) {
    throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no version ${version}`)
  }
  const retries = record.asyncRetries ?? FUNCTION_DEFAULTS.asyncRetries
  const budget = record.queueTimeoutMs + record.timeoutMs + START_SLACK_MS
  return opts.queue.enqueue({
    function: key, ...call,
    maxAttempts: 1 + retries, maxAgeMs: record.asyncMaxAgeMs ?? FUNCTION_DEFAULTS.asyncMaxAgeMs,
    timeoutMs: budget, reclaimMs: budget + opts.reclaimMarginMs,
  }, idempotencyKey)
}

async function readBody(req: IncomingMessage, max: number, tooLarge: () => KdlError): Promise<Buffer> {
  // Events, not for-await: a refused body must not destroy the request (and its socket) before the 413 is sent.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let refused = false
    req.on('data', (c: Buffer) => {
      if (refused) return
      size += c.length
      if (size > max) {
        refused = true
        reject(tooLarge())
        return
      }
      chunks.push(c)
    })
    req.once('end', () => { if (!refused) resolve(Buffer.concat(chunks)) })
    req.once('error', reject)
  })
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}
