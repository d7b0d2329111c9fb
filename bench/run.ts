// `npm run bench`: the whole benchmark in one process. Every figure is a ratio against a bare runtime
// server measured in the same run. Load comes from autocannon in a child process (load-gen.ts); the
// platform runs in this process, like `kindling up`. Flags: --quick, --only=warm,floor,cold,ephemeral,modes,rss,noisy,docker,kubernetes,cluster,chaos,starts,builds,async,workflows,scale (scale only when named),
// --backend=process|docker|both, --profile (CPU profile of the router at 32 connections, to /tmp),
// --prewarm=N[,N…] (the prewarm pool sizes the modes section sweeps ephemeral with; default 4).
import { spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from 'undici'
import { NODE_SERVER_DIR, REPO_ROOT } from '../embedded/main.js'
import { bareColdStarts, startBare, type BareServer } from './bare.js'
import { measureChaos } from './chaos.js'
import { coldStarts, warmSingle, type ColdKind, type ColdResult } from './cold.js'
import type { LoadResult } from './load.js'
import { startFloor, type Floor } from './floor.js'
import { defaultModesResult, measureDefaultModes } from './modes.js'
import { findNginx, startNginx, type Nginx } from './nginx.js'
import { startPlatform, type BenchPlatform } from './platform.js'
import { startCluster } from '../kube-sim/cluster.js'
import { rssKb } from './proc.js'
import { measureNoisy } from './noisy.js'
import { byCategory, profileDuring } from './profile.js'
import { DEFAULT_SECTIONS, render, SECTIONS, summarize, type Results, type Section } from './report.js'
import { measureScale } from './scale.js'
import { measureRss } from './rss.js'
import { measureStarts } from './starts.js'
import { measureBuilds } from './builds.js'
import { measureAsync } from './async.js'
import { measureWorkflows } from './workflows.js'
import { round, summarize as summarizeMs } from './stats.js'
import { HELLO_SPEC, measureBare, measureFloor, measureModes, measureNginx, measureRouter, type LoadContext, type WarmRow } from './warm.js'

const COLD_KINDS: ColdKind[] = ['prewarmed', 'specialized', 'cold']
const POOL_SIZE = 2


interface Flags {
  quick: boolean
  only: Set<Section>
  backend: 'process' | 'docker' | 'both' | undefined
  profile: boolean
  /** Prewarm pool sizes of the ephemeral sweep (modes section). */
  prewarms: number[]
}

function parseFlags(argv: string[]): Flags {
  const flags: Flags = { quick: false, only: new Set(DEFAULT_SECTIONS), backend: undefined, profile: false, prewarms: [4] }
  for (const arg of argv) {
    const [key, value] = arg.split('=', 2) as [string, string | undefined]
    if (key === '--quick') flags.quick = true
    else if (key === '--profile') flags.profile = true
    else if (key === '--only' && value !== undefined) {
      const picked = value.split(',').map((s) => s.trim()).filter((s) => s !== '')
      for (const s of picked) if (!(SECTIONS as readonly string[]).includes(s)) usage(`unknown section "${s}"`)
      flags.only = new Set(picked as Section[])
    } else if (key === '--prewarm' && value !== undefined) {
      const ns = value.split(',').map((x) => Number(x.trim()))
      if (ns.length === 0 || ns.some((n) => !Number.isInteger(n) || n < 1 || n > 10)) usage(`--prewarm takes integers 1–10 (the default maxInstances), got "${value}"`)
      flags.prewarms = ns
    } else if (key === '--backend' && (value === 'process' || value === 'docker' || value === 'both')) flags.backend = value
    else usage(`unknown argument "${arg}"`)
  }
  return flags
}

function usage(message: string): never {
  process.stderr.write(`bench: ${message}\nusage: npm run bench -- [--quick] [--only=${SECTIONS.join(',')}] [--backend=process|docker|both] [--profile] [--prewarm=N[,N…]]\n`)
  process.exit(2)
}

function progress(message: string): void {
  process.stderr.write(`  » ${message}\n`)
}

async function dockerAnswers(socketPath = '/var/run/docker.sock'): Promise<boolean> {
  const client = new Client('http://localhost', { socketPath, connectTimeout: 2000, headersTimeout: 3000, bodyTimeout: 3000 })
  try {
    const res = await client.request({ method: 'GET', path: '/_ping' })
    return res.statusCode === 200 && (await res.body.text()) === 'OK'
  } catch {
    return false
  } finally {
    await client.close().catch(() => {})
  }
}

/** nginx for the reference row: found, or installed from Debian when running as root; undefined otherwise. */
function ensureNginx(): string | undefined {
  const found = findNginx()
  if (found !== undefined || process.getuid?.() !== 0) return found
  progress('nginx not found: apt-get install -y nginx-light')
  spawnSync('apt-get', ['install', '-y', '-q', 'nginx-light'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
  return findNginx()
}

async function main(): Promise<number> {
  const flags = parseFlags(process.argv.slice(2))
  const t0 = Date.now()
  const durationS = flags.quick ? 2 : 5
  const warmupS = 1
  const coldFunctions = flags.quick ? 8 : 30
  const rssInstances = flags.quick ? 4 : 8
  const quietMs = flags.quick ? 1000 : 3000
  const notes: string[] = []

  const docker = await dockerAnswers()
  let backend = flags.backend ?? (docker ? 'both' : 'process')
  if (flags.backend === undefined && !docker) notes.push('no Docker engine answers at /var/run/docker.sock: process backend only')
  if ((backend === 'docker' || backend === 'both') && !docker) {
    notes.push('--backend asked for docker but no Docker engine answers at /var/run/docker.sock: docker section skipped')
    backend = 'process'
  }
  const runProcess = backend !== 'docker'
  const runDocker = backend !== 'process' && flags.only.has('docker')
  for (const n of notes) process.stderr.write(`bench: ${n}\n`)

  const results: Results = {
    startedAt: new Date(t0).toISOString(),
    flags: { quick: flags.quick, only: [...flags.only], backend, profile: flags.profile, prewarms: flags.prewarms },
    machine: {
      cpus: cpus().length,
      cpu: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      kernel: spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim(),
      commit: spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).stdout.trim(),
      loadavgStart: loadavg()[0] ?? Number.NaN,
    },
    settings: { durationS, warmupS, quietMs, coldFunctions, rssInstances, helloSpec: { ...HELLO_SPEC, code: undefined } },
    notes,
    bare: { rssGenericMb: Number.NaN, rssLoadedMb: Number.NaN, loadMs: Number.NaN, byConnections: {} },
    errors: [],
    timings: {},
    summary: [],
  }

  const tmp = await mkdtemp(join(tmpdir(), 'kdl-bench-'))
  const cleanups: Array<() => Promise<void>> = []
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.splice(0).reverse()) await c().catch((err: unknown) => process.stderr.write(`bench: cleanup failed: ${(err as Error).message}\n`))
    await rm(tmp, { recursive: true, force: true })
  }
  const onSignal = (): void => { void cleanup().finally(() => process.exit(130)) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const section = async (name: string, fn: () => Promise<void>): Promise<void> => {
    process.stderr.write(`bench: ${name}\n`)
    const started = performance.now()
    try {
      await fn()
      results.timings[name] = round((performance.now() - started) / 1000, 1)
    } catch (err) {
      const message = (err as Error).stack ?? String(err)
      results.errors.push({ section: name, message })
      process.stderr.write(`bench: section ${name} failed: ${message}\n`)
    }
  }

  try {
    await mkdir(join(tmp, 'bare'))
    const bare: BareServer = await startBare({ nodeBin: process.execPath, serverFile: join(NODE_SERVER_DIR, 'server.mjs'), dir: join(tmp, 'bare') })
    cleanups.push(() => bare.stop())
    results.bare.rssGenericMb = ((await rssKb(bare.pid)) ?? Number.NaN) / 1024
    results.bare.loadMs = await bare.load()
    results.bare.rssLoadedMb = ((await rssKb(bare.pid)) ?? Number.NaN) / 1024

    if ((runProcess && flags.only.has('cold')) || runDocker) {
      await section('bare start kinds', async () => {
        progress(`${coldFunctions} fresh bare servers: spawn, load, first call`)
        const b = await bareColdStarts({ nodeBin: process.execPath, serverFile: join(NODE_SERVER_DIR, 'server.mjs'), dir: join(tmp, 'bare-fresh') }, coldFunctions)
        const sum = (...xs: number[][]): number[] => (xs[0] ?? []).map((_, i) => xs.reduce((a, x) => a + (x[i] ?? 0), 0))
        results.bare.starts = { prewarmed: summarizeMs(b.first), specialized: summarizeMs(sum(b.load, b.first)), cold: summarizeMs(sum(b.ready, b.load, b.first)) }
      })
    }

    const bareRuns = new Map<number, Promise<LoadResult>>()
    const ctx: LoadContext = {
      durationS, warmupS, bareSocket: bare.socketPath, progress, quietMs,
      bareRef: (c) => {
        let r = bareRuns.get(c)
        if (r === undefined) {
          r = measureBare(ctx, c).then((res) => { results.bare.byConnections[String(c)] = res; return res })
          bareRuns.set(c, r)
        }
        return r
      },
    }

    if (runProcess && (['warm', 'floor', 'cold', 'ephemeral', 'modes', 'rss'] as const).some((s) => flags.only.has(s))) await section('process backend', async () => {
      const p = await startPlatform({ dataDir: join(tmp, 'process'), backend: 'process', poolSize: POOL_SIZE })
      const closeP = async (): Promise<void> => { await p.close() }
      cleanups.push(closeP)
      await p.deploy('hello', HELLO_SPEC)
      await p.settle()

      if (flags.only.has('warm') || flags.only.has('floor')) {
        await section(flags.only.has('warm') ? 'warm path' : 'floor', async () => {
          results.warm = { rows: await warmPath(ctx, p, join(tmp, 'nginx'), { warm: flags.only.has('warm'), floor: flags.only.has('floor') }) }
        })
        if (flags.profile && results.warm !== undefined) {
          await section('router profile', async () => {
            const file = `/tmp/kindling-router-${stamp(new Date())}.cpuprofile`
            const top = await profileDuring(file, REPO_ROOT, async () => { await measureRouter(ctx, p, 'hello', 32) })
            const idlePct = top.filter((t) => t.category === 'idle').reduce((a, t) => a + t.pct, 0)
            if (results.warm !== undefined) results.warm.profile = { file, idlePct, categories: byCategory(top), top: top.slice(0, 40) }
          })
        }
      }
      if (flags.only.has('cold')) {
        await section('cold start (process)', async () => {
          const warm = await warmSingle(p, 'hello', flags.quick ? 100 : 300)
          const kinds: ColdResult[] = []
          for (const kind of COLD_KINDS) {
            progress(`${kind} × ${coldFunctions}`)
            kinds.push(await coldStarts(p, kind, coldFunctions, POOL_SIZE, 'cs'))
          }
          results.cold = { warm, kinds }
        })
      }
      if (flags.only.has('ephemeral')) {
        await section('ephemeral / recycle throughput', async () => {
          const bare4 = await ctx.bareRef(4)
          results.ephemeral = { bare: bare4, rows: await measureModes(ctx, p, 4) }
        })
      }
      if (flags.only.has('modes')) {
        await section('default modes', async () => {
          await ctx.bareRef(1)
          await ctx.bareRef(32)
          results.modes = defaultModesResult(ctx)
          await measureDefaultModes(ctx, p, flags.prewarms, results.modes)
        })
      }
      if (flags.only.has('rss')) {
        await section('RSS per idle instance', async () => {
          progress(`${rssInstances} generic, then ${rssInstances} loaded instances`)
          results.rss = await measureRss(p, rssInstances, POOL_SIZE)
        })
      }
      cleanups.splice(cleanups.indexOf(closeP), 1)
      await section('stopping the platform (process)', () => p.close())
    })

    if (runProcess && flags.only.has('noisy')) {
      await section('noisy neighbour (process)', async () => {
        results.noisy = await measureNoisy({
          dataDir: join(tmp, 'noisy'), poolSize: POOL_SIZE, durationS: flags.quick ? 4 : 8, warmupS, quietMs, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    if (runProcess && flags.only.has('chaos')) {
      await section('chaos (process)', async () => {
        results.chaos = await measureChaos({
          dataDir: join(tmp, 'chaos'), poolSize: POOL_SIZE, durationS: flags.quick ? 10 : 30, connections: 32, killEveryMs: 200, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    if (flags.only.has('starts')) {
      const track = (close: () => Promise<void>): (() => void) => {
        cleanups.push(close)
        return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
      }
      const bursts = flags.quick ? [1, 4, 8] : [1, 2, 4, 8, 16]
      await section('instance starts by burst size', async () => {
        results.starts = []
        const engines = [...(runProcess ? ['process'] as const : []), ...(backend !== 'process' ? ['docker'] as const : [])]
        for (const engine of engines) {
          results.starts.push(...await measureStarts({ dataDir: join(tmp, `starts-${engine}`), backend: engine, bursts, progress, track }))
        }
      })
    }

    if (runProcess && flags.only.has('builds')) {
      await section('builds', async () => {
        results.builds = await measureBuilds({
          dataDir: join(tmp, 'builds'), functions: flags.quick ? 3 : 8, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    if (runProcess && flags.only.has('async')) {
      await section('async', async () => {
        results.async = await measureAsync({
          dataDir: join(tmp, 'async'), jobs: flags.quick ? 200 : 2000, concurrency: 8, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    if (runProcess && flags.only.has('workflows')) {
      await section('workflows', async () => {
        results.workflows = await measureWorkflows({
          dataDir: join(tmp, 'workflows'), runs: flags.quick ? 3 : 10, steps: 100, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    if (runProcess && flags.only.has('scale')) {
      await section('scale', async () => {
        results.scale = await measureScale({
          dataDir: join(tmp, 'scale'), functions: flags.quick ? 200 : 1000, prewarmed: flags.quick ? 100 : 1000, fillBoundS: flags.quick ? 60 : 240, progress,
          track: (close) => {
            cleanups.push(close)
            return () => { const i = cleanups.indexOf(close); if (i >= 0) cleanups.splice(i, 1) }
          },
        })
      })
    }

    /** What another backend's section measures: the warm path at 32 connections beside bare, and each kind of cold start. */
    const backendRows = async (p: BenchPlatform, prefix: string): Promise<{ warm: Awaited<ReturnType<typeof warmSingle>>; load: LoadResult; kinds: ColdResult[] }> => {
      await p.deploy('hello', HELLO_SPEC)
      await p.settle()
      await ctx.bareRef(32)
      const load = await measureRouter(ctx, p, 'hello', 32)
      const warm = await warmSingle(p, 'hello', flags.quick ? 100 : 300)
      const kinds: ColdResult[] = []
      for (const kind of COLD_KINDS) {
        progress(`${p.backend} ${kind} × ${coldFunctions}`)
        kinds.push(await coldStarts(p, kind, coldFunctions, POOL_SIZE, prefix))
      }
      return { warm, load, kinds }
    }

    if (flags.only.has('kubernetes')) {
      await section('kubernetes backend', async () => {
        progress('starting kube-sim (1 management, 2 runtime, 1 quarantine node) and the platform on the kubernetes backend')
        // Outside /tmp: a pod's /tmp emptyDir is bound over /tmp, which a data directory there would hide.
        const simDir = await mkdtemp(join('/var/tmp', 'kdl-bench-sim-'))
        const sim = await startCluster({ dataDir: simDir, nodes: { management: 1, runtime: 2, quarantine: 1 } })
        const stopSim = async (): Promise<void> => { await sim.stop(); await rm(simDir, { recursive: true, force: true }) }
        cleanups.push(stopSim)
        const kubeconfig = join(simDir, 'kubeconfig')
        await sim.writeKubeconfig(kubeconfig)
        const p = await startPlatform({ dataDir: join(tmp, 'kubernetes'), backend: 'kubernetes', poolSize: POOL_SIZE, overrides: { KINDLING_KUBECONFIG: kubeconfig } })
        const closeP = async (): Promise<void> => { await p.close() }
        cleanups.push(closeP)
        try {
          results.kubernetes = await backendRows(p, 'k8')
        } finally {
          cleanups.splice(cleanups.indexOf(closeP), 1)
          await section('stopping the platform (kubernetes)', () => p.close())
          cleanups.splice(cleanups.indexOf(stopSim), 1)
          await section('stopping kube-sim', stopSim)
        }
      })
    }

    if (flags.only.has('cluster') && runProcess) {
      await section('cluster router', async () => {
        progress('starting a controller and a cluster router (process backend)')
        const p = await startPlatform({ dataDir: join(tmp, 'cluster'), backend: 'process', poolSize: POOL_SIZE, viaRouter: true })
        const closeP = async (): Promise<void> => { await p.close() }
        cleanups.push(closeP)
        try {
          results.cluster = await backendRows(p, 'cl')
        } finally {
          cleanups.splice(cleanups.indexOf(closeP), 1)
          await section('stopping the controller and the router', () => p.close())
        }
      })
    }

    if (runDocker) {
      await section('docker backend', async () => {
        progress('starting the platform on the docker backend')
        const p = await startPlatform({ dataDir: join(tmp, 'docker'), backend: 'docker', poolSize: POOL_SIZE })
        const closeP = async (): Promise<void> => { await p.close() }
        cleanups.push(closeP)
        try {
          results.docker = await backendRows(p, 'dk')
        } finally {
          cleanups.splice(cleanups.indexOf(closeP), 1)
          await section('stopping the platform (docker)', () => p.close())
        }
      })
    }
  } finally {
    await cleanup()
  }

  results.finishedAt = new Date().toISOString()
  results.machine.loadavgEnd = loadavg()[0]
  results.seconds = round((Date.now() - t0) / 1000, 1)
  results.summary = summarize(results)
  process.stdout.write(`${render(results)}\n`)

  const dir = join(REPO_ROOT, 'bench', 'results')
  await mkdir(dir, { recursive: true })
  const json = JSON.stringify(results, null, 2)
  const file = join(dir, `${stamp(new Date(t0))}.json`)
  await writeFile(file, json)
  await writeFile(join(dir, 'latest.json'), json)
  process.stdout.write(`\nsection seconds: ${Object.entries(results.timings).map(([k, v]) => `${k} ${v}`).join(', ')}\n`)
  process.stdout.write(`results: ${file} (and bench/results/latest.json), ${results.seconds} s in all\n`)
  return results.errors.length === 0 ? 0 : 1
}

/**
 * Bare and router at 1 and 32 connections, with the nginx hop (`warm`) and the Node floor (`floor`)
 * beside them; then (`warm`) the router with one call per instance.
 */
async function warmPath(ctx: LoadContext, p: BenchPlatform, nginxDir: string, want: { warm: boolean; floor: boolean }): Promise<WarmRow[]> {
  const rows: WarmRow[] = []
  let nginx: Nginx | undefined
  let floor: Floor | undefined
  if (want.warm) {
    const bin = ensureNginx()
    if (bin === undefined) progress('nginx is not installed (apt-get install -y nginx-light): nginx rows skipped')
    else nginx = await startNginx({ bin, dir: nginxDir, upstreamSocket: ctx.bareSocket })
  }
  try {
    if (want.floor) floor = await startFloor({ upstreamSocket: ctx.bareSocket })
    // The same instance through an alias (issue 15): what naming an alias costs the warm path.
    if (want.warm) await p.api('PUT', '/v1/functions/hello/aliases/stable', { version: 1 })
    for (const connections of [1, 32]) {
      rows.push({ target: 'bare', connections, result: await ctx.bareRef(connections) })
      rows.push({ target: 'router', connections, result: await measureRouter(ctx, p, 'hello', connections) })
      if (want.warm) rows.push({ target: 'router @alias', connections, result: await measureRouter(ctx, p, 'hello@stable', connections) })
      if (nginx !== undefined) rows.push({ target: 'nginx', connections, result: await measureNginx(ctx, nginx.port, connections) })
      if (floor !== undefined) rows.push({ target: 'floor', connections, result: await measureFloor(ctx, floor.port, connections) })
    }
  } finally {
    await nginx?.stop()
    await floor?.stop()
  }
  if (!want.warm) return rows
  // A weighted alias (issue 15): the same code as two versions behind a 50/50 split, each version on its own
  // instance (so two runtime processes share the CPUs where `router` has one) — the pick itself is a
  // Math.random and a bounds scan.
  await p.deploy('hello-alias', HELLO_SPEC)
  await p.deploy('hello-alias', { ...HELLO_SPEC, env: { KINDLING_BENCH_VERSION: '2' } })
  await p.api('PUT', '/v1/functions/hello-alias/aliases/split', { weights: { 1: 50, 2: 50 } })
  await p.settle()
  try {
    for (const connections of [1, 32]) {
      rows.push({ target: 'router @alias 50/50', connections, result: await measureRouter(ctx, p, 'hello-alias@split', connections) })
    }
  } finally {
    await p.remove('hello-alias')
    await p.settle()
  }
  // The default concurrency (one call per instance): the router spreads 32 connections over 8 prewarmed
  // instances (the longer warm-up covers the prewarm pool's refill of the 8 it gave away).
  await p.deploy('hello-c1', { code: HELLO_SPEC.code, mode: 'persistent', concurrency: 1, maxInstances: 8, prewarm: 8 })
  await p.settle()
  try {
    rows.push({ target: 'router c1×8', connections: 32, result: await measureRouter(ctx, p, 'hello-c1', 32, ctx.warmupS + 2) })
  } finally {
    await p.remove('hello-c1')
    await p.settle()
  }
  return rows
}

function stamp(d: Date): string {
  return d.toISOString().replace(/[:.]/g, '-')
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
