import type { ChaosRow } from './chaos.js'
import type { ColdKind, ColdResult } from './cold.js'
import type { LoadResult } from './load.js'
import type { SelfTime } from './profile.js'
import type { DefaultModes } from './modes.js'
import type { GuardAction, NoisyResult } from './noisy.js'
import type { RssRow } from './rss.js'
import type { ScaleResult } from './scale.js'
import type { StartsRow } from './starts.js'
import type { BuildsResult } from './builds.js'
import type { AsyncResult } from './async.js'
import type { WorkflowsResult } from './workflows.js'
import { fmt, ms, ratio, round, table, times, type Latency } from './stats.js'
import type { ModeRow, WarmRow } from './warm.js'

export const SECTIONS = ['warm', 'floor', 'cold', 'ephemeral', 'modes', 'rss', 'noisy', 'docker', 'kubernetes', 'cluster', 'chaos', 'starts', 'builds', 'async', 'workflows', 'scale'] as const
/** Sections a bench without --only runs: `scale` (minutes, a thousand functions) only when asked for. */
export const DEFAULT_SECTIONS: readonly Section[] = SECTIONS.filter((s) => s !== 'scale')
export type Section = typeof SECTIONS[number]

/** Everything one run measured: written as JSON, printed as tables. */
export interface Results {
  startedAt: string
  finishedAt?: string
  seconds?: number
  flags: { quick: boolean; only: Section[]; backend: string; profile: boolean; prewarms?: number[] }
  machine: { cpus: number; cpu: string; node: string; kernel: string; commit: string; loadavgStart: number; loadavgEnd?: number }
  settings: { durationS: number; warmupS: number; quietMs: number; coldFunctions: number; rssInstances: number; helloSpec: Record<string, unknown> }
  notes: string[]
  bare: {
    rssGenericMb: number
    rssLoadedMb: number
    loadMs: number
    byConnections: Record<string, LoadResult>
    /** Bare equivalents of each start kind, from fresh servers (see bareColdStarts). */
    starts?: Record<ColdKind, Latency>
  }
  warm?: { rows: WarmRow[]; profile?: { file: string; idlePct: number; categories: Array<{ category: string; pct: number }>; top: SelfTime[] } }
  cold?: { warm: Latency; kinds: ColdResult[] }
  ephemeral?: { bare: LoadResult; rows: ModeRow[] }
  /** The modes as deployed by default, and the ephemeral + prewarm sweep (modes.ts). */
  modes?: DefaultModes
  rss?: RssRow[]
  noisy?: NoisyResult
  docker?: { warm: Latency; load: LoadResult; kinds: ColdResult[] }
  /** The kubernetes backend against `kindling kube-sim` on this host (issue 10). */
  kubernetes?: { warm: Latency; load: LoadResult; kinds: ColdResult[] }
  /** Issue 13: a cluster router (role router) in front of a controller (role controller), process backend, one host. */
  cluster?: { warm: Latency; load: LoadResult; kinds: ColdResult[] }
  chaos?: ChaosRow
  /** Start rate and latency by how many starts run at once, per backend (starts.ts). */
  starts?: StartsRow[]
  /** Build time cold vs reused, first calls of a function with a dependency (builds.ts). */
  builds?: BuildsResult
  /** Async invocations on a redis-server of the bench's own: enqueue → start, throughput (async.ts). */
  async?: AsyncResult
  /** Workflows on the file store and on Redis: per-step overhead against a direct call, a 100-step run (workflows.ts). */
  workflows?: WorkflowsResult
  /** A thousand functions, prewarmed instances, a restart (scale.ts, issue 16). */
  scale?: ScaleResult
  errors: Array<{ section: string; message: string }>
  /** Seconds each section took. */
  timings: Record<string, number>
  summary: Array<{ target: string; measured: string; pass: boolean | null }>
}

/** Errors and non-2xx answers of a run, with their status codes. */
function failed(r: LoadResult): string {
  const codes = Object.entries(r.byStatus).filter(([c]) => !c.startsWith('2')).map(([c, n]) => `${c}:${n}`)
  const parts = [...(r.errors > 0 ? [`err:${r.errors}`] : []), ...codes]
  return parts.length === 0 ? '0' : parts.join(' ')
}

/** How busy the machine was (other processes) just before a run. */
function busy(r: LoadResult): string {
  return r.busyBeforePct === undefined ? '-' : `${Math.round(r.busyBeforePct)}%`
}


function bareRps(r: Results, connections: number): number | undefined {
  return r.bare.byConnections[String(connections)]?.rps
}

