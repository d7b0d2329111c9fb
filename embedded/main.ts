import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, readFile, realpath } from 'node:fs/promises'
import { availableParallelism, freemem, totalmem } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import Dockerode from 'dockerode'
import { pino, type Logger } from 'pino'
import { Registry } from 'prom-client'
import { collectRoutes, registerOpenApi, type RouteEntry } from '../api/openapi.js'
import { apiPlugin } from '../api/plugin.js'
import { uiPlugin } from '../api/ui.js'
import { DockerBackend } from '../backends/docker/docker.js'
import { buildNodeImage, ensureNodeImage } from '../backends/docker/images/node-image.js'
import { ProcessBackend } from '../backends/process/process.js'
import { Spawner } from '../backends/process/spawner/client.js'
import { NsMounter } from '../backends/process/spawner/mounter.js'
import { QuarantineCpuset } from '../cgroups/cpuset.js'
import { detectCgroups } from '../cgroups/index.js'
import { Builder, type NpmSetup } from '../builder/builder.js'
import { CodeStore } from '../codestore/code-store.js'
import { QUARANTINE_ROOT, QUARANTINE_SHARES, type ContainerBackend, type OutputLimits } from '../common/backend.js'
import { loadConfig, type Config } from '../common/config.js'
import { KdlError } from '../common/errors.js'
import { EventLog } from '../common/events.js'
import { FunctionLogs } from '../common/function-logs.js'
import type { Invoke } from '../common/invoke.js'
import { KeyedMutex } from '../common/keyed-mutex.js'
import { Metrics } from '../common/metrics.js'
import { platformIdentity } from '../common/platform-id.js'
import { RUNTIME_DEFAULTS } from '../common/spec.js'
import type { RuntimeSpec } from '../common/types.js'
import { VersionSamples } from '../common/version-samples.js'
import { Executor } from '../executor/executor.js'
import { LoadGuard } from '../loadguard/guard.js'
import { policyFromConfig } from '../loadguard/policy.js'
import { createCgroupReader } from '../loadguard/reader.js'
import { PoolManager } from '../poolmgr/pool-manager.js'
import { CanaryController } from '../releases/canary.js'
import { Releases } from '../releases/versions.js'
import { buildRouter } from '../router/app.js'
import { CallStats } from '../router/call-stats.js'
import { FileStore } from '../store/file-store.js'
import { CodeShare } from '../cluster/code-share.js'
import { SharedEvents } from '../cluster/events.js'
import { Leases } from '../cluster/leases.js'
import { RedisLocks } from '../cluster/locks.js'
import { Replicas } from '../cluster/replicas.js'
import { StoreSync } from '../cluster/sync.js'
import { openAsync } from './async.js'
import { openShared } from './shared.js'
import { openTriggers } from './triggers.js'
import { openWorkflows, type Workflows } from './workflows.js'
import { createKubernetesBackend } from './kubernetes.js'
import { workflowStartPlugin } from '../api/workflows.js'
import { RemoteExecutorServer } from '../executor/remote-server.js'
import { electLeader, startRouterRole } from './cluster-roles.js'

/** Repository root, from dist/embedded/main.js or embedded/main.ts alike. */
const here = dirname(fileURLToPath(import.meta.url))
/** The repository: two levels up from dist/embedded/main.js, one from embedded/main.ts. */
export const REPO_ROOT = resolve(here, basename(dirname(here)) === 'dist' ? '../..' : '..')
export const NODE_SERVER_DIR = join(REPO_ROOT, 'runtimes', 'node')
/** package.json's version: the default tag of the runtime image on kubernetes. */
const PLATFORM_VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version
const SPAWNER_SCRIPT = join(REPO_ROOT, 'backends', 'process', 'spawner', 'spawner.mjs')
const MOUNTER_SCRIPT = join(REPO_ROOT, 'backends', 'process', 'spawner', 'mounter.pl')
/** How long a stop waits for calls in flight before it cuts their connections. */
const SHUTDOWN_GRACE_MS = 10_000
/** A controller that took over (issue 13) reaps instances nobody handed over within this. */
const ORPHAN_GRACE_MS = 30_000
/** Runtime kinds this build can start. */
export const RUNTIME_KINDS = ['node'] as const

