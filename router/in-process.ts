import { randomUUID } from 'node:crypto'
import type { Dispatcher } from 'undici'
import { KdlError } from '../common/errors.js'
import type { Invoke, InvokeCall, InvokeResult } from '../common/invoke.js'
import { neverRead } from '../common/transport.js'
import { ROUTE_KEY_HEADER, VERSION_HEADER, type Caller, type CallTransport } from './call.js'
import type { Granted, RouteEntry } from './instance-table.js'
import { errorAnswer, HOP_BY_HOP, type ForwardResult } from './proxy.js'

/** One in-process call and, once it ended, its answer. */
class InProcessCall {
  readonly call: InvokeCall
  result: InvokeResult | undefined = undefined

  constructor(call: InvokeCall) {
    this.call = call
  }

  fail(err: KdlError, entry: RouteEntry | undefined, headers?: Record<string, string>): void {
    this.result = errorResult(err, entry, headers)
  }
}

/** The platform's error as the answer of a call: what `/fn/:key` would have answered, and the error itself. */
function errorResult(err: KdlError, entry: RouteEntry | undefined, headers?: Record<string, string>): InvokeResult {
  const answer = errorAnswer(err, headers)
  return { status: err.statusCode, headers: answer.headers, body: Buffer.from(answer.body), version: entry?.spec.version, error: err }
}

/**
 * The platform calling a function itself (issue 12: a workflow step), through the same Caller, table and
 * instances as `/fn/:key`, without HTTP to the platform. Such a call is a call of its function like any
 * other: it counts in metrics, the dashboard and a canary's samples.
 */
export function createInvoke(caller: Caller): Invoke {
  const transport: CallTransport<InProcessCall> = { send, fail: (ctx, err, entry, headers) => ctx.fail(err, entry, headers) }
  return async (key, call) => {
    const ctx = new InProcessCall(call)
    const sticky = call.headers[ROUTE_KEY_HEADER]
    await caller.run(transport, ctx, key, call.path, sticky, call.timeoutMs)
    // The Caller ends every call through the transport; this only keeps the contract's type honest.
    return ctx.result ?? errorResult(new KdlError('KDL_ERR_INTERNAL', 'the call ended without an answer'), undefined)
  }
}

/**
 * Sends the call with its headers as given (the platform's own, `x-kindling-workflow-*` included: unlike a
 * client's, they are not stripped), buffers the answer up to `maxResponseBytes` and keeps it on `ctx`.
 */
async function send(ctx: InProcessCall, granted: Granted, path: string, timeoutMs: number): Promise<ForwardResult> {
  const { entry, slot, kind } = granted
  const { call } = ctx
  const invocationId = randomUUID()
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(call.headers)) {
    const lower = name.toLowerCase()
    // undici refuses hop-by-hop headers outright, and the length is the body's.
    if (!HOP_BY_HOP.has(lower) && lower !== 'content-length') headers[lower] = value
  }
  headers['x-kindling-invocation-id'] = invocationId
  headers['x-kindling-deadline-ms'] = String(Date.now() + timeoutMs)
  const hasBody = call.body.length > 0
  if (hasBody) headers['content-length'] = String(call.body.length)

  let answer: Dispatcher.ResponseData
  try {
    answer = await slot.lease.dispatcher.request({ path, method: call.method, headers, body: hasBody ? call.body : null, headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
  } catch (err) {
    const code = (err as { code?: string }).code
    // undici refused the call itself (a header value it cannot send): nothing reached the instance.
    if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
      ctx.fail(new KdlError('KDL_ERR_BAD_REQUEST', `the call cannot be sent: ${(err as Error).message}`, { cause: err }), entry)
      return { outcome: 'ok', status: 400, error: err }
    }
    // The instance never read the call: the body is a Buffer, so unlike a streamed HTTP body it can always
    // be sent to another instance.
    if (neverRead(code)) return { outcome: 'unsent', status: 502, error: err }
    return failed(err)
  }

  const { statusCode, headers: upstream, body } = answer
  if (upstream['x-kindling-retire'] !== undefined) {
    // Refused unrun (PROTOCOL §4.4): read the short refusal so the connection serves again, and send the call elsewhere.
    await body.dump().catch(() => undefined)
    return { outcome: 'unsent', status: statusCode, retire: true }
  }
  const max = call.maxResponseBytes
  if (Number(upstream['content-length']) > max) {
    discard(body)
    return tooLarge(ctx, entry, max)
  }
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > max) break
      chunks.push(chunk)
    }
  } catch (err) {
    return failed(err)
  }
  if (size > max) {
    // Leaving the loop early destroyed the body: undici closes that connection (the rest of the answer is
    // never read) and the pool opens a fresh one for the next call.
    return tooLarge(ctx, entry, max)
  }
  const h = upstream as Record<string, string | string[] | undefined>
  h['x-kindling-start'] = kind
  h['x-kindling-invocation-id'] = invocationId
  h[VERSION_HEADER] = entry.versionText
  ctx.result = { status: statusCode, headers: h, body: chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks, size), version: entry.spec.version }
  return { outcome: 'ok', status: statusCode }
}

function failed(err: unknown): ForwardResult {
  const code = (err as { code?: string }).code
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return { outcome: 'timeout', status: 504, error: err }
  return { outcome: 'crashed', status: 502, error: err }
}

/**
 * The function finished its work, only its answer is too long for the caller: the instance stays, as for an
 * HTTP caller that left before the answer.
 */
function tooLarge(ctx: InProcessCall, entry: RouteEntry, max: number): ForwardResult {
  const err = new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `the answer of function "${entry.spec.name}" exceeds the ${max}-byte limit of the call`)
  ctx.fail(err, entry, { [VERSION_HEADER]: entry.versionText })
  return { outcome: 'ok', status: 413, error: err }
}

/** Drops an answer unread: the body is destroyed (undici closes its connection); its abort error goes nowhere. */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => undefined)
  body.destroy()
}