/** The tables of a run. */
export function render(r: Results): string {
  const out: string[] = []
  out.push(`Kindling bench — ${r.startedAt} — ${r.machine.cpus} × ${r.machine.cpu}, node ${r.machine.node}, kernel ${r.machine.kernel}, commit ${r.machine.commit}`)
  out.push(`machine load average (1 min) at start ${r.machine.loadavgStart.toFixed(2)}, at end ${(r.machine.loadavgEnd ?? Number.NaN).toFixed(2)}; "busy before" = CPU use by anything just before a run (waited up to ${r.settings.quietMs / 1000} s for < 15%)`)
  out.push(`load: autocannon in a child process, ${r.settings.warmupS} s warm-up + ${r.settings.durationS} s per row; bare = runtimes/node/server.mjs on a Unix socket, no platform`)
  for (const n of r.notes) out.push(`note: ${n}`)
  out.push(`bare server RSS: ${fmt(r.bare.rssGenericMb)} MB generic, ${fmt(r.bare.rssLoadedMb)} MB with hello loaded (load ${ms(r.bare.loadMs)})`)
  const bs = r.bare.starts
  if (bs !== undefined) {
    out.push(`bare start kinds (fresh servers, p50): first call ${ms(bs.prewarmed.p50)} (≙ prewarmed), load + first call ${ms(bs.specialized.p50)} (≙ specialized), spawn + load + first call ${ms(bs.cold.p50)} (≙ cold)`)
  }

  if (r.warm !== undefined) {
    const rows = r.warm.rows.map((w) => {
      const bare = r.bare.byConnections[String(w.connections)]
      return [w.target, w.connections, round(w.result.rps, 0), ms(w.result.latency.p50), ms(w.result.latency.p99),
        w.target === 'bare' ? '1.00x' : times(ratio(w.result.rps, bare?.rps)),
        w.target === 'bare' ? '-' : ms(w.result.latency.p50 - (bare?.latency.p50 ?? Number.NaN)), failed(w.result), busy(w.result)]
    })
    out.push(table('1. warm path: hello, persistent (router: 1 instance, concurrency 64)', ['target', 'conns', 'rps', 'p50', 'p99', 'rps / bare', '+p50 vs bare', 'failed', 'busy before'], rows))
    const vs = routerVsFloor(r)
    if (vs !== undefined) {
      out.push('  floor: the least a Node router does — a node:http server forwarding to the same bare server through an undici Pool (bench/floor.ts), its own process')
      out.push(`  router vs floor: ${times(vs.rps32)} of the floor's rps @32, p50 @1 ${signedMs(vs.p50At1)} against the floor's`)
    }
    if (r.warm.profile !== undefined) {
      const prof = r.warm.profile
      const top = prof.top.filter((s) => s.own).slice(0, 12)
      out.push(`\nrouter CPU profile @32 conns: ${prof.file}; the platform process was idle ${prof.idlePct.toFixed(0)}% of the time`)
      out.push(table('router CPU profile: busy time by category', ['category', '% of busy'], prof.categories.slice(0, 12).map((c) => [c.category, `${c.pct.toFixed(1)}%`])))
      out.push(table('router CPU profile: top self time, everything', ['function', 'where', 'category', 'self % of all'], prof.top.filter((s) => s.category !== 'idle').slice(0, 12).map((s) => [s.fn, s.where, s.category, `${s.pct.toFixed(1)}%`])))
      out.push(table('router CPU profile: top self time, platform code', ['function', 'where', 'self % of all'], top.map((s) => [s.fn, s.where, `${s.pct.toFixed(2)}%`])))
    }
  }
  const coldTable = (title: string, warm: Latency, kinds: ColdResult[]): string => {
    const bareOf = (k: ColdKind): Latency | undefined => r.bare.starts?.[k]
    return table(title,
      ['kind', 'fns', 'p50', 'p99', 'max', 'p50 − warm', '2nd call, same pause', 'bare equivalent p50', 'p50 / bare', 'loop stall p50 / max', 'header mismatches'],
      [['warm (same client)', warm.n, ms(warm.p50), ms(warm.p99), ms(warm.max), '-', '-', '-', '-', '-', '-'],
        ...kinds.map((k) => [k.kind, k.functions, ms(k.latency.p50), ms(k.latency.p99), ms(k.latency.max), ms(k.latency.p50 - warm.p50),
          k.secondCall === undefined ? '-' : ms(k.secondCall.p50),
          ms(bareOf(k.kind)?.p50 ?? Number.NaN), times(ratio(k.latency.p50, bareOf(k.kind)?.p50)), `${fmt(k.loopStall.p50)} / ${ms(k.loopStall.max)}`,
          k.mismatches === 0 ? '0' : `${k.mismatches} (${Object.entries(k.mismatchKinds).map(([a, b]) => `${a}:${b}`).join(' ')})${k.failures > 0 ? `, ${k.failures} failed` : ''}`])])
  }
  if (r.cold !== undefined) out.push(coldTable('2. cold start per kind (process backend): first call of distinct functions, sequential', r.cold.warm, r.cold.kinds))
  if (r.cold !== undefined) out.push('  "2nd call, same pause": the same function called again after the same settle pause as its first call — warm, measured like the first calls (a machine idle for a moment answers slower than a hot loop)')
  if (r.ephemeral !== undefined) {
    const e = r.ephemeral
    out.push(table('3. modes at 4 connections (prewarm 4, maxInstances 8, concurrency 1)', ['target', 'conns', 'rps', 'p50', 'p99', 'rps / bare', 'failed', 'busy before'],
      [['bare', 4, round(e.bare.rps, 0), ms(e.bare.latency.p50), ms(e.bare.latency.p99), '1.00x', failed(e.bare), busy(e.bare)],
        ...e.rows.map((m) => [m.mode, m.connections, round(m.result.rps, 0), ms(m.result.latency.p50), ms(m.result.latency.p99), times(ratio(m.result.rps, e.bare.rps)), failed(m.result), busy(m.result)])]))
  }
  if (r.modes !== undefined) out.push(modesTables(r, r.modes))
  if (r.rss !== undefined) {
    out.push(table('4. memory per idle instance (process backend)', ['instance', 'count', 'node RSS / instance', 'node PSS', 'node private', 'wrappers RSS', 'RSS vs bare'],
      [...r.rss.map((x) => [x.what, x.instances, `${fmt(x.nodeMb)} MB`, `${fmt(x.nodePssMb)} MB`, `${fmt(x.nodePrivateMb)} MB`, `${fmt(x.wrapperMb)} MB`, times(ratio(x.nodeMb, x.what === 'generic' ? r.bare.rssGenericMb : r.bare.rssLoadedMb))]),
        ['bare (generic / loaded)', 1, `${fmt(r.bare.rssGenericMb)} / ${fmt(r.bare.rssLoadedMb)} MB`, '-', '-', '-', '1.00x']]))
    out.push('  RSS counts the node binary\'s shared pages in full for every instance; PSS shares them out; private is what one more instance costs')
  }
  if (r.noisy !== undefined) out.push(noisyTable(r.noisy))
  /** Another backend's two tables: its warm path at 32 connections beside bare, then its cold starts per kind. */
  const backendTables = (n: string, backend: string, what: string, x: { warm: Latency; load: LoadResult; kinds: ColdResult[] }): void => {
    const b32 = r.bare.byConnections['32']
    out.push(table(`${n}a. ${backend} backend${what}: warm path @32 connections`, ['target', 'conns', 'rps', 'p50', 'p99', 'rps / bare', 'failed', 'busy before'],
      [['bare', 32, round(b32?.rps ?? Number.NaN, 0), ms(b32?.latency.p50 ?? Number.NaN), ms(b32?.latency.p99 ?? Number.NaN), '1.00x', b32 === undefined ? '-' : failed(b32), b32 === undefined ? '-' : busy(b32)],
        [`router (${backend})`, 32, round(x.load.rps, 0), ms(x.load.latency.p50), ms(x.load.latency.p99), times(ratio(x.load.rps, b32?.rps)), failed(x.load), busy(x.load)]]))
    out.push(coldTable(`${n}b. ${backend} backend${what}: cold start per kind`, x.warm, x.kinds))
  }
  if (r.docker !== undefined) backendTables('5', 'docker', '', r.docker)
  if (r.kubernetes !== undefined) {
    backendTables('5k', 'kubernetes', ' (kube-sim on this host)', r.kubernetes)
    out.push('  specialized = a Ready pool pod claimed by relabelling + its code fetched (sha256-checked) + loaded; cold = a bare pod scheduled, started, Ready, then fetched and loaded.')
    out.push('  The stand-in starts a pod as a local process (no image pull, no container runtime, API and kubelet in one process): its cold starts are a floor, not a real cluster\'s; the claim, fetch and load are the real work')
  }
  if (r.cluster !== undefined) {
    backendTables('5c', 'process', ' through a cluster router (KINDLING_ROLE=router → controller over HTTP)', r.cluster)
    out.push('  the router and the controller are two roles in this one process on the process backend: the warm path is the router\'s table → the instance; a miss is one HTTP round trip to the controller\'s executor')
  }
  if (r.chaos !== undefined) out.push(chaosTable(r.chaos))
  if (r.starts !== undefined && r.starts.length > 0) {
    out.push(table('8. instance starts by how many run at once (the platform\'s start gate lifted: the engine itself)', ['backend', 'at once', 'wall', 'slowest start', 'starts/s'],
      r.starts.map((s) => [s.backend, s.atOnce, ms(s.wallMs), ms(s.slowestMs), fmt(s.perSecond)])))
    out.push('  the start gate (KINDLING_MAX_STARTING) defaults: docker 2 per CPU (its rate stops growing there); process 8 per CPU (the slowest start stays far inside the start timeout, and under load the starts keep their share of the CPUs)')
  }
  if (r.async !== undefined) {
    const a = r.async
    out.push(table(`10. async invocations (redis-server, ${a.concurrency} workers; latencies one job at a time): ms`, ['what', 'p50', 'p99', 'max'], [
      ['enqueue (POST /async/fn → 202)', ms(a.enqueueMs.p50), ms(a.enqueueMs.p99), ms(a.enqueueMs.max)],
      ['enqueue → start (the platform\'s ms clock)', ms(a.queueMs.p50), ms(a.queueMs.p99), ms(a.queueMs.max)],
      ['sync call of the same function (baseline)', ms(a.syncMs.p50), ms(a.syncMs.p99), ms(a.syncMs.max)],
      ['deploy on replica A → routed on replica B (its preload included)', ms(a.replicationMs.p50), ms(a.replicationMs.p99), ms(a.replicationMs.max)],
    ]))
    out.push(`  throughput: ${fmt(a.jobsPerSecond)} jobs/s settled (${a.jobs} enqueued at once by 16 clients; first enqueue to last finish); enqueue p50 = ${fmt(a.enqueueMs.p50 / a.syncMs.p50)}× a sync call, enqueue → start p50 ${a.queueMs.p50 === 0 ? 'under the clock\'s 1 ms' : `= ${fmt(a.queueMs.p50 / a.syncMs.p50)}×`}`)
  }
  if (r.workflows !== undefined) {
    for (const [store, w] of [['file store', r.workflows.file], ['redis-server', r.workflows.redis]] as const) {
      if (w === undefined) continue
      out.push(table(`11. workflows (${store}, process backend; one at a time): ms`, ['what', 'p50', 'p99', 'max'], [
        ['direct call of the step\'s function (the router\'s in-process path)', ms(w.directMs.p50), ms(w.directMs.p99), ms(w.directMs.max)],
        ['the same call over HTTP (/fn)', ms(w.httpMs.p50), ms(w.httpMs.p99), ms(w.httpMs.max)],
        ['one-task run, POST /wf → answer', ms(w.oneStepRunMs.p50), ms(w.oneStepRunMs.p99), ms(w.oneStepRunMs.max)],
        [`${w.steps}-task run, POST /wf → answer`, ms(w.longRunMs.p50), ms(w.longRunMs.p99), ms(w.longRunMs.max)],
      ]))
      out.push(`  per task step: ${fmt(w.longRunMs.p50 / w.steps)} ms, of which ${fmt(w.perStepOverheadMs)} ms the engine's (making the step's log entries durable, bookkeeping) over the direct call; one-task run = ${fmt(w.oneStepRunMs.p50 / w.httpMs.p50)}× an HTTP call`)
    }
  }
  if (r.builds !== undefined) {
    const b = r.builds
    out.push(table(`9. builds (process backend, ${b.builds} functions, ms from a loopback registry): p50 / p90`, ['what', 'p50', 'p90'], [
      ['build (npm install in its build instance)', ms(b.buildMs.p50), ms(b.buildMs.p90)],
      ['deploy that builds (?wait=true)', ms(b.coldDeployMs.p50), ms(b.coldDeployMs.p90)],
      ['deploy whose build is reused', ms(b.reusedDeployMs.p50), ms(b.reusedDeployMs.p90)],
    ]))
    out.push(table('9b. first call of a function importing ms vs the same function without it', ['kind', 'with ms p50', 'without p50', 'with ms p90', 'without p90', 'not served as the kind'],
      (['prewarmed', 'specialized', 'cold'] as const).map((k) => {
        const f = b.firstCall[k]
        return [k, ms(f.withDependency.p50), ms(f.without.p50), ms(f.withDependency.p90), ms(f.without.p90), f.mismatches]
      })))
  }
  if (r.scale !== undefined) {
    const c = r.scale
    out.push(table(`10. scale (process backend): ${c.functions} functions, ${c.prewarmedFunctions} with prewarm 1`, ['what', 'measured'], [
      ['deploy p50 / p99 (4 at a time)', `${ms(c.deploy.p50)} / ${ms(c.deploy.p99)}`],
      ['prewarmed instances idle / target (after the deploys)', `${c.prewarmedIdle} / ${c.prewarmTarget}${Number.isNaN(c.fillS) ? ' (time bound reached)' : ` in ${fmt(c.fillS)} s`}`],
      ['memory (GET /v1/pools)', Object.entries(c.memory).map(([k, v]) => `${k} ${String(v)}`).join(', ')],
      ['platform heap per routed function (router table, executor, call stats)', `${fmt(c.tableBytesPerFunction / 1024)} KiB`],
      ['warm p50, one route / all routes', `${ms(c.warmOneRoute.p50)} / ${ms(c.warmWithAll.p50)} (${fmt((c.warmWithAll.p50 / c.warmOneRoute.p50 - 1) * 100)} %)`],
      ['platform RSS', `${c.rssMb} MB`],
      ['restart: API answers / pools full', `${fmt(c.restart.apiS)} s / ${c.restart.poolsFullS === null ? `not within the bound (${c.restart.poolsIdleAtBound} idle)` : `${fmt(c.restart.poolsFullS)} s`}`],
      ['first call of an unprewarmed function: cold on a quiet host / during the restart\'s refill', `${ms(c.coldQuietMs)} / ${ms(c.coldDuringRefillMs)} (${fmt(c.coldDuringRefillMs / c.coldQuietMs)}×, ${c.duringRefillStart})`],
    ]))
  }
  if (r.errors.length > 0) out.push(`\nsections that failed: ${r.errors.map((e) => `${e.section}: ${e.message.split('\n')[0] ?? ''}`).join('; ')}`)
  out.push(table('summary against targets', ['target', 'measured', 'result'], r.summary.map((s) => [s.target, s.measured, s.pass === null ? 'n/a' : s.pass ? 'PASS' : 'MISS'])))
  return out.join('\n')
}