export interface EmbeddedOptions {
  env: Record<string, string | undefined>
  overrides?: Partial<Record<keyof Config, string | number>>
  /** A logger to use instead of a new pino (tests pass a silent one). */
  log?: Logger
}

export interface Embedded {
  url: string
  port: number
  config: Config
  pools: PoolManager
  executor: Executor
  /** Versions and aliases (issue 15); a workflow run pins its versions here. */
  releases: Releases
  /** Workflow definitions and runs (issue 12). */
  workflows: Workflows
  /** The load guard, unless KINDLING_LOADGUARD_ENABLED is false or no cgroup hierarchy is usable. */
  loadGuard: LoadGuard | undefined
  /** Calls a function from inside the platform (issue 12), through the router's instance table like `/fn/:key`. */
  invoke: Invoke
  /** Every route the HTTP app registered after the router's own: what the API description (`/docs/json`) must cover. */
  routes: readonly RouteEntry[]
  /** Role controller (issue 13): the port of the executor endpoint routers use. */
  executorPort?: number | undefined
  /** Role controller with a leader lease (issue 13): resolves when leadership is lost — the process must stop. */
  lost?: Promise<string> | undefined
  close(): Promise<void>
}

/** What `kindling up` runs: the whole platform or a controller (startEmbedded), or a cluster router (issue 13). */
export async function startPlatform(opts: EmbeddedOptions): Promise<{ url: string; lost?: Promise<string> | undefined; close(): Promise<void> }> {
  const config = loadConfig(opts.env, opts.overrides)
  if (config.KINDLING_ROLE !== 'router') return startEmbedded(opts)
  return startRouterRole(config, opts.log ?? pino({ level: config.KINDLING_LOG_LEVEL }), SHUTDOWN_GRACE_MS)
}

/**
 * The composition root of `kindling up`: every component in one process, on one port.
 * The only place (with the CLI entry) that reads the environment and constructs clients.
 */
