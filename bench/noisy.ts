// The noisy-neighbour section (issue 5, loadguard/README.md): a light victim function's latency at a fixed
// offered load, alone; beside a CPU hog kept busy by a second load generator with the load guard off; and
// the same with the guard on. Each guard setting is its own platform (process backend) in this process.
import { join } from 'node:path'
import { helloCode } from './bare.js'
import { startLoad, type LoadResult, type RunningLoad } from './load.js'
import { startPlatform, type BenchPlatform, type PlatformOptions } from './platform.js'
import { waitQuiet } from './proc.js'

/** What one run of the section used; written with the figures. */
export interface NoisySettings {
  /** Victim: offered load, requests per second over all its connections. */
  victimRate: number
  victimConnections: number
  hogConnections: number
  /** CPU time one hog call spins, ms. */
  hogSpinMs: number
  durationS: number
  /** Victim warm-up (its first answers are not counted), s. */
  warmupS: number
  /** Hog load before the victim starts, guard off (nothing to wait for), s. */
  hogWarmupOffS: number
  /** Longest wait for the guard to throttle every hog instance, guard on, s. */
  throttleWaitS: number
  guardIntervalMs: number
  victim: Record<string, unknown>
  hog: Record<string, unknown>
}

/** A load-guard event seen during a phase; times are seconds after the phase's first load started. */
export interface GuardAction {
  type: string
  function: string | undefined
  instance: string | undefined
  atS: number
  /** Where it fell: before the victim's measured window, in it, or after it. */
  window: 'warm-up' | 'measured' | 'after'
}

export interface NoisyPhase {
  phase: 'alone' | 'hog, guard off' | 'hog, guard on'
  guard: boolean
  victim: LoadResult
  hog?: LoadResult
  /** The victim's measured window, seconds after the phase's first load started. */
  windowS: [number, number]
  /** Seconds after the hog load started when the guard's first throttle of the hog came (null: none within the wait). */
  firstThrottleS?: number | null
  /** Seconds after the hog load started when every hog instance had been throttled (null: not within the wait). */
  allThrottledS?: number | null
  actions: GuardAction[]
  /** The hog's `status.loadGuard.level` when the phase ended (guard on). */
  hogLevelAtEnd?: string
  /** How busy the machine's CPUs were (other processes) before the phase's load started, %. */
  busyBeforePct: number
}

export interface NoisyResult {
  settings: NoisySettings
  /** In the order of the table: alone, guard off, guard on (run as alone, guard on, then guard off). */
  phases: NoisyPhase[]
  /** False when the platform found no writable cgroup hierarchy (not root): the "guard on" phase ran without a guard. */
  guardRan: boolean
}

export interface NoisyOptions {
  dataDir: string
  poolSize: number
  durationS: number
  warmupS: number
  quietMs: number
  progress(message: string): void
  /** Registers a platform's close for an interrupted run; the returned function unregisters it. */
  track(close: () => Promise<void>): () => void
}

const VICTIM_RATE = 200
const VICTIM_CONNECTIONS = 4
const HOG_CONNECTIONS = 8
const HOG_SPIN_MS = 30
const HOG_INSTANCES = 2
const HOG_WARMUP_OFF_S = 3
const THROTTLE_WAIT_S = 15
// Short enough that the guard's 5 samples to a throttle fit in the hog's warm-up (issue 5: act within the warm-up).
const GUARD_INTERVAL_MS = 200
const POLL_MS = 50
/** Longest wait, after the hog's load stops, for the calls it left queued in the router to finish. */
const DRAIN_MS = 15_000

function hogCode(spinMs: number): string {
  return `// noisy-neighbour hog\nexport default async function () {\n  const end = Date.now() + ${spinMs}\n  while (Date.now() < end) {}\n  return 'spun'\n}\n`
}

/** A small function that returns a short string; one instance takes every concurrent call of the victim. */
const VICTIM_SPEC = { code: helloCode('victim'), mode: 'persistent', prewarm: 1, concurrency: 8, maxInstances: 1 } as const
/** Spins the CPU on every call; prewarmed so its load meets running instances. */
const HOG_SPEC = { code: hogCode(HOG_SPIN_MS), mode: 'persistent', prewarm: HOG_INSTANCES, concurrency: 1, maxInstances: HOG_INSTANCES } as const