/** PASS/MISS against the targets (never fails the run). */
export function summarize(r: Results): Results['summary'] {
  const out: Results['summary'] = []
  const row = (target: string, measured: string, pass: boolean | null): void => { out.push({ target, measured, pass }) }
  const warm = (target: string, c: number): LoadResult | undefined => r.warm?.rows.find((w) => w.target === target && w.connections === c)?.result
  const router32 = ratio(warm('router', 32)?.rps, bareRps(r, 32))
  const nginx32 = ratio(warm('nginx', 32)?.rps, bareRps(r, 32))
  row('router rps @32 ≥ nginx rps @32 (as ratios to bare)', Number.isFinite(router32) || Number.isFinite(nginx32) ? `router ${times(router32)} vs nginx ${times(nginx32)}` : '-',
    Number.isFinite(router32) && Number.isFinite(nginx32) ? router32 >= nginx32 : null)
  const added = (warm('router', 1)?.latency.p50 ?? Number.NaN) - (r.bare.byConnections['1']?.latency.p50 ?? Number.NaN)
  row('added p50 @1 conn ≤ 0.1 ms', ms(added), Number.isFinite(added) ? added <= 0.1 : null)
  const vs = routerVsFloor(r)
  if (vs !== undefined) {
    row('router rps @32 ≥ 0.9× floor rps @32', times(vs.rps32), Number.isFinite(vs.rps32) ? vs.rps32 >= 0.9 : null)
    row('router p50 @1 ≤ floor p50 + 0.05 ms', signedMs(vs.p50At1), Number.isFinite(vs.p50At1) ? vs.p50At1 <= 0.05 : null)
  }
  if (r.modes !== undefined) {
    const m = r.modes
    const seq = (mode: string): number => m.rows.find((x) => x.mode === mode && x.connections === 1)?.result.latency.p50 ?? Number.NaN
    const persistent = seq('persistent')
    const rec = seq('recycle') - persistent
    row('recycle sequential p50 ≤ persistent p50 + 0.2 ms (defaults, 1 conn)', Number.isFinite(rec) ? `${ms(seq('recycle'))} vs ${ms(persistent)} (${signedMs(rec)})` : '-',
      Number.isFinite(rec) ? rec <= 0.2 : null)
    const pacedRef = m.pacedPersistent?.result.latency.p50
    for (const sw of m.sweeps) {
      const kept = sw.steps.filter((x) => x.keepsUp)
      // The worst p50 over every rate the pool kept up with.
      const worst = kept.length === 0 ? Number.NaN : Math.max(...kept.map((x) => x.result.latency.p50)) - persistent
      row(`ephemeral + prewarm ${sw.prewarm} sequential p50 ≤ persistent p50 + 1 ms while the pool keeps up`,
        sw.steps.length === 0 ? '-' : kept.length === 0 ? `pool did not keep up at ${sw.steps[0]?.rate ?? '-'}/s` : `${signedMs(worst)} (worst p50 up to ${sw.keepsUpTo}/s${pacedRef === undefined ? '' : `, ${signedMs(worst + persistent - pacedRef)} vs persistent paced`}; pool ${sw.missAt === null ? 'kept up at every rate tried' : `no longer keeps up at ${sw.missAt}/s`})`,
        Number.isFinite(worst) ? worst <= 1 : null)
    }
  }
  const coldRows = (label: string, warmL: Latency | undefined, kinds: ColdResult[] | undefined): void => {
    const kind = (k: ColdKind): number => kinds?.find((x) => x.kind === k)?.latency.p50 ?? Number.NaN
    const w = warmL?.p50 ?? Number.NaN
    const pw = kind('prewarmed') - w
    const sp = kind('specialized') - w
    row(`${label}prewarmed p50 ≤ warm p50 + 1 ms`, Number.isFinite(pw) ? `+${ms(pw)}` : '-', Number.isFinite(pw) ? pw <= 1 : null)
    row(`${label}specialized p50 ≤ warm p50 + 10 ms`, Number.isFinite(sp) ? `+${ms(sp)}` : '-', Number.isFinite(sp) ? sp <= 10 : null)
  }
  coldRows('', r.cold?.warm, r.cold?.kinds)
  for (const x of r.rss ?? []) row(`idle ${x.what} node instance ≤ 40 MB RSS`, `${fmt(x.nodeMb)} MB`, Number.isFinite(x.nodeMb) ? x.nodeMb <= 40 : null)
  if (r.docker !== undefined) coldRows('docker: ', r.docker.warm, r.docker.kinds)
  if (r.kubernetes !== undefined) coldRows('kubernetes: ', r.kubernetes.warm, r.kubernetes.kinds)
  if (r.cluster !== undefined) coldRows('cluster router: ', r.cluster.warm, r.cluster.kinds)
  if (r.noisy !== undefined) {
    const p99 = (phase: string): number => r.noisy?.phases.find((x) => x.phase === phase)?.victim.latency.p99 ?? Number.NaN
    const on = ratio(p99('hog, guard on'), p99('alone'))
    const off = ratio(p99('hog, guard off'), p99('alone'))
    row('noisy: guard on keeps the victim\'s p99 within 1.5× of alone', `guard on ${times(on)} (guard off ${times(off)})${r.noisy.guardRan ? '' : ', no guard ran'}`,
      Number.isFinite(on) && r.noisy.guardRan ? on <= 1.5 : null)
  }
  if (r.chaos !== undefined) {
    const c = r.chaos
    const others = c.result.failures.length
    row('chaos: 0 hung, 0 failures beyond the killed calls\' own 502s, pools at target ≤ 1 s after',
      `${c.result.hung} hung, ${others} other failures, refill ${c.refillMs === null ? 'not within 30 s' : ms(c.refillMs)}`,
      c.result.hung === 0 && others === 0 && c.refillMs !== null && c.refillMs <= 1000)
  }
  if (r.scale !== undefined) {
    const c = r.scale
    row('scale: ≥ 1,000 idle prewarmed instances admitted by default', `${c.prewarmedIdle} of ${c.prewarmTarget}`, c.prewarmTarget >= 1000 ? c.prewarmedIdle >= 1000 : null)
    const slower = c.warmWithAll.p50 / c.warmOneRoute.p50 - 1
    row(`scale: warm p50 with ${c.functions} routes within 5 % of one route`, `${fmt(slower * 100)} %`, slower <= 0.05)
    row('scale: a call during the restart\'s refill ≤ 2× its cold figure on a quiet host', `${fmt(c.coldDuringRefillMs / c.coldQuietMs)}×`, c.coldDuringRefillMs <= 2 * c.coldQuietMs)
  }
  return out
}