export async function startEmbedded(opts: EmbeddedOptions): Promise<Embedded> {
  const config = loadConfig(opts.env, opts.overrides)
  const log = opts.log ?? pino({ level: config.KINDLING_LOG_LEVEL })
  if (config.KINDLING_ROLE === 'router') throw new KdlError('KDL_ERR_BAD_REQUEST', 'KINDLING_ROLE=router runs without the platform\'s state: start it with startPlatform (kindling up)')
  const controller = config.KINDLING_ROLE === 'controller'
  // Issue 13: a controller with a leader lease does nothing but wait (live, not ready) until it leads.
  const leader = controller && config.KINDLING_LEADER_LEASE !== undefined ? await electLeader(config, log) : undefined
  const dataDir = resolve(config.KINDLING_DATA_DIR)
  const runDir = join(dataDir, 'run')
  for (const d of [dataDir, join(dataDir, 'store'), join(dataDir, 'code'), runDir]) await mkdir(d, { recursive: true, mode: 0o755 })

  // Scopes cgroups, containers and orphan reaping to this data directory's platform (issue 8, part 5).
  // Every controller replica of one install is one platform (KINDLING_PLATFORM_ID): the leader adopts what the last one left.
  const platformId = config.KINDLING_PLATFORM_ID ?? (await platformIdentity(dataDir)).id
  // Issue 11: on Redis the replicas share one store (and async jobs, triggers); the file store is one process's.
  const shared = config.KINDLING_STORE === 'redis' ? await openShared(config, log) : undefined
  const store = shared?.store ?? new FileStore({ dir: join(dataDir, 'store') })
  const codeStore = new CodeStore({ root: join(dataDir, 'code'), maxUnpackedBytes: config.KINDLING_MAX_UNPACKED_BYTES, maxEntries: 10_000 })
  // The kubernetes backend (issue 10) brings the code server its pods fetch their function's code from.
  const kube = config.KINDLING_BACKEND === 'kubernetes' ? await createKubernetesBackend(config, platformId, runDir, join(dataDir, 'code'), PLATFORM_VERSION, log) : undefined
  const backend: ContainerBackend = kube?.backend ?? await createBackend(config, platformId, runDir, join(dataDir, 'code'), log)
  // Function logs (issue 14): what instances print, the function's from the start of its load on.
  const backendLog = log.child({ component: 'backend' })
  const logs = new FunctionLogs({
    maxEntries: config.KINDLING_LOG_RETAIN_LINES,
    maxBytes: config.KINDLING_LOG_RETAIN_BYTES,
    unowned: (o) => {
      if ('line' in o) backendLog.warn({ instance: o.id, stream: o.stream, line: o.line }, 'instance output')
      else backendLog.warn({ instance: o.id, stream: o.stream, dropped: o.dropped }, 'instance output dropped')
    },
  })
  backend.onOutput?.((o) => logs.ingest(o))
  const registry = new Registry()
  const metrics = new Metrics(registry)
  // Several replicas: every event also goes to the shared stream, which GET /v1/events reads.
  const sharedEvents = shared === undefined ? undefined : new SharedEvents({ redis: shared.redis, prefix: shared.prefix, log: log.child({ component: 'events' }) })
  const events = new EventLog(1000, { replica: shared?.replicaId, sink: sharedEvents === undefined ? undefined : (e) => sharedEvents.append(e) })
  const builder = new Builder({
    root: join(dataDir, 'builds'),
    codeStore,
    run: backend.runBuild === undefined ? undefined : (job) => backend.runBuild!(job),
    npm: () => findNpm(config),
    runtimeVersion: () => process.version,
    limits: { memoryMb: config.KINDLING_BUILD_MEMORY_MB, cpu: config.KINDLING_BUILD_CPU, pidsLimit: config.KINDLING_BUILD_PIDS_LIMIT, timeoutMs: config.KINDLING_BUILD_TIMEOUT_MS },
    concurrency: config.KINDLING_BUILD_CONCURRENCY,
    maxLogBytes: 2 * 1024 * 1024,
    maxOutput: { bytes: config.KINDLING_MAX_UNPACKED_BYTES, entries: 200_000 },
    log: log.child({ component: 'builder' }),
    events,
  })
  await builder.init()
  const pools = new PoolManager({
    backend,
    log: log.child({ component: 'poolmgr' }),
    pidsLimit: config.KINDLING_PIDS_LIMIT,
    // Issue 16: the host is budgeted by what instances use at rest (a share of the limit) and at work (the limit),
    // and no start may take the host below its memory floor (MemAvailable, read at each start).
    // On kubernetes the pods are not on this host: the cluster's scheduler places them by their requests, and a
    // budget applies only when one is configured.
    memoryBudgetMb: config.KINDLING_MEMORY_BUDGET_MB > 0 ? config.KINDLING_MEMORY_BUDGET_MB : kube !== undefined ? undefined : Math.floor((totalmem() / 1048576) * 0.75),
    idleMemoryRatio: config.KINDLING_IDLE_MEMORY_RATIO,
    hostMemory: kube !== undefined ? undefined : {
      availableMb: hostAvailableMb,
      floorMb: config.KINDLING_MEMORY_FLOOR_MB > 0 ? config.KINDLING_MEMORY_FLOOR_MB : Math.min(2048, Math.floor((totalmem() / 1048576) * 0.05)),
    },
    loadTimeoutMs: config.KINDLING_LOAD_TIMEOUT_MS,
    maxStarting: config.KINDLING_MAX_STARTING > 0 ? config.KINDLING_MAX_STARTING : undefined,
    owners: logs,
    events,
    adaptive: config.KINDLING_POOL_ADAPTIVE
      ? { intervalMs: config.KINDLING_POOL_ADAPT_INTERVAL_MS, threshold: 2, increment: 1, maxPoolSize: config.KINDLING_POOL_MAX_SIZE }
      : undefined,
  })
  // A controller taking over leaves the routers time to hand over the instances they hold.
  if (controller) pools.reapOrphansAfter(ORPHAN_GRACE_MS)
  else await pools.reapOrphans()

  for (const kind of RUNTIME_KINDS) {
    let spec: RuntimeSpec | undefined = await store.getRuntime(kind)
    if (spec === undefined) {
      spec = { name: kind, poolSize: config.KINDLING_POOL_SIZE, memoryMb: RUNTIME_DEFAULTS.memoryMb, cpu: RUNTIME_DEFAULTS.cpu }
      await store.putRuntime(spec)
    }
    pools.setRuntime(spec)
  }

  // ── Several replicas (issue 11): code fetched from the shared store, maxInstances split among the live replicas. ──
  const clusterLog = log.child({ component: 'cluster' })
  const codeShare = shared === undefined ? undefined : new CodeShare({ redis: shared.redis, prefix: shared.prefix, codeStore, log: clusterLog })
  const replicas = shared === undefined ? undefined : new Replicas({ redis: shared.redis, prefix: shared.prefix, id: shared.replicaId, log: clusterLog, onChange: () => executor.reshare() })
  const executor = new Executor({
    store, pools, codeDirOf: (h) => codeStore.dirOf(h), log: log.child({ component: 'executor' }), metrics, events,
    ensureCode: codeShare === undefined ? undefined : (h) => codeShare.ensure(h),
    instanceShare: replicas === undefined ? undefined : (cap) => replicas.share(cap),
  })
  await replicas?.start()
  await executor.restore()

  // ── Load guard (issue 5): samples instance cgroups; started after the executor, stopped first in close(). ──
  // On kubernetes with node agents (issue 13) the guard reads pods through the agent of their node, not local cgroups.
  const agentReader = config.KINDLING_LOADGUARD_ENABLED ? kube?.agents?.reader() : undefined
  const guardCgroups = config.KINDLING_LOADGUARD_ENABLED && agentReader === undefined ? await detectCgroups() : undefined
  const guardReader = agentReader ?? (guardCgroups === undefined ? undefined : createCgroupReader(guardCgroups))
  const loadGuard = guardReader === undefined ? undefined : new LoadGuard({
    pools, backend, reader: guardReader, events, registry, log: log.child({ component: 'loadguard' }), policy: policyFromConfig(config),
  })
  // Docker puts quarantined containers under the cgroupfs parent /kindling-quarantine (the process backend's
  // quarantine root, same directory): it gets the same small CPU share the process backend gives it.
  if (loadGuard !== undefined && backend.name === 'docker') await guardCgroups?.ensureParent(QUARANTINE_ROOT, { cpuShares: QUARANTINE_SHARES })
  if (config.KINDLING_LOADGUARD_ENABLED && loadGuard === undefined) log.warn('load guard off: no writable cgroup hierarchy (not root?)')
  loadGuard?.start()
  // ── end load guard ──
  // ── Versions, aliases and canaries (issue 15): every writer of a function holds its lock. ──
  const locks = shared === undefined ? new KeyedMutex() : new RedisLocks({ redis: shared.redis, prefix: shared.prefix })
  const releases = new Releases({
    store, executor, codeStore, events, metrics, log: log.child({ component: 'releases' }), keepVersions: config.KINDLING_KEEP_VERSIONS, locks,
  })
  const samples = new VersionSamples()
  // One replica drives a canary at a time (a lease in Redis); the others watch and take over if it goes.
  const leases = shared === undefined ? undefined : new Leases({ redis: shared.redis, prefix: shared.prefix, holder: shared.replicaId })
  const canary = new CanaryController({
    releases, executor, samples, events, steps: metrics.canarySteps, log: log.child({ component: 'canary' }),
    drives: leases === undefined ? undefined : (name, ttlMs) => leases.hold(`canary:${name}`, ttlMs),
    leaves: leases === undefined ? undefined : (name) => { void leases.release(`canary:${name}`) },
  })
  canary.resume(await store.listFunctions())
  const callStats = new CallStats()
  // What another replica changes is applied here: its deploys route here, its deletes drain here.
  const sync = shared === undefined ? undefined : new StoreSync({
    store, log: clusterLog,
    target: {
      knownFunctions: () => executor.knownFunctions(),
      head: (name) => executor.head(name),
      routed: async (head) => { await executor.adopt(head); canary.follow(head) },
      removed: (name) => { executor.removed(name); releases.removed(name); logs.drop(name); callStats.forget(name) },
      retainVersions: (name, versions) => executor.retainVersions(name, versions),
      setRuntime: (spec) => pools.setRuntime(spec),
    },
  })
  // Issue 11: async invocations, on the shared store only (the file store answers 503 KDL_ERR_ASYNC_UNAVAILABLE).
  const asyncPart = shared === undefined ? undefined : await openAsync({ shared, config, log, registry, events })
  // Cron triggers (issue 11): a tick is enqueued as an async job of its function.
  const triggers = shared === undefined || asyncPart === undefined ? undefined : await openTriggers(shared, { events, registry, log: log.child({ component: 'triggers' }), submit: asyncPart.submit })
  const { app, table, invoke } = buildRouter({ executor, metrics, log, callStats, samples, asyncInvoke: asyncPart?.invoke, asyncToken: asyncPart?.token }, { maxBodyBytes: config.KINDLING_MAX_BODY_BYTES, maxApiBodyBytes: config.KINDLING_MAX_DEPLOY_BYTES })
  // Workflows (issue 12): runs stored beside the specs; steps call through the router's own path.
  const workflows: Workflows = await openWorkflows({ config, dataDir, shared, invoke, executor, releases, locks, events, registry, log: log.child({ component: 'workflows' }) })
  const routes = collectRoutes(app)
  // The API description at /docs (issue 14): before the API, whose routes it collects; outside its token check.
  await registerOpenApi(app, { auth: config.KINDLING_API_TOKEN !== undefined })
  await app.register(apiPlugin, {
    store, codeStore, builder, executor, pools, releases, canary, events, logs, routerSnapshot: () => table.snapshot(), runtimeKinds: RUNTIME_KINDS, apiToken: config.KINDLING_API_TOKEN,
    loadGuardState: loadGuard === undefined ? undefined : (fn: string) => loadGuard.state(fn), callStats, triggers: triggers?.store,
    shareCode: codeShare === undefined ? undefined : (hash: string) => codeShare.publish(hash),
    sharedEvents: sharedEvents === undefined ? undefined : (opts) => sharedEvents.list(opts),
    cluster: shared === undefined || replicas === undefined ? undefined : () => ({ store: 'redis' as const, replica: shared.replicaId, replicas: replicas.ids }),
    asyncQueue: asyncPart?.queue,
    workflows: workflows.routes,
  })
  await app.register(workflowStartPlugin, workflows.routes)
  await app.register(uiPlugin, { dir: join(REPO_ROOT, 'dist', 'ui') })
  metrics.setPoolSource(() => pools.snapshot())

  // Issue 13: the routers of a cluster ask this controller for instances over the network.
  let executorPort: number | undefined
  const executorServer = controller ? new RemoteExecutorServer({
    executor, controller: leader?.elector.identity ?? `controller-${platformId}`, token: config.KINDLING_EXECUTOR_TOKEN, log: log.child({ component: 'executor-server' }),
  }) : undefined
  try {
    await app.listen({ host: config.KINDLING_HOST, port: config.KINDLING_PORT })
    executorPort = await executorServer?.listen(config.KINDLING_HOST, config.KINDLING_EXECUTOR_PORT)
  } catch (err) {
    await app.close().catch(() => {})
    await executorServer?.close().catch(() => {})
    await leader?.elector.stop()
    await loadGuard?.stop()
    canary.close()
    sync?.close()
    await replicas?.stop()
    await triggers?.close()
    await workflows.close(0)
    await pools.close()
    await kube?.codeServer.close()
    await shared?.close()
    throw new KdlError('KDL_ERR_INTERNAL', `cannot listen on ${config.KINDLING_HOST}:${config.KINDLING_PORT}${controller ? ` / ${config.KINDLING_EXECUTOR_PORT}` : ''}: ${(err as Error).message}`, { cause: err })
  }
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : config.KINDLING_PORT
  const host = config.KINDLING_HOST.includes(':') ? `[${config.KINDLING_HOST}]` : config.KINDLING_HOST
  // Redis away right now: the periodic reload (30 s) schedules them when it is back.
  await triggers?.start().catch((err: unknown) => log.warn({ err }, 'triggers not loaded yet'))
  await asyncPart?.start(`http://${host}:${port}`)
  // Unfinished runs (a restart) resume once the platform serves their functions.
  await workflows.engine.start()
  log.info({ port, backend: backend.name, dataDir }, 'kindling is up')

  let closing: Promise<void> | undefined
  return {
    url: `http://${host}:${port}`,
    port,
    config,
    pools,
    executor,
    releases,
    workflows,
    loadGuard,
    invoke,
    routes,
    executorPort,
    lost: leader?.lost,
    close: () => {
      closing ??= (async () => {
        // Routers go on serving warm calls from the instances they hold; the next leader adopts those.
        await executorServer?.close()
        canary.close()
        sync?.close()
        await replicas?.stop()
        await triggers?.close()
        await loadGuard?.stop()
        await builder.close()
        // Async workers first: they call through the router (jobs in flight finish, bounded; the rest stay pending).
        await asyncPart?.close(SHUTDOWN_GRACE_MS)
        // Workflow steps call through the router too: those in flight finish and are recorded; timers stay stored.
        await workflows.close(SHUTDOWN_GRACE_MS)
        // Stop accepting, let the calls in flight finish (bounded), then cut what is left: a client may
        // keep an idle keep-alive connection open that would otherwise hold the close for its timeout.
        const closed = app.close()
        await table.whenIdle(SHUTDOWN_GRACE_MS)
        app.server.closeAllConnections()
        await closed
        await pools.close({ keepLeased: controller })
        await kube?.codeServer.close()
        // Last: the Lease is given up only once this controller has stopped acting, so two never act at once.
        await leader?.elector.stop()
        await releases.settled()
        await store.close()
        await shared?.close()
      })()
      return closing
    },
  }
}

