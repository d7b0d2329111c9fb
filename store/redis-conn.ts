import { Redis, type RedisOptions } from 'ioredis'
import { KdlError } from '../common/errors.js'

/** How long one command may take before it fails with KDL_ERR_STORE_UNAVAILABLE (a hung server, a cut link). */
const COMMAND_TIMEOUT_MS = 5000
/** Longest pause between two reconnect attempts. */
const MAX_RECONNECT_DELAY_MS = 1000

export interface RedisConnOptions {
  url: string
  /** Names the connection in `CLIENT LIST` (e.g. `kindling:store:<replica>`). */
  name: string
  /** Blocking reads (XREADGROUP BLOCK) may outlast the command timeout. */
  blocking?: boolean
}

/**
 * An ioredis connection as the platform uses it: it fails fast when Redis is away (no offline queue, no
 * replays: a command that cannot be sent now is an error now, KDL_ERR_STORE_UNAVAILABLE) and keeps
 * reconnecting in the background, so the platform resumes by itself when Redis is back.
 */
export async function connectRedis(opts: RedisConnOptions): Promise<Redis> {
  const options: RedisOptions = {
    connectionName: opts.name.replace(/[^A-Za-z0-9:._-]/g, '_'),
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: COMMAND_TIMEOUT_MS,
    ...(opts.blocking === true ? {} : { commandTimeout: COMMAND_TIMEOUT_MS }),
    retryStrategy: (times) => Math.min(50 * times, MAX_RECONNECT_DELAY_MS),
    // A failover to a replica that is read-only: reconnect (and land on the new primary).
    reconnectOnError: (err) => err.message.startsWith('READONLY'),
  }
  const redis = new Redis(opts.url, options)
  // Errors are reported to each command's caller; the connection's own 'error' events are reconnect noise.
  redis.on('error', () => {})
  try {
    await redis.connect()
  } catch (err) {
    redis.disconnect()
    throw new KdlError('KDL_ERR_STORE_UNAVAILABLE', `no Redis answers at ${redactUrl(opts.url)}: ${(err as Error).message}`, { cause: err })
  }
  return redis
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@')
}

/** Runs one Redis round trip; a connection failure becomes KDL_ERR_STORE_UNAVAILABLE (503, retry after 1 s). */
export async function redisCall<T>(what: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    throw storeError(what, err)
  }
}

/** A Redis failure as the platform answers it: lost connections are 503s, anything else a 500 with its cause. */
export function storeError(what: string, err: unknown): KdlError {
  if (typeof (err as { code?: unknown }).code === 'string' && (err as { code: string }).code.startsWith('KDL_ERR_')) return err as KdlError
  const message = (err as Error).message ?? String(err)
  const lost = connectionLoss(err)
  if (lost !== undefined) {
    return new KdlError('KDL_ERR_STORE_UNAVAILABLE', `the store (Redis) does not answer (${lost}) while ${what}; nothing was changed, retry when it is back`, { cause: err, headers: { 'retry-after': '1' } })
  }
  return new KdlError('KDL_ERR_INTERNAL', `the store failed while ${what}: ${message}`, { cause: err })
}

/** How the connection was lost, in plain words, or undefined when the error is not a lost connection. */
function connectionLoss(err: unknown): string | undefined {
  const e = err as { name?: string; message?: string; code?: string }
  const m = e.message ?? ''
  if (e.code === 'ECONNREFUSED') return 'connection refused'
  if (typeof e.code === 'string' && /^(ECONNRESET|EPIPE)$/.test(e.code)) return 'connection reset'
  if (typeof e.code === 'string' && /^(ETIMEDOUT|EHOSTUNREACH|ENOTFOUND)$/.test(e.code)) return `unreachable: ${e.code}`
  if (/Command timed out|connect ETIMEDOUT/.test(m)) return 'timed out'
  if (/^LOADING/.test(m)) return 'loading its data'
  if (/^MASTERDOWN/.test(m)) return 'its primary is down'
  if (e.name === 'MaxRetriesPerRequestError' || /Stream isn't writeable|Connection is closed|enableOfflineQueue/.test(m)) return 'not connected'
  return undefined
}

/** The results of a MULTI's EXEC (null: refused); a command of it that failed fails the whole call (EXEC applies all or none). */
export function multiResults(what: string, results: Array<[Error | null, unknown]> | null): unknown[] {
  if (results === null) throw new KdlError('KDL_ERR_INTERNAL', `the store refused the transaction while ${what}`)
  const failed = results.find(([err]) => err !== null)
  if (failed !== undefined) throw new KdlError('KDL_ERR_INTERNAL', `the store failed while ${what}: ${(failed[0] as Error).message}`, { cause: failed[0] })
  return results.map(([, v]) => v)
}
