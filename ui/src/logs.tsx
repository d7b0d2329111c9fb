import { useEffect, useRef, useState } from 'preact/hooks'
import { ApiError, get, type LogLine, type LogsAnswer } from './api'

const POLL_MS = 1000
const KEPT = 500

/**
 * The newest lines of a function's logs (`GET /v1/functions/:name/logs?after=SEQ`), followed while shown.
 * A platform without the logs endpoint (404) shows "no logs".
 */
export function LogsTail({ fn }: { fn: string }) {
  const [lines, setLines] = useState<LogLine[]>([])
  const [state, setState] = useState<'loading' | 'ok' | 'none' | 'error'>('loading')
  const [follow, setFollow] = useState(true)
  const pane = useRef<HTMLPreElement>(null)

  useEffect(() => {
    let stopped = false
    // The first read takes the newest lines; each next one what came after them.
    let after: number | undefined
    let timer: ReturnType<typeof setTimeout> | undefined
    setLines([])
    setState('loading')
    const tick = async (): Promise<void> => {
      try {
        const res = await get<LogsAnswer>(`/v1/functions/${encodeURIComponent(fn)}/logs?${after === undefined ? '' : `after=${after}&`}limit=200`)
        if (stopped) return
        const got = res.logs ?? []
        if (got.length > 0) {
          after = res.next ?? got[got.length - 1]!.seq
          setLines((old) => [...old, ...got].slice(-KEPT))
        } else if (typeof res.next === 'number') {
          after = res.next
        }
        setState('ok')
      } catch (err) {
        if (stopped) return
        setState(err instanceof ApiError && err.status === 404 ? 'none' : 'error')
      }
      if (!stopped) timer = setTimeout(() => void tick(), POLL_MS)
    }
    void tick()
    return () => {
      stopped = true
      if (timer !== undefined) clearTimeout(timer)
    }
  }, [fn])

  useEffect(() => {
    const el = pane.current
    if (follow && el !== null) el.scrollTop = el.scrollHeight
  }, [lines, follow])

  return (
    <section aria-label="Logs" class="logs">
      <h3>
        Logs
        <label class="follow"><input type="checkbox" checked={follow} onChange={(e) => setFollow((e.target as HTMLInputElement).checked)} /> follow</label>
      </h3>
      {lines.length === 0
        ? <p class="muted" data-testid="logs-empty">{state === 'loading' ? 'loading…' : state === 'error' ? 'logs unavailable' : 'no logs'}</p>
        : (
          <pre ref={pane} data-testid="logs">
            {lines.map((l) => (
              <div key={l.seq} class={`log log-${l.stream} log-${l.level}`}>
                <span class="muted">{time(l.t)} {l.instance.slice(-6)}</span> {l.msg}
              </div>
            ))}
          </pre>
        )}
    </section>
  )
}

function time(t: number): string {
  const d = new Date(t)
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleTimeString()
}