/** The host's MemAvailable, MiB (the kernel's estimate of what can be given without swapping); free memory where /proc has none. */
function hostAvailableMb(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'))
    if (m !== null) return Number(m[1]) / 1024
  } catch { /* not Linux */ }
  return freemem() / 1048576
}

function outputLimits(config: Config): OutputLimits {
  return { maxLine: config.KINDLING_LOG_MAX_LINE, linesPerSec: config.KINDLING_LOG_LINES_PER_SEC, burst: 2 * config.KINDLING_LOG_LINES_PER_SEC }
}

async function createBackend(config: Config, platformId: string, runDir: string, codeRoot: string, log: Logger): Promise<ContainerBackend> {
  if (config.KINDLING_BACKEND === 'docker') return createDockerBackend(config, platformId, runDir, codeRoot, log)
  const isRoot = process.getuid?.() === 0
  const [uid, gid] = config.KINDLING_INSTANCE_USER.split(':').map(Number) as [number, number]
  const cgroups = isRoot ? await detectCgroups() : undefined
  const namespaces = isRoot && spawnSync('/usr/bin/unshare', ['--pid', '--fork', '--mount', '--ipc', '--net', '--mount-proc', '--', '/bin/true']).status === 0
  log.info({ cgroups: cgroups?.version ?? 'none', namespaces, user: isRoot ? `${uid}:${gid}` : 'platform' }, 'process backend isolation')
  const spawner = new Spawner({ node: process.execPath, script: SPAWNER_SCRIPT })
  await spawner.ready()
  const mounter = namespaces ? await startMounter(log) : undefined
  const quarantineCpuset = cgroups?.version === 1 ? await QuarantineCpuset.create({ cpus: config.KINDLING_QUARANTINE_CPUS }) : undefined
  const backend = new ProcessBackend({
    platformId,
    quarantineCpuset,
    spawner,
    mounter,
    runDir,
    codeRoot,
    // The data directory holds the store (every spec, its env), the code cache and every instance's socket.
    hidden: [dirname(runDir)],
    runtimes: { node: { command: config.KINDLING_NODE_BIN ?? process.execPath, serverDir: NODE_SERVER_DIR, serverFile: 'server.mjs', buildFile: 'build.mjs' } },
    cgroups,
    user: isRoot ? { uid, gid } : undefined,
    namespaces,
    startTimeoutMs: config.KINDLING_START_TIMEOUT_MS,
    output: outputLimits(config),
    log: log.child({ component: 'backend', backend: 'process' }),
  })
  await backend.init()
  return backend
}

