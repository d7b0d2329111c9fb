// Chaos (issue 8 part 4): keep-alive load on a platform while one of its instances is SIGKILLed every
// `killEveryMs`. Every call is answered (or counted hung); a call that was on a killed instance may fail
// with its own 502, anything else is a failure of the platform. Used by the bench's chaos row and by
// test/e2e/chaos.test.ts, against a platform of their own: only its instances are ever killed.
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Client } from 'undici'
import { startPlatform } from './platform.js'

/** An instance of the platform under test that may be killed now, with the host pids that carry it. */
export interface Victim {
  id: string
  pids: number[]
}

export interface ChaosOptions {
  url: string
  /** Functions called; connection `i` calls `functions[i % functions.length]`. */
  functions: string[]
  connections: number
  durationMs: number
  /**
   * Keep going past `durationMs` until this many kills happened (a slow engine starts instances slower
   * than the kills come), but never past `maxDurationMs`. @default 0
   */
  minKills?: number
  /** @default 3 × durationMs */
  maxDurationMs?: number
  killEveryMs: number
  /** A call without an answer after this long is hung (undici's headers / body timeout). */
  hungMs: number
  /** Instances that may be killed now (the platform's own only). */
  victims(): Promise<Victim[]>
  random?: () => number
}

/** One call that did not answer 2xx. */
export interface FailedCall {
  fn: string
  /** 0: no HTTP answer at all (the connection closed, or hung). */
  status: number
  code: string | undefined
  message: string
  /** Instance named by a 502 (`… on instance kdl-…`). */
  instance: string | undefined
  atMs: number
}

export interface ChaosResult {
  calls: number
  ok: number
  kills: number
  /** Instance ids killed, in order. */
  killed: string[]
  /** 502 FN_CRASHED / FN_OOM naming an instance killed after the call was sent: the killed calls' own answers. */
  crashed: number
  /** Every other non-2xx answer or lost call. */
  failures: FailedCall[]
  hung: number
  /** Answers by status code and KDL_ERR_* code, e.g. `200`, `502 KDL_ERR_FN_CRASHED`. */
  byCode: Record<string, number>
  durationMs: number
}

/** Runs the load and the kills for `durationMs` (longer until `minKills`), then waits for the calls in flight to end. */
export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const random = o.random ?? Math.random
  const killed: string[] = []
  /** Instance id → when it was killed, ms after the start. */
  const killedAt = new Map<string, number>()
  const failures: FailedCall[] = []
  const byCode: Record<string, number> = {}
  let calls = 0
  let ok = 0
  let crashed = 0
  let hung = 0
  const t0 = performance.now()
  const minKills = o.minKills ?? 0
  const hardStop = t0 + (o.maxDurationMs ?? 3 * o.durationMs)
  let stopLoad = false
  const count = (key: string): void => { byCode[key] = (byCode[key] ?? 0) + 1 }

  const worker = async (i: number): Promise<void> => {
    const fn = o.functions[i % o.functions.length] as string
    const client = new Client(o.url, { headersTimeout: o.hungMs, bodyTimeout: o.hungMs, keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 })
    try {
      while (!stopLoad) {
        calls++
        const atMs = performance.now() - t0
        let status = 0
        let text = ''
        try {
          const res = await client.request({ method: 'GET', path: `/fn/${fn}` })
          status = res.statusCode
          text = await res.body.text()
        } catch (err) {
          const code = (err as { code?: string }).code
          if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') hung++
          count(code === undefined ? 'no answer' : `no answer ${code}`)
          failures.push({ fn, status: 0, code, message: (err as Error).message, instance: undefined, atMs })
          continue
        }
        if (status >= 200 && status < 300) {
          ok++
          count(String(status))
          continue
        }
        let body: { code?: string; message?: string } = {}
        try { body = JSON.parse(text) as typeof body } catch { body = { message: text.slice(0, 200) } }
        count(`${status} ${body.code ?? '?'}`)
        const instance = /on instance (kdl-[0-9a-f]+)/.exec(body.message ?? '')?.[1]
        // Its own 502 only when the call was sent before its instance was killed: one sent later never
        // reached a live handler, and should have been served elsewhere.
        const kill = instance === undefined ? undefined : killedAt.get(instance)
        if (status === 502 && (body.code === 'KDL_ERR_FN_CRASHED' || body.code === 'KDL_ERR_FN_OOM') && kill !== undefined && atMs <= kill) {
          crashed++
          continue
        }
        failures.push({ fn, status, code: body.code, message: body.message ?? '', instance, atMs })
      }
    } finally {
      await client.close().catch(() => {})
    }
  }

  const killer = async (): Promise<void> => {
    let enough: () => void = () => {}
    const enoughKills = new Promise<void>((r) => { enough = r })
    const k = startKiller({ victims: o.victims, everyMs: o.killEveryMs, random, t0, killed, killedAt, onKill: () => { if (killed.length >= minKills) enough() } })
    if (minKills === 0) enough()
    await new Promise((r) => setTimeout(r, o.durationMs))
    let cap: NodeJS.Timeout | undefined
    await Promise.race([enoughKills, new Promise((r) => { cap = setTimeout(r, Math.max(0, hardStop - performance.now())) })])
    clearTimeout(cap)
    stopLoad = true
    await k.stop()
  }

  await Promise.all([killer(), ...Array.from({ length: o.connections }, (_, i) => worker(i))])
  return { calls, ok, kills: killed.length, killed, crashed, failures, hung, byCode, durationMs: performance.now() - t0 }
}