function chaosTable(c: ChaosRow): string {
  const s = c.settings
  const r = c.result
  const others = new Map<string, number>()
  for (const f of r.failures) {
    const key = f.status === 0 ? `no answer${f.code === undefined ? '' : ` ${f.code}`}` : `${f.status} ${f.code ?? '?'}`
    others.set(key, (others.get(key) ?? 0) + 1)
  }
  const retries = Object.entries(c.retries).map(([k, v]) => `${k}:${v}`).join(' ') || '0'
  const title = `7. chaos (process backend): ${s.connections} keep-alive connections for ${s.durationS} s, one instance SIGKILLed every ${s.killEveryMs} ms; ` +
    Object.entries(s.functions).map(([name, spec]) => `${name} ${String(spec['mode'])}`).join(', ')
  const rows = [[r.calls, r.ok, r.kills, r.crashed, r.failures.length === 0 ? '0' : `${r.failures.length} (${[...others].map(([k, n]) => `${k}:${n}`).join(', ')})`, r.hung, retries,
    c.refillMs === null ? '> 30 s' : ms(c.refillMs)]]
  const notes = [
    'killed calls\' 502s: 502 KDL_ERR_FN_CRASHED / OOM naming an instance that was killed after the call was sent; every other non-2xx answer or lost call is an "other failure"',
    'retries: calls served on another instance because theirs died before the call reached it (kindling_call_retries_total); refill: end of the load → every pool at its target, nothing starting',
  ]
  return `${table(title, ['calls', '2xx', 'kills', 'killed calls\' 502s', 'other failures', 'hung', 'retries', 'refill'], rows)}\n${notes.map((x) => `  ${x}`).join('\n')}`
}

