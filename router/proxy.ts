import { randomUUID } from 'node:crypto'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { Transform, Writable, type Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import { drainRefused } from '../common/drain.js'
import { errorBody, KdlError } from '../common/errors.js'
import { neverRead } from '../common/transport.js'

/** Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1), plus what undici sets itself. */
export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authorization', 'proxy-authenticate', 'host', 'expect'])

export interface ForwardResult {
  /**
   * How the call ended for the instance: `ok`, or why the instance can no longer be trusted. `unsent`:
   * the connection to the instance never opened (refused, no socket), so nothing of the call reached it,
   * and the call has no body: it may be sent to another instance.
   */
  outcome: 'ok' | 'timeout' | 'crashed' | 'unsent'
  status: number
  error?: unknown
  /**
   * The runtime asked for its instance to be retired (`x-kindling-retire`, PROTOCOL §4.4): a recycle
   * instance that can no longer load a fresh copy. With `unsent`, the call was refused unrun.
   */
  retire?: true
}

/**
 * Sends one invocation to an instance and streams its answer straight into the client's response.
 * Request and response bodies are streamed, never buffered; `timeoutMs` bounds the handler (undici's
 * headers/body timeouts, so the warm path allocates no timer of its own).
 */
export async function forward(
  req: IncomingMessage,
  res: ServerResponse,
  dispatcher: Dispatcher,
  path: string,
  timeoutMs: number,
  maxBodyBytes: number,
  startKind: string,
  version: string,
  extraHeaders?: Record<string, string>,
): Promise<ForwardResult> {
  // The caller left while the call waited for an instance: nothing to run it for.
  if (res.destroyed) return { outcome: 'ok', status: 499 }
  const invocationId = randomUUID()
  const headers: Record<string, string | string[]> = {}
  const inHeaders: IncomingHttpHeaders = req.headers
  for (const key in inHeaders) {
    if (HOP_BY_HOP.has(key) || key.startsWith('x-kindling-')) continue
    const v = inHeaders[key]
    if (v !== undefined) headers[key] = v
  }
  headers['x-kindling-invocation-id'] = invocationId
  headers['x-kindling-deadline-ms'] = String(Date.now() + timeoutMs)
  if (extraHeaders !== undefined) Object.assign(headers, extraHeaders)

  const method = req.method ?? 'GET'
  let body: Readable | null = null
  if (method !== 'GET' && method !== 'HEAD') {
    const declared = inHeaders['content-length']
    if (declared !== undefined) {
      if (Number(declared) > maxBodyBytes) return tooLarge(req, res, maxBodyBytes)
      if (declared !== '0') body = req
    } else if (inHeaders['transfer-encoding'] !== undefined) {
      body = req.pipe(limitBytes(maxBodyBytes))
    }
  }

  let status = 0
  /** The runtime refused the call without running it (`x-kindling-retire: unrun`, its only value). */
  let unrun = false
  try {
    await dispatcher.stream({ path, method, headers, body, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, opaque: res }, ({ statusCode, headers: upstream, opaque }) => {
      const out = opaque as ServerResponse
      status = statusCode
      if (upstream['x-kindling-retire'] !== undefined) {
        delete upstream['x-kindling-retire']
        unrun = true
        // A bodiless call goes to another instance; its refusal goes nowhere. One with a body cannot be
        // sent again (undici has let go of it): the caller gets the refusal.
        if (body === null) return new Writable({ write: (_c, _e, cb) => cb() })
      }
      // The caller left while the handler ran: the instance did its work and stays trusted; the
      // answer goes nowhere.
      if (out.destroyed) return new Writable({ write: (_c, _e, cb) => cb() })
      // undici hands over a fresh object per response: amend it in place rather than copy it.
      const h = upstream as Record<string, string | string[] | undefined>
      delete h['connection']
      delete h['keep-alive']
      delete h['transfer-encoding']
      h['x-kindling-start'] = startKind
      h['x-kindling-invocation-id'] = invocationId
      h['x-kindling-version'] = version
      out.writeHead(statusCode, h as Record<string, string | string[]>)
      return out
    })
    if (!unrun) return { outcome: 'ok', status }
    return { outcome: body === null ? 'unsent' : 'ok', status, retire: true }
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'KDL_ERR_PAYLOAD_TOO_LARGE') return tooLarge(req, res, maxBodyBytes)
    // The caller went away (mid-upload, or while the answer streamed out, i.e. after the handler ran):
    // the handler either never started or already finished, so the instance is fine.
    if (res.destroyed) return { outcome: 'ok', status: 499, error: err }
    // The instance never read the call (it died before the call reached it — issue 8): a bodiless call
    // may go to another instance; one with a body cannot (undici has let go of the body): crashed.
    if (status === 0 && neverRead(code)) return { outcome: body === null ? 'unsent' : 'crashed', status: 502, error: err }
    if (req.destroyed && !req.complete) return { outcome: 'ok', status: 499, error: err }
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return { outcome: 'timeout', status: 504, error: err }
    }
    return { outcome: 'crashed', status: 502, error: err }
  }
}

function tooLarge(req: IncomingMessage, res: ServerResponse, max: number): ForwardResult {
  const err = new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `request body exceeds the ${max}-byte limit`)
  sendError(res, err)
  drainRefused(req)
  return { outcome: 'ok', status: 413, error: err }
}

/**
 * Answers 413 to a request that announces a body over `max`, before reading any of it (no instance is
 * taken for it), and drains what the client goes on sending.
 */
export function refuseOversized(req: IncomingMessage, res: ServerResponse, max: number): void {
  sendError(res, new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `request body exceeds the ${max}-byte limit`))
  drainRefused(req)
}

/** A pass-through that fails once more than `max` bytes went through (chunked bodies have no length). */
function limitBytes(max: number): Transform {
  let seen = 0
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length
      if (seen > max) cb(new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `request body exceeds the ${max}-byte limit`))
      else cb(null, chunk)
    },
  })
}

/** Writes a KdlError as the platform's JSON error body, unless an answer already started. */
export function sendError(res: ServerResponse, err: KdlError, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const answer = errorAnswer(err, extraHeaders)
  res.writeHead(err.statusCode, answer.headers)
  res.end(answer.body)
}

/** The platform's answer for a KdlError, head and JSON body: what `sendError` writes and an in-process call returns. */
export function errorAnswer(err: KdlError, extraHeaders: Record<string, string> = {}): { headers: Record<string, string>; body: string } {
  const body = JSON.stringify(errorBody(err))
  return {
    headers: {
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      ...err.headers,
      ...extraHeaders,
    },
    body,
  }
}
