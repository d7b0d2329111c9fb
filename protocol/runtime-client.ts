import { Pool, type Dispatcher } from 'undici'
import { KdlError } from '../common/errors.js'
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

export async function unload(client: Dispatcher, timeoutMs?: number): Promise<void> {
  const { status } = await control(client, 'POST', '/_/unload', {}, timeoutMs)
  if (status !== 200) throw new KdlError('KDL_ERR_BACKEND', `runtime unload answered ${status}`)
}