export async function measureNoisy(opts: NoisyOptions): Promise<NoisyResult> {
  const settings: NoisySettings = {
    victimRate: VICTIM_RATE,
    victimConnections: VICTIM_CONNECTIONS,
    hogConnections: HOG_CONNECTIONS,
    hogSpinMs: HOG_SPIN_MS,
    durationS: opts.durationS,
    warmupS: opts.warmupS,
    hogWarmupOffS: HOG_WARMUP_OFF_S,
    throttleWaitS: THROTTLE_WAIT_S,
    guardIntervalMs: GUARD_INTERVAL_MS,
    victim: { ...VICTIM_SPEC, code: undefined },
    hog: { ...HOG_SPEC, code: undefined },
  }
  // The guard-on platform first: the victim alone while the hog idles, then the hog hammered. Its throttles
  // and quarantine last a cool-down (60 s), so the guard-off phase gets a platform of its own.
  const [alone, on, guardRan] = await onPlatform(opts, 'guard-on', { KINDLING_LOADGUARD_INTERVAL_MS: GUARD_INTERVAL_MS }, async (p) =>
    [await phaseAlone(opts, p), await phaseHammered(opts, p, true), p.embedded.loadGuard !== undefined] as const)
  const off = await onPlatform(opts, 'guard-off', { KINDLING_LOADGUARD_ENABLED: 'false' }, (p) => phaseHammered(opts, p, false))
  return { settings, phases: [alone, off, on], guardRan }
}

/** A platform with the victim and the hog deployed and its pools settled, for the length of `fn`. */
async function onPlatform<T>(opts: NoisyOptions, name: string, overrides: PlatformOptions['overrides'], fn: (p: BenchPlatform) => Promise<T>): Promise<T> {
  opts.progress(`platform (process, ${name})`)
  const p = await startPlatform({ dataDir: join(opts.dataDir, name), backend: 'process', poolSize: opts.poolSize, overrides })
  const untrack = opts.track(() => p.close())
  try {
    await p.deploy('victim', VICTIM_SPEC)
    await p.deploy('hog', HOG_SPEC)
    await p.settle()
    return await fn(p)
  } finally {
    untrack()
    await p.close()
  }
}

function victimLoad(opts: NoisyOptions, p: BenchPlatform): RunningLoad {
  return startLoad({ url: `${p.url}/fn/victim`, connections: VICTIM_CONNECTIONS, rate: VICTIM_RATE, durationS: opts.durationS, warmupS: opts.warmupS })
}

async function phaseAlone(opts: NoisyOptions, p: BenchPlatform): Promise<NoisyPhase> {
  opts.progress(`victim alone, ${VICTIM_RATE} req/s (guard on, hog idle)`)
  const since = await lastEventId(p)
  const busyBeforePct = await waitQuiet(opts.quietMs)
  const t0 = Date.now()
  const victim = await victimLoad(opts, p).result
  const window: [number, number] = [opts.warmupS, opts.warmupS + victim.durationS]
  return { phase: 'alone', guard: true, victim, windowS: window, actions: await guardActions(p, since, t0, window), busyBeforePct }
}

