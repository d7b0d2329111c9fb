import type { IncomingMessage, ServerResponse } from 'node:http'
import { toTable, wantsTable } from '../table.js'
import { ApiError, type ObjectStore, type ResourceType, type WatchEvent } from '../types.js'
import { flag, intParam } from './http.js'

/**
 * A watch over HTTP (issue 10): one JSON event per line on a chunked 200 response, as the real server streams
 * them. A too-old `resourceVersion` is reported the way the real server reports it on a watch — a 200 carrying
 * one ERROR event with the 410 `Status`, then the end of the stream — so that clients relist. The stream ends
 * after `timeoutSeconds` (default: 30 minutes, the real server's `--min-request-timeout` scale).
 */
export function streamWatch(store: ObjectStore, type: ResourceType, namespace: string | undefined, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): void {
  const table = wantsTable(req.headers.accept)
  // Headers go out with the first event or right after the watch starts, so that a bad selector is still a plain 400.
  const start = (): void => {
    if (!res.headersSent) res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache, private' })
  }
  const write = (e: WatchEvent): void => {
    start()
    const object = table && e.type !== 'ERROR' && e.type !== 'BOOKMARK' ? toTable(type, [e.object], e.object.metadata.resourceVersion ?? '', q.get('includeObject') ?? undefined) : e.object
    res.write(`${JSON.stringify({ type: e.type, object })}\n`)
  }
  let stop: (() => void) | undefined
  let timer: NodeJS.Timeout | undefined
  const end = (): void => {
    stop?.()
    stop = undefined
    if (timer !== undefined) clearTimeout(timer)
    if (!res.writableEnded) res.end()
  }
  res.on('close', end)
  const timeout = intParam(q, 'timeoutSeconds') ?? 1800
  try {
    stop = store.watch(type, {
      namespace,
      labelSelector: q.get('labelSelector') ?? undefined,
      fieldSelector: q.get('fieldSelector') ?? undefined,
      resourceVersion: q.get('resourceVersion') ?? undefined,
      allowWatchBookmarks: flag(q, 'allowWatchBookmarks'),
    }, write)
  } catch (err) {
    if (!(err instanceof ApiError) || err.code !== 410) throw err
    write({ type: 'ERROR', object: err.status() })
    end()
    return
  }
  if (res.writableEnded) { end(); return }
  start()
  res.flushHeaders()
  timer = setTimeout(end, timeout * 1000)
  timer.unref()
}
