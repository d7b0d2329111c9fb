import type { V1ContainerStateTerminated, V1Pod } from '@kubernetes/client-node'
import type { ExitReason } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'

/** The pino subset the backend logs through (a pino `Logger` fits). */
export interface KubeLog {
  debug(obj: object, msg: string): void
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}

export const noop = (): void => {}
export const silent: KubeLog = { debug: noop, info: noop, warn: noop, error: noop }

/** Labels on every pod and Deployment of the backend (the fixed names of issue 10). */
export const LABEL = {
  /** `true`: a pool pod (in its Deployment's selector); `false`: claimed by an instance, or a bare pod. */
  managed: 'kindling.io/managed',
  runtime: 'kindling.io/runtime',
  platform: 'kindling.io/platform',
  fn: 'kindling.io/function',
  instance: 'kindling.io/instance',
  version: 'kindling.io/version',
  /** `egress` on the pods of `network: egress` functions (issue 13: the chart's NetworkPolicy allows their egress). */
  network: 'kindling.io/network',
  /** The pool's kind (`generic`, `fn`): a label value cannot hold the pool's name (`fn:<name>`); the annotation does. */
  pool: 'kindling.io/pool',
} as const

/** The instance's exact pool (`generic:node`, `fn:hello`). */
export const POOL_ANNOTATION = 'kindling.io/pool'

/** A label value: at most 63 characters, alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric. */
const LABEL_VALUE_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)$/

/** Instance ids are label values and part of pod names. */
export function checkId(id: string): void {
  if (!LABEL_VALUE_RE.test(id) || id !== id.toLowerCase()) {
    throw new KdlError('KDL_ERR_BACKEND', `instance id "${id}" must be a lower-case Kubernetes label value (at most 63 characters)`)
  }
}

/** The pool's kind as a label value. */
export function poolKind(pool: string): string {
  const kind = pool.split(':', 1)[0] ?? ''
  return LABEL_VALUE_RE.test(kind) ? kind : 'other'
}

/** The HTTP status of a failed API call (client-node's ApiException carries it as `code`), if it got one. */
export function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | undefined
  if (typeof e?.code === 'number') return e.code
  if (typeof e?.statusCode === 'number') return e.statusCode
  return undefined
}

/** The API server's own words: the `message` of the `Status` it answered (client-node keeps the body as text). */
function statusMessage(err: unknown): { message?: string; reason?: string } {
  const body = (err as { body?: unknown }).body
  let status: unknown = body
  if (typeof body === 'string') {
    try { status = JSON.parse(body) } catch { return body.trim() === '' ? {} : { message: body.trim().slice(0, 500) } }
  }
  if (typeof status !== 'object' || status === null) return {}
  const s = status as { message?: unknown; reason?: unknown }
  return {
    ...(typeof s.message === 'string' ? { message: s.message } : {}),
    ...(typeof s.reason === 'string' ? { reason: s.reason } : {}),
  }
}

/**
 * A failed API call as KDL_ERR_BACKEND: the API's status and message when it answered, "unreachable" when it did
 * not (refused, reset, timed out). The original error is the cause.
 */
export function apiError(what: string, err: unknown, server: string): KdlError {
  if (err instanceof KdlError) return err
  const status = statusOf(err)
  if (status !== undefined) {
    const { message, reason } = statusMessage(err)
    return new KdlError('KDL_ERR_BACKEND', `${what}: the Kubernetes API answered ${status}${reason === undefined ? '' : ` ${reason}`}${message === undefined ? '' : `: ${message}`}`, {
      cause: err, details: { status, ...(reason === undefined ? {} : { reason }) },
    })
  }
  const why = err instanceof Error ? err.message : String(err)
  return new KdlError('KDL_ERR_BACKEND', `${what}: the Kubernetes API server ${server} is unreachable (${why})`, { cause: err, details: { unreachable: true } })
}

const SUFFIX: Record<string, number> = {
  '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4,
}