/**
 * npm as builds use it: KINDLING_NPM_DIR, else the npm beside the node binary, else the one on PATH; the
 * registry is KINDLING_BUILD_REGISTRY, else the one the host's npm is configured with.
 */
async function findNpm(config: Config): Promise<NpmSetup> {
  const nodeBin = config.KINDLING_NODE_BIN ?? process.execPath
  const candidates = config.KINDLING_NPM_DIR !== undefined ? [config.KINDLING_NPM_DIR] : [join(dirname(nodeBin), '..', 'lib', 'node_modules', 'npm')]
  if (config.KINDLING_NPM_DIR === undefined) {
    for (const dir of (process.env['PATH'] ?? '').split(':')) {
      const real = await realpath(join(dir, 'npm')).catch(() => undefined)
      if (real?.endsWith(join('bin', 'npm-cli.js')) === true) candidates.push(dirname(dirname(real)))
    }
  }
  for (const dir of candidates) {
    const pkg = await readFile(join(dir, 'package.json'), 'utf8').then((t) => JSON.parse(t) as { name?: string; version?: string }, () => undefined)
    if (pkg?.name !== 'npm' || typeof pkg.version !== 'string' || !existsSync(join(dir, 'bin', 'npm-cli.js'))) continue
    let registry = config.KINDLING_BUILD_REGISTRY
    if (registry === undefined) {
      const got = spawnSync(nodeBin, [join(dir, 'bin', 'npm-cli.js'), 'config', 'get', 'registry'], { encoding: 'utf8', timeout: 30_000 })
      registry = got.status === 0 ? got.stdout.trim() : 'https://registry.npmjs.org/'
    }
    if (!/^https?:\/\//.test(registry)) throw new KdlError('KDL_ERR_BAD_REQUEST', `the registry "${registry}" is not an http(s) URL (KINDLING_BUILD_REGISTRY)`)
    return { dir: await realpath(dir), version: pkg.version, registry }
  }
  throw new KdlError('KDL_ERR_SANDBOX_UNAVAILABLE', `no npm found (looked in ${candidates.join(', ')}; set KINDLING_NPM_DIR)`)
}

/** The load-time code binder (backends/process/spawner/mounter.pl); without perl the backend spawns `mount -N` per load. */
async function startMounter(log: Logger): Promise<NsMounter | undefined> {
  const perl = '/usr/bin/perl'
  if (!existsSync(perl)) {
    log.warn('no /usr/bin/perl: each load binds its code with a spawned mount -N (slower first calls)')
    return undefined
  }
  const m = NsMounter.create({ perl, script: MOUNTER_SCRIPT })
  if (m === undefined) return undefined
  try {
    await m.ready()
    return m
  } catch (err) {
    log.warn({ err }, 'the mounter did not start: each load binds its code with a spawned mount -N')
    await m.close().catch(() => {})
    return undefined
  }
}

async function createDockerBackend(config: Config, platformId: string, runDir: string, codeRoot: string, log: Logger): Promise<ContainerBackend> {
  const docker = new Dockerode({ socketPath: config.KINDLING_DOCKER_SOCKET })
  try {
    await docker.ping()
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `no Docker engine answers on ${config.KINDLING_DOCKER_SOCKET} (run scripts/ensure-docker.sh as root)`, { cause: err })
  }
  const imageLog = log.child({ component: 'images' })
  const image = await ensureNodeImage({
    docker,
    serverDir: NODE_SERVER_DIR,
    nodeBin: config.KINDLING_NODE_BIN,
    log: (message, fields) => imageLog.info(fields ?? {}, message),
  })
  return new DockerBackend({
    platformId,
    docker,
    image: image.tag,
    runDir,
    codeRoot,
    user: config.KINDLING_INSTANCE_USER,
    startTimeoutMs: config.KINDLING_START_TIMEOUT_MS,
    output: outputLimits(config),
    quarantineCpus: config.KINDLING_QUARANTINE_CPUS !== '' ? config.KINDLING_QUARANTINE_CPUS : availableParallelism() > 1 ? String(availableParallelism() - 1) : undefined,
    log: log.child({ component: 'backend', backend: 'docker' }),
  })
}

/**
 * `kindling images build`: builds the node runtime image for the docker backend (also done at `up` when
 * missing). `force` rebuilds even when the tag exists.
 */
export async function buildImages(opts: { env: Record<string, string | undefined>; force: boolean; progress: (line: string) => void }): Promise<{ tag: string; built: boolean; ms: number; size: number }> {
  const config = loadConfig(opts.env)
  const docker = new Dockerode({ socketPath: config.KINDLING_DOCKER_SOCKET })
  try {
    await docker.ping()
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `no Docker engine answers on ${config.KINDLING_DOCKER_SOCKET} (run scripts/ensure-docker.sh as root)`, { cause: err })
  }
  const build = opts.force ? buildNodeImage : ensureNodeImage
  return build({ docker, serverDir: NODE_SERVER_DIR, nodeBin: config.KINDLING_NODE_BIN, log: (message) => opts.progress(message) })
}
