import { STATUS_CODES } from 'node:http'
import { hostname, userInfo } from 'node:os'
import { request, type Dispatcher } from 'undici'
import { isRecord } from './output.js'

/** A failure the CLI reports as one stderr line (`message`) and an exit code. */
export class CliError extends Error {
  readonly exitCode: number
  constructor(message: string, exitCode = 1) {
    super(message)
    this.name = 'CliError'
    this.exitCode = exitCode
  }
}

/** A non-2xx answer from the API; `code` is the `KDL_ERR_*` code when the body carried one. */
export class ApiError extends CliError {
  readonly status: number
  readonly code: string | undefined
  constructor(status: number, code: string | undefined, message: string) {
    super(code === undefined ? `error: ${message}` : `error ${code}: ${message}`)
    this.name = 'ApiError'
    this.status = status
    this.code = code
  }
}

export interface RawResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

export interface SendOptions {
  body?: string | Buffer | undefined
  headers?: Record<string, string | string[]> | undefined
  /** Aborts the request (and a streamed body): `fn logs -f` ended by Ctrl-C. */
  signal?: AbortSignal | undefined
}

export interface ApiClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:8080` (a path prefix is kept). */
  url: string
  /** Bearer token for `/v1`; never sent to `/fn`, so function code does not see the operator's token. */
  token?: string | undefined
  dispatcher?: Dispatcher | undefined
  /** Sent as `x-kindling-actor` with every request (the API keeps it as who deployed, moved an alias…); default {@link defaultActor}. */
  actor?: string | undefined
}

/** `user@host` of whoever runs the CLI (`unknown` for a part the OS will not tell), as a header value can carry it. */
export function defaultActor(): string {
  const part = (get: () => string): string => {
    try {
      const v = get().replace(/[^\x21-\x7e]/g, '?')
      return v === '' ? 'unknown' : v
    } catch {
      return 'unknown'
    }
  }
  return `${part(() => userInfo().username)}@${part(hostname)}`.slice(0, 200)
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT'])

function unreachable(err: unknown, depth = 0): boolean {
  if (!isRecord(err) && !(err instanceof Error)) return false
  if (depth > 4) return false
  const e = err as { code?: unknown; cause?: unknown; errors?: unknown }
  if (typeof e.code === 'string' && UNREACHABLE.has(e.code)) return true
  if (Array.isArray(e.errors) && e.errors.some((x) => unreachable(x, depth + 1))) return true
  return e.cause !== undefined && unreachable(e.cause, depth + 1)
}

export function statusLine(status: number): string {
  return `${status} ${STATUS_CODES[status] ?? ''}`.trimEnd()
}

/** Parses a body as JSON; undefined when it is empty or not JSON. */
export function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined
  try {
    return JSON.parse(body.toString('utf8')) as unknown
  } catch {
    return undefined
  }
}

/** A Kindling error body (`{code: 'KDL_ERR_…', message}`), or undefined. */
export function kindlingError(data: unknown): { code: string; message: string } | undefined {
  if (!isRecord(data) || typeof data['code'] !== 'string' || !data['code'].startsWith('KDL_ERR_')) return undefined
  return { code: data['code'], message: typeof data['message'] === 'string' ? data['message'] : '' }
}

/** The tiny client every command uses: raw requests for `/fn`, JSON calls for `/v1`. */
export class ApiClient {
  readonly url: string
  readonly #base: URL
  readonly #token: string | undefined
  readonly #dispatcher: Dispatcher | undefined
  readonly #actor: string

  constructor(opts: ApiClientOptions) {
    this.url = opts.url
    this.#base = new URL(opts.url)
    this.#token = opts.token
    this.#dispatcher = opts.dispatcher
    this.#actor = opts.actor ?? defaultActor()
  }

  /** The headers of every request: the caller's, the bearer token for `/v1` (never `/fn`), and who is asking. */
  #headers(path: string, own: SendOptions['headers']): Record<string, string | string[]> {
    const headers: Record<string, string | string[]> = { ...own }
    if (this.#token !== undefined && (path === '/v1' || path.startsWith('/v1/')) && !hasHeader(headers, 'authorization')) {
      headers['authorization'] = `Bearer ${this.#token}`
    }
    if (!hasHeader(headers, 'x-kindling-actor')) headers['x-kindling-actor'] = this.#actor
    return headers
  }

  /** Sends one request; throws CliError only when the platform cannot be reached or the exchange fails. */
  async send(method: string, path: string, opts: SendOptions = {}): Promise<RawResponse> {
    const headers = this.#headers(path, opts.headers)
    const target = this.#base.origin + this.#base.pathname.replace(/\/+$/, '') + path
    try {
      const res = await request(target, {
        method: method.toUpperCase(),
        headers,
        body: opts.body ?? null,
        ...(this.#dispatcher === undefined ? {} : { dispatcher: this.#dispatcher }),
      })
      const chunks: Buffer[] = []
      for await (const chunk of res.body) chunks.push(chunk as Buffer)
      return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }
    } catch (err) {
      if (unreachable(err)) throw new CliError(`error: cannot reach Kindling at ${this.url} (is "kindling up" running?)`)
      throw new CliError(`error: request to ${this.url} failed: ${err instanceof Error ? err.message : String(err)}`)
    }
  }

  /** Sends one request and hands back its body as it arrives (build logs, the deploy's progress). */
  async stream(method: string, path: string, opts: SendOptions = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: AsyncIterable<Buffer> }> {
    const headers = this.#headers(path, opts.headers)
    const target = this.#base.origin + this.#base.pathname.replace(/\/+$/, '') + path
    try {
      const res = await request(target, {
        method: method.toUpperCase(), headers, body: opts.body ?? null,
        ...(this.#dispatcher === undefined ? {} : { dispatcher: this.#dispatcher }),
        ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      })
      return { status: res.statusCode, headers: res.headers, body: res.body as AsyncIterable<Buffer> }
    } catch (err) {
      if (unreachable(err)) throw new CliError(`error: cannot reach Kindling at ${this.url} (is "kindling up" running?)`)
      throw new CliError(`error: request to ${this.url} failed: ${err instanceof Error ? err.message : String(err)}`)
    }
  }

  /**
   * A management call: JSON in, JSON out. Non-2xx answers become ApiError
   * (`error KDL_ERR_X: message` when the body is a Kindling error).
   */
  async call(method: string, path: string, body?: unknown): Promise<{ status: number; data: unknown }> {
    const headers: Record<string, string> = { accept: 'application/json' }
    let payload: string | undefined
    if (body !== undefined) {
      headers['content-type'] = 'application/json'
      payload = JSON.stringify(body)
    }
    const res = await this.send(method, path, { headers, body: payload })
    const data = parseJson(res.body)
    if (res.status < 200 || res.status > 299) {
      const kerr = kindlingError(data)
      if (kerr !== undefined) throw new ApiError(res.status, kerr.code, kerr.message)
      const text = res.body.toString('utf8').trim().slice(0, 200)
      throw new ApiError(res.status, undefined, `${method.toUpperCase()} ${path} answered ${statusLine(res.status)}${text === '' ? '' : `: ${text}`}`)
    }
    return { status: res.status, data: data === undefined && res.body.length > 0 ? res.body.toString('utf8') : data }
  }
}

/** The JSON values of a streamed ndjson body, one a line, as they arrive (blank or unparsable lines are skipped). */
export async function* jsonLines(body: AsyncIterable<Buffer>): AsyncGenerator<unknown> {
  let buffered = ''
  for await (const chunk of body) {
    buffered += chunk.toString('utf8')
    let nl: number
    while ((nl = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      if (line.trim() !== '') yield parseJson(Buffer.from(line))
    }
  }
  if (buffered.trim() !== '') yield parseJson(Buffer.from(buffered))
}

export function hasHeader(headers: Record<string, unknown>, name: string): boolean {
  return Object.keys(headers).some((k) => k.toLowerCase() === name)
}
