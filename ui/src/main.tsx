import { render } from 'preact'
import { useCallback, useEffect, useRef, useState } from 'preact/hooks'
import { allFunctions, ApiError, get, setToken, Unauthorized, type FunctionView, type PlatformEvent, type PoolsAnswer, type StatsAnswer } from './api'
import { FunctionPanel } from './function-panel'
import { Events, FunctionsTable, Pools, TokenPrompt } from './views'
import './style.css'

/** How often the page asks the platform again: the pools and charts follow it without a reload. */
const POLL_MS = 1000
/** The charts' window: the last 5 minutes of 5 s buckets. */
const WINDOW_S = 300
const EVENTS_KEPT = 200

interface Snapshot {
  functions: FunctionView[]
  pools: PoolsAnswer
  stats: StatsAnswer
  at: number
}

function App() {
  const [snap, setSnap] = useState<Snapshot | undefined>(undefined)
  const [events, setEvents] = useState<PlatformEvent[]>([])
  const [selected, setSelected] = useState<string | undefined>(undefined)
  const [auth, setAuth] = useState<'ok' | 'needed' | 'refused'>('ok')
  const [error, setError] = useState<string | undefined>(undefined)
  const lastEvent = useRef(0)
  const [generation, setGeneration] = useState(0)

  useEffect(() => {
    if (auth !== 'ok') return
    let stopped = false
    let timer: ReturnType<typeof setTimeout> | undefined
    const tick = async (): Promise<void> => {
      try {
        const [fns, pools, stats, ev] = await Promise.all([
          allFunctions(),
          get<PoolsAnswer>('/v1/pools'),
          get<StatsAnswer>(`/v1/stats?window=${WINDOW_S}`),
          get<{ events: PlatformEvent[] }>(`/v1/events?since=${lastEvent.current}&limit=${EVENTS_KEPT}`),
        ])
        if (stopped) return
        const functions = fns.slice().sort((a, b) => a.name.localeCompare(b.name))
        setSnap({ functions, pools, stats, at: Date.now() })
        if (ev.events.length > 0) {
          lastEvent.current = ev.events[ev.events.length - 1]!.id
          setEvents((old) => [...old, ...ev.events].slice(-EVENTS_KEPT))
        }
        setSelected((s) => s !== undefined && functions.some((f) => f.name === s) ? s : functions[0]?.name)
        setError(undefined)
      } catch (err) {
        if (stopped) return
        if (err instanceof Unauthorized) {
          setAuth(sessionStorage.getItem('kindling.token') === null ? 'needed' : 'refused')
          return
        }
        setError(err instanceof ApiError ? `${err.code ?? err.status}: ${err.message}` : `the platform does not answer (${(err as Error).message})`)
      }
      if (!stopped) timer = setTimeout(() => void tick(), POLL_MS)
    }
    void tick()
    return () => {
      stopped = true
      if (timer !== undefined) clearTimeout(timer)
    }
  }, [auth, generation])

  const onToken = useCallback((value: string) => {
    setToken(value)
    setAuth('ok')
    setGeneration((g) => g + 1)
  }, [])

  if (auth !== 'ok') return <TokenPrompt refused={auth === 'refused'} onToken={onToken} />

  const fn = snap?.functions.find((f) => f.name === selected)
  return (
    <div class="page">
      <header>
        <h1>Kindling</h1>
        <span class="muted" data-testid="updated">{snap === undefined ? 'loading…' : `updated ${new Date(snap.at).toLocaleTimeString()}`}</span>
        {error !== undefined && <span class="error" role="alert">{error}</span>}
      </header>
      <main>
        <section class="functions" aria-label="Functions">
          <h2>Functions</h2>
          <FunctionsTable functions={snap?.functions ?? []} selected={selected} onSelect={setSelected} />
        </section>
        <section class="pools" aria-label="Pools">
          <h2>Pools</h2>
          {snap !== undefined && <Pools pools={snap.pools} functions={snap.functions} />}
        </section>
        <section class="detail" aria-label="Function detail">
          {fn === undefined || snap === undefined
            ? <p class="muted">No function deployed yet: <code>kindling fn deploy NAME FILE</code>.</p>
            : <FunctionPanel fn={fn} stats={snap.stats} key={fn.name} />}
        </section>
        <section class="events" aria-label="Events">
          <h2>Events</h2>
          <Events events={events} />
        </section>
      </main>
    </div>
  )
}

render(<App />, document.getElementById('app')!)
