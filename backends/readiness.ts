import { watch } from 'node:fs'
import { access } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { KdlError } from '../common/errors.js'
import { dispatcherFor, health } from '../protocol/runtime-client.js'

/**
 * Resolves once `socketPath` exists: watches its directory (inotify) instead of polling, so a runtime
 * that binds in 30 ms is seen in 30 ms. Rejects on timeout or when `abort` fires (the process died).
 */
export function waitForSocket(socketPath: string, timeoutMs: number, abort?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const name = basename(socketPath)
    let done = false
    const finish = (err?: Error): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      watcher.close()
      abort?.removeEventListener('abort', onAbort)
      if (err) reject(err)
      else resolve()
    }
    const onAbort = (): void => finish(abort?.reason instanceof Error ? abort.reason : new KdlError('KDL_ERR_BACKEND', 'instance exited before it listened'))
    const watcher = watch(dirname(socketPath), (_event, file) => {
      if (file === null || file === name) access(socketPath).then(() => finish(), () => {})
    })
    watcher.on('error', (err) => finish(new KdlError('KDL_ERR_BACKEND', `cannot watch ${dirname(socketPath)}`, { cause: err })))
    const timer = setTimeout(() => finish(new KdlError('KDL_ERR_BACKEND', `instance did not listen on ${socketPath} within ${timeoutMs} ms`)), timeoutMs)
    abort?.addEventListener('abort', onAbort)
    if (abort?.aborted) onAbort()
    // The socket may have appeared before the watcher was set up.
    access(socketPath).then(() => finish(), () => {})
  })
}

/**
 * Resolves once the runtime server at `socketPath` answers `GET /_/health`. A socket file exists from
 * bind() on, a moment before listen(): connection refusals in that window are retried with a short,
 * growing back-off, bounded by the deadline.
 */
export async function waitHealthy(socketPath: string, deadline: number, abort?: AbortSignal): Promise<void> {
  let delay = 1
  for (;;) {
    const probe = dispatcherFor({ socketPath })
    try {
      await health(probe, Math.max(1, deadline - Date.now()))
      return
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code !== 'ECONNREFUSED' && code !== 'ENOENT') throw err
      if (abort?.aborted === true) throw abort.reason
      if (Date.now() + delay > deadline) throw new KdlError('KDL_ERR_BACKEND', `instance on ${socketPath} refused connections until its start deadline`, { cause: err })
      await new Promise((r) => setTimeout(r, delay))
      delay = Math.min(delay * 2, 50)
    } finally {
      await probe.close()
    }
  }
}