/** `throttle ×2 @1.4–1.6 s, quarantine @3.4 s`: the guard's actions of a phase, by kind, in seconds after its first load started. */
function actionsCell(actions: GuardAction[], guard: boolean): string {
  if (!guard) return 'off'
  if (actions.length === 0) return 'none'
  const kinds = new Map<string, number[]>()
  for (const a of actions) {
    const key = a.function === 'hog' ? a.type : `${a.function ?? '?'}: ${a.type}`
    kinds.set(key, [...(kinds.get(key) ?? []), a.atS])
  }
  return [...kinds].map(([k, at]) => {
    const span = at.length === 1 ? fmt(at[0] ?? Number.NaN) : `${fmt(Math.min(...at))}–${fmt(Math.max(...at))}`
    return `${k}${at.length > 1 ? ` ×${at.length}` : ''} @${span} s`
  }).join(', ')
}

function noisyTable(n: NoisyResult): string {
  const s = n.settings
  const alone = n.phases.find((x) => x.phase === 'alone')?.victim.latency.p99
  const rows = n.phases.map((x) => [x.phase, round(x.victim.rps, 0), ms(x.victim.latency.p50), ms(x.victim.latency.p99), times(ratio(x.victim.latency.p99, alone)),
    x.hog === undefined ? '-' : round(x.hog.rps, 1), x.hog === undefined ? '-' : ms(x.hog.latency.p50),
    `${failed(x.victim)} / ${x.hog === undefined ? '-' : failed(x.hog)}`, ms(x.victim.sendLag?.p99 ?? Number.NaN), `${Math.round(x.busyBeforePct)}%`,
    `${fmt(x.windowS[0])}–${fmt(x.windowS[1])} s`, actionsCell(x.actions, x.guard)])
  const title = `6. noisy neighbour (process backend): victim (hello, persistent) ${s.victimRate} req/s paced over ≤ ${s.victimConnections} conns; ` +
    `hog (spins ${s.hogSpinMs} ms a call, persistent, ${String(s.hog['maxInstances'])} instances × concurrency 1) @${s.hogConnections} conns`
  const on = n.phases.find((x) => x.phase === 'hog, guard on')
  const notes = [
    `guard on: interval ${s.guardIntervalMs} ms; the victim starts once the guard has throttled every hog instance (bounded poll of GET /v1/events, ≤ ${s.throttleWaitS} s): ` +
      (on?.allThrottledS === null || on?.allThrottledS === undefined ? 'not all throttled in time' : `first throttle @${fmt(on.firstThrottleS ?? Number.NaN)} s, all @${fmt(on.allThrottledS)} s`) +
      `${on?.hogLevelAtEnd === undefined ? '' : `; hog's guard level at the end: ${on.hogLevelAtEnd}`}; guard off: hog warm-up ${s.hogWarmupOffS} s`,
    'victim load paced (one request every 1/rate s, open loop); gen lag = how late its generator sent (its process not run in time); busy before = CPU use before the phase\'s load',
    'times in s after the phase\'s first load started; hog rps and p50 over the victim\'s window',
    ...(n.guardRan ? [] : ['no load guard ran (no writable cgroup hierarchy: not root?): the guard-on row is another guard-off row']),
  ]
  return `${table(title, ['phase', 'victim rps', 'p50', 'p99', 'p99 / alone', 'hog rps', 'hog p50', 'failed victim / hog', 'gen lag p99', 'busy before', 'victim window', 'guard actions'], rows)}\n${notes.map((x) => `  ${x}`).join('\n')}`
}