/** A background SIGKILL of one instance every `everyMs`, until stopped. */
export interface Killer {
  /** Instance ids killed, in order. */
  killed: string[]
  /** Instance id → when it was killed, ms after `t0` (performance.now() time). */
  killedAt: Map<string, number>
  /** Ends the kills; resolves once the last one is done. */
  stop(): Promise<void>
}

export function startKiller(o: {
  victims: () => Promise<Victim[]>
  everyMs: number
  random?: () => number
  t0?: number
  killed?: string[]
  killedAt?: Map<string, number>
  /** Called after each kill. */
  onKill?: () => void
}): Killer {
  const random = o.random ?? Math.random
  const t0 = o.t0 ?? performance.now()
  const killed = o.killed ?? []
  const killedAt = o.killedAt ?? new Map<string, number>()
  let stopped = false
  let wake: (() => void) | undefined
  const loop = (async () => {
    let next = performance.now() + o.everyMs
    while (!stopped) {
      await new Promise<void>((r) => { wake = r; setTimeout(r, Math.max(0, next - performance.now())) })
      if (stopped) return
      next += o.everyMs
      const victims = (await o.victims()).filter((v) => v.pids.length > 0 && !killedAt.has(v.id))
      const v = victims[Math.floor(random() * victims.length)]
      if (v === undefined || stopped) continue
      // Marked before the signal: a call that fails because of it may be counted the next moment.
      killed.push(v.id)
      killedAt.set(v.id, performance.now() - t0)
      for (const pid of v.pids) {
        try { process.kill(pid, 'SIGKILL') } catch { /* gone meanwhile */ }
      }
      o.onKill?.()
    }
  })()
  return { killed, killedAt, stop: async () => { stopped = true; wake?.(); await loop } }
}

/**
 * Host pids of the instances named in `ids`, found by the `--kindling-instance=<id>` on their command
 * line (process backend: `unshare`, `node`; a container's processes show on the host too).
 */
export async function pidsOf(ids: Iterable<string>): Promise<Map<string, number[]>> {
  const want = new Set(ids)
  const out = new Map<string, number[]>()
  if (want.size === 0) return out
  for (const name of await readdir('/proc')) {
    if (name.charCodeAt(0) > 57 || Number(name) === process.pid) continue
    let cmd: string
    try { cmd = await readFile(`/proc/${name}/cmdline`, 'utf8') } catch { continue }
    const m = /--kindling-instance=(kdl-[0-9a-f]+)/.exec(cmd)
    if (m === null || !want.has(m[1] as string)) continue
    const id = m[1] as string
    out.set(id, [...(out.get(id) ?? []), Number(name)])
  }
  return out
}

