import { useMemo, useRef } from 'preact/hooks'
import type uPlot from 'uplot'
import { START_KINDS, type FunctionView, type LoadGuardState, type StatsAnswer } from './api'
import { bars, Chart } from './chart'
import { LogsTail } from './logs'

const KIND_COLOURS: Record<string, string> = { warm: '#3fa96b', prewarmed: '#4c8fd6', specialized: '#d6a54c', cold: '#d65c4c' }

/** One function: its numbers over the window as charts, its load-guard state, its logs. */
export function FunctionPanel({ fn, stats }: { fn: FunctionView; stats: StatsAnswer }) {
  const s = stats.functions[fn.name]
  const charts = useMemo(() => {
    const buckets = s?.buckets ?? []
    const x = buckets.map((b) => b.t / 1000)
    // The last bucket is still filling: its rate is over the time it has had so far.
    const seconds = buckets.map((b, i) => i === buckets.length - 1 ? Math.max(1, (stats.now - b.t) / 1000) : stats.bucketMs / 1000)
    const rate = buckets.map((b, i) => b.calls / seconds[i]!)
    const errRate = buckets.map((b, i) => b.errors / seconds[i]!)
    const p50 = buckets.map((b) => b.p50Ms)
    const p99 = buckets.map((b) => b.p99Ms)
    // Stacked: each series is the sum of itself and those below it, drawn top first so lower ones cover it.
    const stacked: number[][] = []
    let acc = buckets.map(() => 0)
    for (const k of START_KINDS) {
      acc = acc.map((v, i) => v + buckets[i]!.starts[k])
      stacked.push(acc)
    }
    return {
      calls: [x, rate, errRate] as uPlot.AlignedData,
      latency: [x, p50, p99] as uPlot.AlignedData,
      starts: [x, ...stacked.slice().reverse()] as uPlot.AlignedData,
      raw: START_KINDS.slice().reverse().map((k) => buckets.map((b) => b.starts[k])),
    }
  }, [s, stats.now, stats.bucketMs])

  const callSeries = useMemo<uPlot.Series[]>(() => [
    {},
    { label: 'calls/s', stroke: '#4c8fd6', width: 2, fill: '#4c8fd622', value: (_u, v) => fmt(v, 2) },
    { label: 'errors/s', stroke: '#d65c4c', width: 2, value: (_u, v) => fmt(v, 2) },
  ], [])
  const latencySeries = useMemo<uPlot.Series[]>(() => [
    {},
    { label: 'p50 ms', stroke: '#3fa96b', width: 2, spanGaps: false, points: { show: true, size: 5 }, value: (_u, v) => fmt(v, 1) },
    { label: 'p99 ms', stroke: '#d6a54c', width: 2, spanGaps: false, points: { show: true, size: 5 }, value: (_u, v) => fmt(v, 1) },
  ], [])
  // The legend shows each kind's own count, not the stacked sum.
  const raw = useRef<number[][]>([])
  raw.current = charts.raw
  const startSeries = useMemo<uPlot.Series[]>(() => [
    {},
    ...START_KINDS.slice().reverse().map((k, si): uPlot.Series => ({
      label: k, stroke: KIND_COLOURS[k], fill: KIND_COLOURS[k], paths: bars, points: { show: false },
      value: (_u, _v, _s, idx) => idx === null ? '–' : String(raw.current[si]?.[idx] ?? 0),
    })),
  ], [])

  const t = s?.totals
  return (
    <div data-testid="function-panel">
      <h2>{fn.name} <span class="muted">v{fn.version} · {fn.runtime} · {fn.mode}</span></h2>
      <div class="tiles">
        <Tile label={`calls (${Math.round(stats.windowMs / 60000)} min)`} value={t?.calls ?? 0} testId="calls-total" />
        <Tile label="errors" value={t?.errors ?? 0} testId="errors-total" />
        <Tile label="p50" value={t?.p50Ms == null ? '–' : `${fmt(t.p50Ms, 1)} ms`} testId="p50" />
        <Tile label="p99" value={t?.p99Ms == null ? '–' : `${fmt(t.p99Ms, 1)} ms`} testId="p99" />
        {START_KINDS.map((k) => <Tile key={k} label={k} value={t?.starts[k] ?? 0} testId={`starts-${k}`} />)}
      </div>
      <div class="charts">
        <Chart title="Call rate" series={callSeries} data={charts.calls} testId="chart-calls" />
        <Chart title="Latency" series={latencySeries} data={charts.latency} yLabel="ms" testId="chart-latency" />
        <Chart title="Start kinds (calls per 5 s)" series={startSeries} data={charts.starts} testId="chart-starts" />
      </div>
      <LoadGuard state={fn.status.loadGuard} />
      <LogsTail fn={fn.name} />
    </div>
  )
}

function Tile({ label, value, testId }: { label: string; value: string | number; testId: string }) {
  return (
    <div class="tile">
      <div class="tile-value" data-testid={testId}>{value}</div>
      <div class="tile-label">{label}</div>
    </div>
  )
}

function LoadGuard({ state }: { state: LoadGuardState | undefined }) {
  return (
    <section aria-label="Load guard" data-testid="loadguard">
      <h3>Load guard</h3>
      {state === undefined ? <p class="muted">off (no writable cgroup hierarchy, or KINDLING_LOADGUARD_ENABLED=false)</p> : (
        <>
          <p>
            level <b class={`level level-${state.level}`} data-testid="loadguard-level">{state.level}</b>
            {state.quarantined && <b class="level level-quarantined"> quarantined</b>}
            {' · '}range {state.range.learned ? 'learned' : `learning (${state.range.samples} samples)`}: cpu mean {fmt(state.range.cpuMean, 2)}, upper {fmt(state.range.cpuUpper, 2)}
          </p>
          {state.instances.length > 0 && (
            <table>
              <thead><tr><th>instance</th><th>cpu</th><th>memory</th><th>pids</th><th></th></tr></thead>
              <tbody>
                {state.instances.map((i) => (
                  <tr key={i.id}>
                    <td><code>{i.id}</code></td>
                    <td>{fmt(i.cpuRatio, 2)}</td>
                    <td>{(i.memoryBytes / 1048576).toFixed(1)} MiB</td>
                    <td>{i.pids}</td>
                    <td>{i.throttledToCores !== undefined ? `throttled to ${i.throttledToCores} cores` : ''}{i.quarantined ? ' quarantined' : ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  )
}

function fmt(v: number | null | undefined, digits: number): string {
  return v == null ? '–' : v.toFixed(digits).replace(/\.?0+$/, '') || '0'
}