function signedMs(v: number): string {
  return Number.isFinite(v) ? `${v >= 0 ? '+' : '−'}${ms(Math.abs(v))}` : '-'
}

/** The router against the Node floor: rps ratio at 32 connections, p50 difference at 1. */
function routerVsFloor(r: Results): { rps32: number; p50At1: number } | undefined {
  const row = (target: string, c: number): LoadResult | undefined => r.warm?.rows.find((w) => w.target === target && w.connections === c)?.result
  if (row('floor', 1) === undefined && row('floor', 32) === undefined) return undefined
  return {
    rps32: ratio(row('router', 32)?.rps, row('floor', 32)?.rps),
    p50At1: (row('router', 1)?.latency.p50 ?? Number.NaN) - (row('floor', 1)?.latency.p50 ?? Number.NaN),
  }
}

function modesTables(r: Results, m: DefaultModes): string {
  const persistent = m.rows.find((x) => x.mode === 'persistent' && x.connections === 1)?.result.latency.p50 ?? Number.NaN
  const bareRows = [1, 32].map((c) => r.bare.byConnections[String(c)]).flatMap((b, i) => b === undefined ? [] : [[
    'bare', i === 0 ? 1 : 32, round(b.rps, 0), ms(b.latency.p50), ms(b.latency.p99), '1.00x', '-', '-', failed(b), busy(b)]])
  const rows = m.rows.map((x) => {
    const bare = r.bare.byConnections[String(x.connections)]
    const l = x.result.latency
    return [x.mode, x.connections, round(x.result.rps, 0), ms(l.p50), ms(l.p99), times(ratio(x.result.rps, bare?.rps)),
      ms(l.p50 - (bare?.latency.p50 ?? Number.NaN)), x.connections === 1 ? signedMs(l.p50 - persistent) : '-', failed(x.result), busy(x.result)]
  })
  const out = [table(`3b. modes as deployed by default (hello with only \`mode\` set: concurrency 1, maxInstances 10, prewarm 0); ${m.settings.warmupS} s warm-up (+1 s @32) + ${m.settings.durationS} s per row`,
    ['mode', 'conns', 'rps', 'p50', 'p99', 'rps / bare', '+p50 vs bare', 'p50 vs persistent', 'failed', 'busy before'], [...bareRows, ...rows])]
  out.push('  1 connection: sequential over one kept-alive connection, the next call sent as soon as the answer is in')
  const pp = m.pacedPersistent
  const ref = pp === undefined ? [] : [['persistent', `${pp.rate}/s`, pp.result.requests, ms(pp.result.latency.p50), ms(pp.result.latency.p99),
    signedMs(pp.result.latency.p50 - persistent), Object.entries(pp.result.byHeader ?? {}).map(([k, n]) => `${k}:${n}`).join(' ') || '-', '-', '-', failed(pp.result), ms(pp.result.sendLag?.p99 ?? Number.NaN)]]
  const steps = m.sweeps.flatMap((sw) => sw.steps.map((x) => [`ephemeral, prewarm ${sw.prewarm}`, `${x.rate}/s`, x.result.requests, ms(x.result.latency.p50), ms(x.result.latency.p99),
    signedMs(x.result.latency.p50 - persistent), Object.entries(x.starts).map(([k, n]) => `${k}:${n}`).join(' ') || '-', `${fmt(x.prewarmedPct)}%`,
    x.keepsUp ? 'yes' : 'no', failed(x.result), ms(x.result.sendLag?.p99 ?? Number.NaN)]))
  out.push(table(`3c. ephemeral + prewarm, paced over 1 connection at rising rates (${m.settings.warmupS} s warm-up + ≥ ${m.settings.stepS} s and ≥ ${m.settings.minCalls} calls per rate; pool refilled before each)`,
    ['function', 'rate', 'calls', 'p50', 'p99', 'p50 vs persistent', 'x-kindling-start', 'prewarmed', 'keeps up', 'failed', 'gen lag p99'], [...ref, ...steps]))
  out.push('  p50 vs persistent: against persistent\'s sequential p50 (3b); the persistent row here is the same function paced, a warm call after an idle gap')
  out.push(`  keeps up: ≥ ${m.settings.keepUpPct}% of the calls served by a prewarmed instance and none failed; the sweep stops at the first rate it does not`)
  for (const sw of m.sweeps) {
    out.push(`  prewarm ${sw.prewarm}: keeps up ${sw.keepsUpTo === null ? 'at no rate tried' : `up to ${sw.keepsUpTo}/s`}${sw.missAt === null ? '' : `, no longer at ${sw.missAt}/s`}`)
  }
  return out.join('\n')
}
