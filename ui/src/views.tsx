import { useState } from 'preact/hooks'
import type { FunctionView, PlatformEvent, PoolsAnswer } from './api'

export function FunctionsTable({ functions, selected, onSelect }: { functions: FunctionView[]; selected: string | undefined; onSelect: (name: string) => void }) {
  if (functions.length === 0) return <p class="muted">none deployed</p>
  return (
    <table data-testid="functions">
      <thead>
        <tr><th>name</th><th>version</th><th>runtime</th><th>mode</th><th>updated</th></tr>
      </thead>
      <tbody>
        {functions.map((f) => (
          <tr key={f.name} class={f.name === selected ? 'selected' : ''} data-testid={`fn-row-${f.name}`} aria-selected={f.name === selected} onClick={() => onSelect(f.name)}>
            <td><button type="button" class="link" onClick={() => onSelect(f.name)}>{f.name}</button></td>
            <td>v{f.version}</td>
            <td>{f.runtime}</td>
            <td>{f.mode}</td>
            <td title={f.updatedAt}>{ago(f.updatedAt)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

/** Generic pools per runtime, prewarm pools per function, the router's instances per function, the start gate. */
export function Pools({ pools, functions }: { pools: PoolsAnswer; functions: FunctionView[] }) {
  const generic = pools.pools.filter((p) => p.kind === 'generic')
  const prewarm = pools.pools.filter((p) => p.kind === 'prewarm')
  const routes = new Map(pools.functions.map((r) => [r.function, r]))
  return (
    <div data-testid="pools">
      <p class="gate" data-testid="starts">
        starts: <b>{pools.starts.running}</b> running, <b>{pools.starts.waiting}</b> waiting, limit {pools.starts.limit}
      </p>
      <table>
        <thead><tr><th>pool</th><th>target</th><th>idle</th><th>starting</th></tr></thead>
        <tbody>
          {[...generic, ...prewarm].map((p) => (
            <tr key={p.pool} data-testid={`pool-${p.pool}`}>
              <td>{p.kind === 'generic' ? `generic · ${p.runtime}` : `prewarm · ${p.function ?? ''} v${p.version ?? ''}`}</td>
              <td>{p.target}</td>
              <td><Dots n={p.idle} cls="idle" /> {p.idle}</td>
              <td><Dots n={p.starting} cls="starting" /> {p.starting}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Instances per function</h3>
      {functions.length === 0 ? <p class="muted">none</p> : (
        <table>
          <thead><tr><th>function</th><th>states</th><th>routed</th><th>busy</th><th>waiting</th></tr></thead>
          <tbody>
            {functions.map((f) => {
              const r = routes.get(f.name)
              const states = Object.entries(f.status.instances)
              return (
                <tr key={f.name} data-testid={`instances-${f.name}`}>
                  <td>{f.name}</td>
                  <td data-testid={`states-${f.name}`}>
                    {states.length === 0 ? <span class="muted">none</span> : states.map(([state, n]) => <span key={state} class={`state state-${state}`}>{state} {n}</span>)}
                  </td>
                  <td data-testid={`routed-${f.name}`}>{r?.instances ?? 0}</td>
                  <td>{r?.busy ?? 0}</td>
                  <td>{r?.waiting ?? 0}{(r?.pending ?? 0) > 0 ? ` (+${r?.pending} starting)` : ''}</td>
                </tr>
              )
            })}
          </tbody>
        </table>
      )}
    </div>
  )
}

function Dots({ n, cls }: { n: number; cls: string }) {
  const shown = Math.min(n, 12)
  return <span class={`dots ${cls}`} aria-hidden="true">{'●'.repeat(shown)}{n > shown ? '…' : ''}</span>
}

export function Events({ events }: { events: PlatformEvent[] }) {
  if (events.length === 0) return <p class="muted">no events</p>
  return (
    <ol class="events-list" data-testid="events" reversed>
      {events.slice().reverse().slice(0, 50).map((e) => (
        <li key={e.id} class={e.type.startsWith('loadguard-') ? 'guard' : e.type.startsWith('instance-') || e.type.endsWith('failed') ? 'bad' : ''}>
          <time dateTime={e.at}>{new Date(e.at).toLocaleTimeString()}</time>
          <span class="type">{e.type}</span>
          {e.function !== undefined && <span class="fn">{e.function}</span>}
          <span class="msg">{e.message}</span>
        </li>
      ))}
    </ol>
  )
}

export function TokenPrompt({ refused, onToken }: { refused: boolean; onToken: (token: string) => void }) {
  const [value, setValue] = useState('')
  return (
    <div class="page" role="dialog" aria-label="API token">
      <form class="token" onSubmit={(e) => { e.preventDefault(); if (value !== '') onToken(value) }}>
        <h1>Kindling</h1>
        <p>This platform's API needs a token (<code>KINDLING_API_TOKEN</code>).</p>
        {refused && <p class="error" role="alert">That token was refused.</p>}
        <label>
          API token
          <input type="password" autoComplete="off" value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} autoFocus />
        </label>
        <button type="submit">Connect</button>
        <p class="muted">Kept in this tab's session storage only.</p>
      </form>
    </div>
  )
}

export function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.round(s / 60)}m ago`
  if (s < 86400) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}