/** A Kubernetes quantity as a number (`250m` → 0.25, `128Mi` → 134217728); NaN when unreadable. */
export function quantity(q: string | undefined): number {
  const m = /^([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)$/.exec(q ?? '')
  const factor = m === null ? undefined : SUFFIX[m[2] ?? '']
  return m === null || factor === undefined ? NaN : Number(m[1]) * factor
}

/** Equal quantities however written: the API server canonicalises (`1000m` is stored as `1`). */
export function sameQuantity(a: string | undefined, b: string | undefined): boolean {
  const x = quantity(a)
  const y = quantity(b)
  return !Number.isNaN(x) && Math.abs(x - y) <= Math.abs(y) * 1e-9
}

/** True when the pod's Ready condition is True. */
export function isReady(pod: V1Pod): boolean {
  return pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true
}

/** How a claimed pod's runtime ended, read from its container statuses; undefined while it runs. */
export interface PodEnd {
  reason: ExitReason
  code: number | null
  signal: string | null
  /** What the pod said (a terminated reason, an eviction message), for the log. */
  detail: string
}

/**
 * The end of a pod's runtime container, if it ended: a terminated state (restartPolicy Never), or a restart (pool
 * pods keep restartPolicy Always: a restarted runtime has lost its function, so for the platform it died), or the
 * pod failing as a whole (an eviction). `OOMKilled` → oom; exit 137 / SIGKILL → killed (from outside: the node, an
 * operator); 0 → exited; anything else → crashed.
 */
export function podEnd(pod: V1Pod, restartsAtClaim: number): PodEnd | undefined {
  const st = pod.status?.containerStatuses?.find((c) => c.name === 'runtime') ?? pod.status?.containerStatuses?.[0]
  const term = st?.state?.terminated ?? (st !== undefined && st.restartCount > restartsAtClaim ? st.lastState?.terminated : undefined)
  if (term !== undefined) return endOf(term)
  if (pod.status?.phase === 'Failed' || pod.status?.phase === 'Succeeded') {
    const detail = [pod.status.reason, pod.status.message].filter((x) => x !== undefined && x !== '').join(': ')
    return { reason: pod.status.phase === 'Succeeded' ? 'exited' : 'killed', code: null, signal: pod.status.phase === 'Succeeded' ? null : 'SIGKILL', detail: detail === '' ? pod.status.phase : detail }
  }
  return undefined
}

function endOf(term: V1ContainerStateTerminated): PodEnd {
  const code = typeof term.exitCode === 'number' ? term.exitCode : null
  const signal = term.signal === 9 || code === 137 ? 'SIGKILL' : typeof term.signal === 'number' && term.signal > 0 ? `signal ${term.signal}` : null
  const detail = [term.reason, term.message].filter((x) => x !== undefined && x !== '').join(': ')
  const base = { code, signal, detail: detail === '' ? `exit code ${code}` : detail }
  if (term.reason === 'OOMKilled') return { reason: 'oom', ...base }
  if (signal === 'SIGKILL') return { reason: 'killed', ...base }
  return { reason: code === 0 ? 'exited' : 'crashed', ...base }
}

/** A pod that has not become Ready, in one line: its phase, its conditions' reasons and messages, its container's state. */
export function describePod(pod: V1Pod | undefined): string {
  if (pod === undefined) return 'the pod is gone'
  const parts: string[] = [`phase ${pod.status?.phase ?? 'unknown'}`]
  for (const c of pod.status?.conditions ?? []) {
    if (c.status === 'True') continue
    parts.push(`${c.type}=${c.status}${c.reason === undefined ? '' : ` (${c.reason}${c.message === undefined ? '' : `: ${c.message}`})`}`)
  }
  const st = pod.status?.containerStatuses?.[0]?.state
  if (st?.waiting !== undefined) parts.push(`waiting: ${st.waiting.reason ?? ''}${st.waiting.message === undefined ? '' : ` ${st.waiting.message}`}`)
  if (st?.terminated !== undefined) parts.push(`terminated: ${st.terminated.reason ?? ''} exit ${st.terminated.exitCode}`)
  if (pod.spec?.nodeName !== undefined) parts.push(`node ${pod.spec.nodeName}`)
  return parts.join('; ')
}

/** Resolves after `ms` (for back-off between attempts against an API server that is away — not for synchronisation). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
  })
}
