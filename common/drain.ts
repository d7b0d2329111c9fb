import type { IncomingMessage } from 'node:http'

/** How long the rest of a refused body is read and dropped before the connection is cut. */
const DRAIN_MS = 10_000

/**
 * Reads and drops the rest of a refused request body, for at most DRAIN_MS: a client that sends its
 * whole body before it reads (most do) then gets the 413 already written, where closing at once would
 * reset the connection and lose the answer in its receive buffer. A body that is still coming after the
 * bound (a trickle) gets its connection cut.
 */
export function drainRefused(req: IncomingMessage): void {
  if (req.complete || req.destroyed) return
  req.unpipe()
  const timer = setTimeout(() => req.socket.destroy(), DRAIN_MS)
  timer.unref()
  const done = (): void => clearTimeout(timer)
  req.once('end', done).once('close', done).once('error', done)
  req.on('data', () => {})
  req.resume()
}

