import type Dockerode from 'dockerode'
import { KdlError } from '../../common/errors.js'

/** The pino subset the backend logs through (a pino `Logger` fits). */
export interface BackendLog {
  debug(obj: object, msg: string): void
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}

export const noop = (): void => {}
export const silent: BackendLog = { debug: noop, info: noop, warn: noop, error: noop }

/**
 * Labels on every instance container; `kindling.instance` is the one the event filter keys on, and
 * `kindling.platform=<id>` scopes list() (orphan reaping) to the platform that started the container.
 */
export const LABEL = { instance: 'kindling.instance', platform: 'kindling.platform', runtime: 'kindling.runtime', pool: 'kindling.pool', fn: 'kindling.function', quarantine: 'kindling.quarantine' } as const
/** Instance ids name containers and host directories: no path separators, no dot-dot. */
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/

/** An instance the docker backend is starting or running (shared by the backend and its event stream). */
export interface Live {
  id: string
  runtime: string
  pool: string
  containerId?: string | undefined
  /** The container's cgroup v1 cpu directory, once started (priority changes write it directly). */
  cpuCgroup?: string | undefined
  /** Set once start() has resolved; a death before that only fails the start. */
  started: boolean
  /** Set by the first `die` event (a resubscribed stream may replay it). */
  exited: boolean
  stopping: boolean
  /** Aborted when the container dies (or times out) during start. */
  startFailed: AbortController
  /** Resolves when the engine reports the container's death. */
  died: Promise<void>
  markDied: () => void
}

export function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown }).statusCode
  return typeof s === 'number' ? s : undefined
}

export function backendError(message: string, cause: unknown): KdlError {
  if (cause instanceof KdlError) return cause
  const detail = cause instanceof Error ? `: ${cause.message}` : ''
  return new KdlError('KDL_ERR_BACKEND', `${message}${detail}`, { cause })
}

export function checkId(id: string): void {
  if (!ID_RE.test(id)) throw new KdlError('KDL_ERR_BACKEND', `instance id "${id}" must match ${ID_RE.source}`)
}

export function containerName(id: string): string {
  return `kindling-${id}`
}

/** Waits for an image pull to finish; a pull that reports an error in its progress stream fails. */
export function followPull(docker: Dockerode, stream: NodeJS.ReadableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    docker.modem.followProgress(stream, (err: Error | null, output: Array<Record<string, unknown>>) => {
      const failed = output?.find((o) => o['error'] !== undefined)
      if (err) reject(err)
      else if (failed !== undefined) reject(new Error(String(failed['error'])))
      else resolve()
    })
  })
}

/** The last lines a container printed (for start failures and crash logs), at most 2 KiB. */
export async function tailLogs(docker: Dockerode, containerId: string): Promise<string> {
  try {
    const raw = await docker.getContainer(containerId).logs({ stdout: true, stderr: true, tail: 20, follow: false })
    const text = demuxLogs(raw).trim()
    return text.length > 2048 ? `…${text.slice(-2048)}` : text
  } catch {
    return ''
  }
}

/** Splits the engine's multiplexed log frames (8-byte headers) into text; a TTY log is plain text already. */
function demuxLogs(raw: Buffer | string): string {
  const buf = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw
  if (buf.length < 8 || buf[0]! > 2 || buf[1] !== 0) return buf.toString('utf8')
  const parts: Buffer[] = []
  for (let at = 0; at + 8 <= buf.length;) {
    const size = buf.readUInt32BE(at + 4)
    parts.push(buf.subarray(at + 8, at + 8 + size))
    at += 8 + size
  }
  return Buffer.concat(parts).toString('utf8')
}