/** The victim at its fixed rate while a second load generator keeps the hog's instances busy. */
async function phaseHammered(opts: NoisyOptions, p: BenchPlatform, guard: boolean): Promise<NoisyPhase> {
  opts.progress(`hog @${HOG_CONNECTIONS} conns, then victim ${VICTIM_RATE} req/s beside it (guard ${guard ? 'on' : 'off'})`)
  const since = await lastEventId(p)
  const busyBeforePct = await waitQuiet(opts.quietMs)
  const t0 = Date.now()
  // Nothing of the hog counts until mark(); the run's length only bounds it (stop() ends it).
  const hog = startLoad({ url: `${p.url}/fn/hog`, connections: HOG_CONNECTIONS, warmupS: THROTTLE_WAIT_S + opts.warmupS + opts.durationS + 10, durationS: 0 })
  let firstThrottleS: number | null | undefined
  let allThrottledS: number | null | undefined
  try {
    if (guard) {
      const seen = await waitForThrottles(p, since, t0, HOG_INSTANCES, THROTTLE_WAIT_S * 1000)
      firstThrottleS = seen.firstS
      allThrottledS = seen.allS
      if (allThrottledS === null) opts.progress(`the guard throttled ${seen.instances} of ${HOG_INSTANCES} hog instances within ${THROTTLE_WAIT_S} s`)
    } else {
      await new Promise((r) => setTimeout(r, HOG_WARMUP_OFF_S * 1000))
    }
    const startS = (Date.now() - t0) / 1000
    const markTimer = setTimeout(() => hog.mark(), opts.warmupS * 1000)
    let victim: LoadResult
    try {
      victim = await victimLoad(opts, p).result
    } finally {
      clearTimeout(markTimer)
    }
    const hogResult = await hog.stop()
    await drained(p, 'hog', DRAIN_MS)
    const window: [number, number] = [startS + opts.warmupS, startS + opts.warmupS + victim.durationS]
    const level = guard ? await hogLevel(p) : undefined
    return {
      phase: guard ? 'hog, guard on' : 'hog, guard off',
      guard,
      victim,
      hog: hogResult,
      windowS: window,
      ...(guard ? { firstThrottleS, allThrottledS } : {}),
      actions: await guardActions(p, since, t0, window),
      ...(level === undefined ? {} : { hogLevelAtEnd: level }),
      busyBeforePct,
    }
  } catch (err) {
    await hog.stop().catch(() => {})
    throw err
  }
}

interface EventRow { id: number; at: string; type: string; function?: string; instance?: string }

async function events(p: BenchPlatform, since: number, fn?: string): Promise<EventRow[]> {
  const q = `since=${since}&limit=1000${fn === undefined ? '' : `&function=${encodeURIComponent(fn)}`}`
  const r = await p.api('GET', `/v1/events?${q}`)
  if (r.status !== 200) throw new Error(`GET /v1/events answered ${r.status}`)
  return r.json['events'] as EventRow[]
}

async function lastEventId(p: BenchPlatform): Promise<number> {
  return (await events(p, 0)).at(-1)?.id ?? 0
}

/** Polls the events (bounded) until `instances` distinct hog instances have a `loadguard-throttle`. */
async function waitForThrottles(p: BenchPlatform, since: number, t0: number, instances: number, maxMs: number): Promise<{ firstS: number | null; allS: number | null; instances: number }> {
  const deadline = t0 + maxMs
  for (;;) {
    const throttles = (await events(p, since, 'hog')).filter((e) => e.type === 'loadguard-throttle')
    const distinct = new Set(throttles.map((e) => e.instance))
    const firstS = throttles[0] === undefined ? null : (Date.parse(throttles[0].at) - t0) / 1000
    if (distinct.size >= instances) return { firstS, allS: (Date.now() - t0) / 1000, instances: distinct.size }
    if (Date.now() >= deadline) return { firstS, allS: null, instances: distinct.size }
    await new Promise((r) => setTimeout(r, POLL_MS))
  }
}

/**
 * Waits (bounded) until the router has no call of `fn` running or waiting: the hog's load generator hangs
 * up with calls still queued, and a platform closed over them fails them (KDL_ERR_SHUTTING_DOWN, logged).
 */
async function drained(p: BenchPlatform, fn: string, maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs
  for (;;) {
    const r = await p.api('GET', '/v1/pools')
    const row = (r.json['functions'] as Array<{ function: string; busy: number; waiting: number }> | undefined)?.find((x) => x.function === fn)
    if (row === undefined || (row.busy === 0 && row.waiting === 0) || Date.now() >= deadline) return
    await new Promise((res) => setTimeout(res, POLL_MS))
  }
}

async function guardActions(p: BenchPlatform, since: number, t0: number, window: [number, number]): Promise<GuardAction[]> {
  return (await events(p, since)).filter((e) => e.type.startsWith('loadguard-')).map((e) => {
    const atS = (Date.parse(e.at) - t0) / 1000
    return { type: e.type.slice('loadguard-'.length), function: e.function, instance: e.instance, atS, window: atS < window[0] ? 'warm-up' : atS <= window[1] ? 'measured' : 'after' }
  })
}

async function hogLevel(p: BenchPlatform): Promise<string | undefined> {
  const r = await p.api('GET', '/v1/functions/hog')
  const status = r.json['status'] as { loadGuard?: { level?: string } } | undefined
  return status?.loadGuard?.level
}
