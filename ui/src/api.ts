// The dashboard's view of the management API: same origin, bearer token from sessionStorage (issue 14).

const TOKEN_KEY = 'kindling.token'

/** A /v1 call answered 401: the page asks for the token. */
export class Unauthorized extends Error {}

/** A /v1 call answered another error status; `code` is the platform's KDL_ERR_* when it sent one. */
export class ApiError extends Error {
  readonly status: number
  readonly code: string | undefined
  constructor(status: number, code: string | undefined, message: string) {
    super(message)
    this.status = status
    this.code = code
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY)
}

export function setToken(value: string): void {
  sessionStorage.setItem(TOKEN_KEY, value)
}

export async function get<T>(path: string): Promise<T> {
  const t = token()
  const res = await fetch(path, { headers: t === null ? {} : { authorization: `Bearer ${t}` }, cache: 'no-store' })
  if (res.status === 401) throw new Unauthorized('the API wants a token')
  const text = await res.text()
  const body = text === '' ? {} : JSON.parse(text) as Record<string, unknown>
  if (!res.ok) throw new ApiError(res.status, typeof body['code'] === 'string' ? body['code'] : undefined, typeof body['message'] === 'string' ? body['message'] : `HTTP ${res.status}`)
  return body as T
}

/** Every function: `GET /v1/functions` a page at a time (pages of 1000, following `next`). */
export async function allFunctions(): Promise<FunctionView[]> {
  const out: FunctionView[] = []
  let cursor: string | undefined
  for (;;) {
    const page = await get<{ functions: FunctionView[]; next?: string }>(`/v1/functions?limit=1000${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    out.push(...page.functions)
    if (page.next === undefined) return out
    cursor = page.next
  }
}

// ── The shapes the dashboard reads (see README "HTTP API") ──

export type StartKind = 'warm' | 'prewarmed' | 'specialized' | 'cold'
export const START_KINDS: readonly StartKind[] = ['warm', 'prewarmed', 'specialized', 'cold']

export interface LoadGuardState {
  level: string
  quarantined: boolean
  range: { learned: boolean; samples: number; cpuMean: number; cpuUpper: number; memoryMean: number }
  instances: Array<{ id: string; cpuRatio: number; memoryBytes: number; pids: number; throttledToCores?: number; quarantined: boolean }>
}

export interface FunctionView {
  name: string
  version: number
  runtime: string
  mode: string
  prewarm: number
  updatedAt: string
  status: { instances: Record<string, number>; loadGuard?: LoadGuardState }
}

export interface PoolView {
  pool: string
  kind: 'generic' | 'prewarm'
  runtime: string
  function?: string
  version?: number
  target: number
  idle: number
  starting: number
}

export interface RouteView { function: string; version: number; instances: number; busy: number; waiting: number; pending: number }

export interface PoolsAnswer {
  pools: PoolView[]
  starts: { running: number; waiting: number; limit: number }
  functions: RouteView[]
}

export interface PlatformEvent { id: number; at: string; type: string; function?: string; instance?: string; message: string; data?: Record<string, unknown> }

export interface StatsBucket {
  t: number
  calls: number
  errors: number
  p50Ms: number | null
  p99Ms: number | null
  meanMs: number | null
  maxMs: number | null
  outcomes: Record<string, number>
  starts: Record<StartKind, number>
}

export interface StatsAnswer {
  bucketMs: number
  windowMs: number
  now: number
  functions: Record<string, { buckets: StatsBucket[]; totals: Omit<StatsBucket, 't'> }>
}

/** One entry of `GET /v1/functions/:name/logs` (the server's LogEntry, common/function-logs.ts). */
export interface LogLine {
  seq: number
  /** Epoch ms. */
  t: number
  function: string
  version: number
  instance: string
  invocation?: string
  stream: 'stdout' | 'stderr'
  level: 'debug' | 'info' | 'warn' | 'error'
  msg: string
  truncated?: true
  /** A marker: this many lines went over the instance's output rate. */
  dropped?: number
}

export interface LogsAnswer { logs: LogLine[]; next?: number }