/** Instance ids with a run directory under `runDir` (process backend): started and starting ones. */
export async function runDirInstances(runDir: string): Promise<string[]> {
  const names = await readdir(runDir).catch(() => [] as string[])
  return names.filter((n) => /^kdl-[0-9a-f]+$/.test(n))
}

/** What the bench's chaos row measured. */
export interface ChaosRow {
  settings: { connections: number; durationS: number; killEveryMs: number; functions: Record<string, Record<string, unknown>> }
  result: Omit<ChaosResult, 'killed' | 'failures'> & { failures: FailedCall[] }
  /** Calls served on another instance, by stage (kindling_call_retries_total). */
  retries: Record<string, number>
  /** From the end of the load until every pool was at its target with nothing starting, ms (null: not within 30 s). */
  refillMs: number | null
}

export interface ChaosBenchOptions {
  dataDir: string
  poolSize: number
  durationS: number
  connections: number
  killEveryMs: number
  progress(message: string): void
  /** Registers the platform's close for an interrupted run; the returned function unregisters it. */
  track(close: () => Promise<void>): () => void
}

/** The mix the chaos row runs: a persistent function shared by many calls, and two that take instances often. */
const CHAOS_FUNCTIONS: Record<string, Record<string, unknown>> = {
  steady: { mode: 'persistent', concurrency: 4, maxInstances: 8, prewarm: 2 },
  fresh: { mode: 'ephemeral', maxInstances: 4, prewarm: 2 },
  again: { mode: 'recycle', maxInstances: 4, prewarm: 2 },
}

/** The bench's chaos row: a platform of its own (process backend), loaded while its instances are killed. */
export async function measureChaos(o: ChaosBenchOptions): Promise<ChaosRow> {
  o.progress(`chaos: ${o.connections} connections for ${o.durationS} s, one instance SIGKILLed every ${o.killEveryMs} ms`)
  const p = await startPlatform({ dataDir: o.dataDir, backend: 'process', poolSize: o.poolSize })
  const untrack = o.track(() => p.close())
  try {
    for (const [name, spec] of Object.entries(CHAOS_FUNCTIONS)) await p.deploy(name, { code: `export default () => ${JSON.stringify(name)}`, ...spec })
    await p.settle()
    const runDir = join(o.dataDir, 'run')
    const r = await runChaos({
      url: p.url, functions: Object.keys(CHAOS_FUNCTIONS), connections: o.connections, durationMs: o.durationS * 1000, killEveryMs: o.killEveryMs, hungMs: 30_000,
      victims: async () => {
        const ids = new Set(await runDirInstances(runDir))
        for (const inst of p.embedded.pools.instances()) ids.add(inst.id)
        return [...await pidsOf(ids)].map(([id, pids]) => ({ id, pids }))
      },
    })
    const t0 = performance.now()
    let refillMs: number | null = null
    while (performance.now() - t0 < 30_000) {
      if (p.embedded.pools.snapshot().every((s) => s.idle === s.target && s.starting === 0)) { refillMs = performance.now() - t0; break }
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const metrics = await (await fetch(`${p.url}/metrics`)).text()
    const retries: Record<string, number> = {}
    for (const m of metrics.matchAll(/^kindling_call_retries_total\{stage="([a-z]+)"\} (\d+)$/gm)) retries[m[1] as string] = Number(m[2])
    const { killed: _killed, ...result } = r
    return { settings: { connections: o.connections, durationS: o.durationS, killEveryMs: o.killEveryMs, functions: CHAOS_FUNCTIONS }, result, retries, refillMs }
  } finally {
    untrack()
    await p.close()
  }
}
