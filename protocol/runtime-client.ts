import { Pool, type Dispatcher } from 'undici'
import { KdlError, type ErrorCode } from '../common/errors.js'
import type { InstanceAddress } from '../common/types.js'

/**
 * A keep-alive HTTP dispatcher to one instance's runtime server (Unix socket or TCP). A Pool opens
 * connections on demand, so an instance gets as many as calls run on it at once (the router bounds
 * that by the function's `concurrency`) and a `concurrency: 1` function never opens a second.
 */
export function dispatcherFor(address: InstanceAddress): Dispatcher {
  const origin = 'socketPath' in address ? 'http://localhost' : `http://${address.host}:${address.port}`
  return new Pool(origin, {
    ...('socketPath' in address ? { socketPath: address.socketPath } : {}),
    pipelining: 1,
    keepAliveTimeout: 600_000,
    keepAliveMaxTimeout: 600_000,
  })
}

export interface HealthAnswer {
  state: 'generic' | 'loaded'
  function: string | null
  version: number | null
  pid: number
}

export interface LoadRequest {
  codeDir: string
  entrypoint: string
  function: string
  version: number
  env: Record<string, string>
  /** Recycle mode: the runtime evaluates a fresh copy of the function for every call itself (PROTOCOL §4.4). */
  recycle?: boolean
  /** Loaded ahead of its calls (a pool): the runtime may spend time now so that its first calls don't. */
  prepare?: boolean
}

async function control(client: Dispatcher, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 30_000): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await client.request({
    method,
    path,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? null : JSON.stringify(body),
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  })
  const text = await res.body.text()
  let json: Record<string, unknown> = {}
  try { json = text === '' ? {} : JSON.parse(text) as Record<string, unknown> } catch { json = { message: text } }
  return { status: res.statusCode, json }
}

export async function health(client: Dispatcher, timeoutMs?: number): Promise<HealthAnswer> {
  const { status, json } = await control(client, 'GET', '/_/health', undefined, timeoutMs)
  if (status !== 200) throw new KdlError('KDL_ERR_BACKEND', `runtime health answered ${status}`)
  return json as unknown as HealthAnswer
}

/** Loads a function; a runtime refusal becomes KDL_ERR_LOAD_FAILED carrying the runtime's message and stack verbatim. */
export async function load(client: Dispatcher, req: LoadRequest, timeoutMs?: number): Promise<{ loadMs: number }> {
  const { status, json } = await control(client, 'POST', '/_/load', req, timeoutMs)
  if (status === 200) return { loadMs: typeof json['loadMs'] === 'number' ? json['loadMs'] : 0 }
  const message = typeof json['message'] === 'string' ? json['message'] : `runtime refused the load (${status})`
  throw new KdlError('KDL_ERR_LOAD_FAILED', message, {
    details: typeof json['stack'] === 'string' ? { stack: json['stack'] } : {},
  })
}

/** `POST /_/fetch` (PROTOCOL §4.6): what a pod needs to fetch its function's code from the platform's code server. */
export interface FetchCodeRequest {
  /** `<code server>/code/<sha256>` */
  url: string
  sha256: string
  /** The grant's bearer token. */
  token: string
  /** The instance id the grant was made for (sent as `x-kindling-instance`). */
  instance: string
  /** The archive's exact size, when the grant says it (the runtime refuses any other length). */
  bytes?: number
  /** The runtime's own bound on the download, ms. @default 60_000 */
  timeoutMs?: number
  /** Largest sum of file sizes the archive may unpack to. @default 268_435_456 */
  maxBytes?: number
  /** Most entries of the archive. @default 200_000 */
  maxEntries?: number
}

export interface FetchCodeAnswer {
  /** Where the runtime unpacked the code: the `codeDir` of the load that follows. */
  codeDir: string
  /** Archive bytes downloaded (0 when the code was there already). */
  bytes: number
  fetchMs: number
  /** The code was there from an earlier fetch of the same sha256. */
  cached?: boolean
}

const FETCH_CODES = new Set(['KDL_ERR_CODE_FETCH', 'KDL_ERR_CODE_INTEGRITY', 'KDL_ERR_BAD_ARCHIVE', 'KDL_ERR_BAD_REQUEST'])

/**
 * Has the runtime fetch, verify and unpack its function's code; resolves the directory to load it from. A refusal
 * keeps the runtime's code (KDL_ERR_CODE_FETCH, KDL_ERR_CODE_INTEGRITY, KDL_ERR_BAD_ARCHIVE, KDL_ERR_BAD_REQUEST)
 * and message; anything else is KDL_ERR_CODE_FETCH. `details.status` is the runtime's HTTP status. `timeoutMs`
 * bounds the whole request. @default req.timeoutMs + 30 s
 */
export async function fetchCode(client: Dispatcher, req: FetchCodeRequest, timeoutMs?: number): Promise<FetchCodeAnswer> {
  // By default the runtime's own download bound, plus time to unpack: the runtime gives up first and says why.
  const { status, json } = await control(client, 'POST', '/_/fetch', req, timeoutMs ?? (req.timeoutMs ?? 60_000) + 30_000)
  if (status === 200 && typeof json['codeDir'] === 'string') {
    return {
      codeDir: json['codeDir'],
      bytes: typeof json['bytes'] === 'number' ? json['bytes'] : 0,
      fetchMs: typeof json['fetchMs'] === 'number' ? json['fetchMs'] : 0,
      ...(json['cached'] === true ? { cached: true } : {}),
    }
  }
  const code = typeof json['code'] === 'string' && FETCH_CODES.has(json['code']) ? json['code'] as ErrorCode : 'KDL_ERR_CODE_FETCH'
  const message = typeof json['message'] === 'string' ? json['message'] : `runtime refused the code fetch (${status})`
  throw new KdlError(code, message, { details: { status } })
}

export async function unload(client: Dispatcher, timeoutMs?: number): Promise<void> {
  const { status } = await control(client, 'POST', '/_/unload', {}, timeoutMs)
  if (status !== 200) throw new KdlError('KDL_ERR_BACKEND', `runtime unload answered ${status}`)
}

