import { constants as fsConstants } from 'node:fs'
import { access, chmod, chown, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { isAbsolute, join, relative } from 'node:path'
import type { Logger } from 'pino'
import { BACKGROUND_SHARES, CGROUP_ROOT, KILLED_DETAILS, QUARANTINE_ROOT, QUARANTINE_SHARES, killedFromOutside, SERVING_SHARES, type BuildJob, type BuildJobResult, type CgroupRef, type ContainerBackend, type ExitReason, type InstanceExit, type InstanceHandle, type InstanceOutput, type InstanceRequest, DEFAULT_OUTPUT_LIMITS, type OutputLimits } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import type { QuarantineCpuset } from '../../cgroups/cpuset.js'
import { wrapCommand, type CgroupDriver } from '../../cgroups/index.js'
import type { SpawnedProcess, Spawner } from './spawner/client.js'
import type { NsMounter } from './spawner/mounter.js'
import { chownTree } from '../chown-tree.js'
import { waitForSocket, waitHealthy } from '../readiness.js'

/** How to run one runtime's server: `node <serverDir>/server.mjs` for the node runtime. */
export interface RuntimeCommand {
  /** Interpreter binary (outside any data directory: it is run by path in every namespace). */
  command: string
  /** Host directory holding the runtime server's files. */
  serverDir: string
  /** The server's file within `serverDir`. */
  serverFile: string
  /** The runtime's build step within `serverDir` (`build.mjs`: npm), when it has one (issue 9). */
  buildFile?: string | undefined
}

export interface ProcessBackendOptions {
  /**
   * This platform's id (common/platform-id.ts): instance cgroups live under `kindling/<id>/` and
   * `kindling-quarantine/<id>/`, so two platforms on one host never reap or destroy each other's instances.
   */
  platformId: string
  /** Per-instance directories (socket, private tmp, meta.json) live here. */
  runDir: string
  /** Starts the instance processes (a small helper process, so fork() never stalls the platform); closed by close(). */
  spawner: Spawner
  /**
   * Host directory of the content-addressed code cache. A namespaced instance sees none of it until its
   * load, and then only its own function's directory (see {@link NS_CODE}).
   */
  codeRoot: string
  /**
   * Host directories made unreachable inside every instance's namespaces (an empty read-only tmpfs over
   * each): the data directory, with its store (every spec and its env), other instances' sockets, the cache.
   * @default []
   */
  hidden?: readonly string[] | undefined
  /**
   * Binds code into namespaces without a process spawn (closed by close()); without it each load spawns
   * `mount -N` through the spawner (~10 ms here).
   */
  mounter?: NsMounter | undefined
  /** slirp4netns binary for `network: egress`. @default "/usr/bin/slirp4netns" */
  slirp4netns?: string | undefined
  /** Command of each runtime's server. */
  runtimes: Record<string, RuntimeCommand>
  /** cgroup driver when the host lets us create groups; without it instances run unlimited. */
  cgroups?: CgroupDriver | undefined
  /** CPUs quarantined instances are confined to (v1 cpuset), when the host has them. */
  quarantineCpuset?: QuarantineCpuset | undefined
  /** uid/gid instances run as; only honoured when the platform runs as root. */
  user?: { uid: number; gid: number } | undefined
  /**
   * Run each instance in its own pid/mount/ipc/network namespaces with a private /tmp (needs root +
   * unshare): `network: none` has only `lo`, `network: egress` gets slirp4netns without the host's loopback.
   */
  namespaces: boolean
  startTimeoutMs: number
  /** Bounds on each instance's output, applied in the spawner before a line reaches the platform. @default DEFAULT_OUTPUT_LIMITS */
  output?: OutputLimits | undefined
  log: Logger
}

const UNSHARE_STOP_NOISE = 'unshare: sigprocmask unblock failed'

interface Meta {
  id: string
  pool: string
  runtime: string
  pid: number
  cgroup?: CgroupRef | undefined
}

interface Live {
  meta: Meta
  child: SpawnedProcess
  /** slirp4netns of a `network: egress` instance (in the instance's cgroup), stopped with it. */
  net?: SpawnedProcess | undefined
  /** The host code directory bound at NS_CODE, once its load prepared it. */
  code?: { dir: string; mounted: Promise<void> } | undefined
  stopping: boolean
  exited: Promise<void>
  reason?: ExitReason
}

const SH = '/bin/sh'
const UNSHARE = '/usr/bin/unshare'
const SETPRIV = '/usr/bin/setpriv'
const ENV = '/usr/bin/env'
const MOUNT = '/usr/bin/mount'
export const SLIRP4NETNS = '/usr/bin/slirp4netns'
const IP_CANDIDATES = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', '/bin/ip']
/** MTU of the slirp4netns tap device: its documented fast setting (the default 1500 costs throughput). */
const SLIRP_MTU = 65520
/** slirp4netns's DNS forwarder, as the instance sees it. */
const SLIRP_DNS = '10.0.2.3'
/**
 * Where an instance sees its own directory, its function's code and the runtime server inside its mount
 * namespace. Fixed paths, because the private /tmp would hide a data directory that lives under /tmp.
 */
export const NS_ROOT = '/run/kindling'
const NS_INSTANCE = `${NS_ROOT}/instance`
/**
 * The function's code, bound here at load time by the platform, from the host, into the instance's mount
 * namespace. Until then it is a root-only (0700) directory holding the cache at `cache/`: the load binds
 * `cache/<hash>` onto this directory itself, which covers the cache, so from then on the namespace reaches
 * no code but its own, by any path; and nothing but the runtime server runs before the load (issue 8).
 */
export const NS_CODE = `${NS_ROOT}/code`
const NS_STAGE = `${NS_CODE}/cache`
const NS_RUNTIME = `${NS_ROOT}/runtime`
/** A build instance's own directory (read-write) and npm (read-only), in its mount namespace. */
const NS_BUILD = `${NS_ROOT}/build`
const NS_NPM = `${NS_ROOT}/npm`

/**
 * Inside the new namespaces, as root, before dropping to the instance user: `lo` up, bind the instance
 * directory, the cache (staged, see NS_CODE) and the runtime, the instance's own tmp over /tmp, then an
 * empty tmpfs over each hidden host directory still reachable (one under /tmp is already gone).
 */
function mountScript(ip: string | undefined, hidden: readonly string[]): string {
  return [
    ...(ip !== undefined ? [`${ip} link set lo up`] : []),
    `mount --bind "$1" ${NS_INSTANCE}`,
    `mount --bind -o ro "$2" ${NS_STAGE}`,
    `mount --bind -o ro "$3" ${NS_RUNTIME}`,
    // An egress instance resolves through slirp4netns (10.0.2.3 forwards to the host's resolver, which
    // may itself be on the host's loopback, out of the instance's reach). Before /tmp is replaced: "$1"
    // may be under /tmp.
    '{ [ ! -f "$1/resolv.conf" ] || [ ! -e /etc/resolv.conf ] || mount --bind -o ro "$1/resolv.conf" /etc/resolv.conf; }',
    'mount --bind "$1/tmp" /tmp',
    ...hidden.map((d) => `{ [ ! -d ${shQuote(d)} ] || mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k,mode=000 kindling-hidden ${shQuote(d)}; }`),
    'shift 3',
    'exec "$@"',
  ].join(' && ')
}

/**
 * The build instance's namespace (issue 9): `lo` up (the build step relays npm's proxy connections from
 * 127.0.0.1 to the registry proxy's socket), its directory read-write, the runtime's files and npm
 * read-only, its own tmp over /tmp, the hidden directories covered — as for instances, without the code.
 */
function buildMountScript(ip: string, hidden: readonly string[]): string {
  return [
    `${ip} link set lo up`,
    `mount --bind "$1" ${NS_BUILD}`,
    `mount --bind -o ro "$2" ${NS_RUNTIME}`,
    `mount --bind -o ro "$3" ${NS_NPM}`,
    'mount --bind "$1/tmp" /tmp',
    ...hidden.map((d) => `{ [ ! -d ${shQuote(d)} ] || mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k,mode=000 kindling-hidden ${shQuote(d)}; }`),
    'shift 3',
    'exec "$@"',
  ].join(' && ')
}

function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`
}

/**
 * The embedded default backend: each instance is a child process (SOCK-style lean container) in its own
 * cgroup, namespaces and /tmp, as an unprivileged user, listening on a Unix socket in its own directory.
 */
export class ProcessBackend implements ContainerBackend {
  readonly name = 'process'
  /**
   * ~9 starts/s from 4 at once on 2 CPUs, and a start is cheap: up to 8 per CPU (one start ≈ 1.7 s) the
   * starts keep their share of a busy CPU — fewer, and under load the calls waiting for them fall behind.
   */
  readonly parallelStarts = 8 * availableParallelism()
  readonly #opts: ProcessBackendOptions
  readonly #live = new Map<string, Live>()
  readonly #exitListeners: Array<(exit: InstanceExit) => void> = []
  readonly #outputListeners: Array<(output: InstanceOutput) => void> = []
  readonly #reasons = new Map<string, ExitReason>()
  readonly #stopping = new Map<string, Promise<void>>()
  readonly #parent: string
  readonly #quarantineParent: string
  #closed = false
  /** The `sh -c` script run inside each instance's new namespaces (set by init()). */
  #mountNs = ''
  /** The same for build instances; '' when builds cannot be sandboxed (no `ip`). */
  #buildNs = ''
  #hidden: readonly string[] = []
  #slirp = false
  get #slirpBin(): string { return this.#opts.slirp4netns ?? SLIRP4NETNS }

  constructor(opts: ProcessBackendOptions) {
    this.#opts = opts
    this.#parent = `${CGROUP_ROOT}/${opts.platformId}`
    this.#quarantineParent = `${QUARANTINE_ROOT}/${opts.platformId}`
  }

  /** Creates the fixed mount points the namespaces bind onto (empty directories, once per host). */
  async init(): Promise<void> {
    // The quarantine parent's small share is what quarantine means here (issue 5): set it with or without namespaces.
    if (this.#opts.cgroups !== undefined) {
      await this.#opts.cgroups.ensureParent(this.#parent)
      await this.#opts.cgroups.ensureParent(QUARANTINE_ROOT, { cpuShares: QUARANTINE_SHARES })
      await this.#opts.cgroups.ensureParent(this.#quarantineParent)
    }
    if (!this.#opts.namespaces) return
    for (const d of [NS_INSTANCE, NS_STAGE, NS_RUNTIME, NS_BUILD, NS_NPM]) await mkdir(d, { recursive: true, mode: 0o755 })
    await chmod(NS_CODE, 0o700)
    let ip: string | undefined
    for (const c of IP_CANDIDATES) if (ip === undefined && await isExecutable(c)) ip = c
    // With the mounter, `lo` comes up with the code at load (no `ip` process in every start: ~10 ms of CPU
    // here). Without `ip` either, the namespace is just as closed, only its own 127.0.0.1 does not answer.
    const hostIp = ip
    if (this.#opts.mounter !== undefined) ip = undefined
    else if (ip === undefined) this.#opts.log.warn('no `ip` (iproute2): instances run with their loopback down (scripts/ensure-sandbox.sh installs it)')
    this.#slirp = await isExecutable(this.#slirpBin)
    // A hidden directory must not cover what the instance runs from (a data directory of /, /run, /usr…).
    const needed = [NS_ROOT, ...Object.values(this.#opts.runtimes).flatMap((r) => [r.serverDir, r.command])]
    const hidden = (this.#opts.hidden ?? []).filter((d) => {
      const covers = needed.some((n) => { const rel = relative(d, n); return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel)) })
      if (covers) this.#opts.log.warn({ dir: d }, 'cannot hide this directory from instances: the runtime or /run/kindling is inside it')
      return !covers
    })
    this.#mountNs = mountScript(ip, hidden)
    this.#hidden = hidden
    this.#buildNs = hostIp === undefined ? '' : buildMountScript(hostIp, hidden)
  }

  /** Starts in progress: close() waits for them, so none can finish after it and leave an orphan. */
  readonly #starting = new Set<Promise<unknown>>()

  start(req: InstanceRequest): Promise<InstanceHandle> {
    const p = this.#start(req)
    const settled = p.then(() => {}, () => {})
    this.#starting.add(settled)
    void settled.then(() => this.#starting.delete(settled))
    return p
  }

  async #start(req: InstanceRequest): Promise<InstanceHandle> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the process backend is closed')
    const rt = this.#opts.runtimes[req.runtime]
    if (rt === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${req.runtime}" has no server command on the process backend`)
    const ns = this.#opts.namespaces
    if (ns && req.network === 'egress' && !this.#slirp) {
      throw new KdlError('KDL_ERR_SANDBOX_UNAVAILABLE', `network "egress" on the process backend needs ${this.#slirpBin} (Debian package slirp4netns; scripts/ensure-sandbox.sh installs it as root)`)
    }
    const dir = join(this.#opts.runDir, req.id)
    const tmp = join(dir, 'tmp')
    const socketPath = join(dir, 'rt.sock')
    const user = this.#opts.user
    await mkdir(tmp, { recursive: true, mode: 0o755 })
    if (ns && req.network === 'egress') await writeFile(join(dir, 'resolv.conf'), `nameserver ${SLIRP_DNS}\n`, { mode: 0o444 })
    if (user !== undefined) {
      await chown(dir, user.uid, user.gid)
      await chown(tmp, user.uid, user.gid)
    }

    let cgroup: CgroupRef | undefined
    const cg = this.#opts.cgroups
    if (cg !== undefined) {
      cgroup = await cg.create(req.quarantine === true ? this.#quarantineParent : this.#parent, req.id, {
        cpu: req.cpu,
        memoryBytes: req.memoryMb * 1024 * 1024,
        pidsLimit: req.pidsLimit,
      })
      if (req.background === true) await cg.setShares(cgroup, BACKGROUND_SHARES)
    }

    const env: Record<string, string> = {
      ...req.env,
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: ns ? '/tmp' : tmp,
      TMPDIR: ns ? '/tmp' : tmp,
      KINDLING_LISTEN: `unix:${ns ? `${NS_INSTANCE}/rt.sock` : socketPath}`,
    }
    // `env -u`: a spawn wrapper of the platform's own process (test runners, APMs) may inject NODE_OPTIONS
    // into every child; the instance's environment is the one built above and nothing else.
    let argv = [ENV, '-u', 'NODE_OPTIONS', '--', rt.command, join(ns ? NS_RUNTIME : rt.serverDir, rt.serverFile), `--kindling-instance=${req.id}`]
    if (user !== undefined) argv = [SETPRIV, `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--no-new-privs', '--', ...argv]
    if (ns) {
      argv = [UNSHARE, '--pid', '--fork', '--kill-child', '--mount', '--ipc', '--net', '--mount-proc', '--', SH, '-c', this.#mountNs, 'kindling-ns', dir, this.#opts.codeRoot, rt.serverDir, ...argv]
    }
    const inCgroup = (argv: string[]): { command: string; args: string[] } => {
      const [command, ...args] = argv as [string, ...string[]]
      // Joins the cgroups before exec: nothing of the instance runs unlimited, not even for a moment.
      if (cgroup === undefined || cg === undefined) return { command, args }
      const join = cg.procsFiles(cgroup)
      const pin = req.quarantine === true ? this.#opts.quarantineCpuset : undefined
      return wrapCommand(pin === undefined ? join : [...join, pin.procsFile], command, args)
    }
    const { command, args } = inCgroup(argv)
    // close() may have run during the awaits above; it could not see this instance, so nothing may start.
    if (this.#closed) {
      if (cgroup !== undefined && cg !== undefined) await cg.destroy(cgroup)
      await rm(dir, { recursive: true, force: true })
      throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the process backend is closed')
    }
    // On record before the process exists: a platform that dies from here on leaves an orphan the next
    // start can find (by its run directory and cgroup; the pid follows once known).
    const meta: Meta = { id: req.id, pool: req.pool, runtime: req.runtime, pid: -1, cgroup }
    await writeFile(join(dir, 'meta.json'), JSON.stringify(meta))
    let child: SpawnedProcess
    try {
      const o = this.#opts.output ?? DEFAULT_OUTPUT_LIMITS
      child = await this.#opts.spawner.spawn({ id: req.id, command, args, env, cwd: dir, output: { maxLine: o.maxLine, rate: o.linesPerSec, burst: o.burst } })
    } catch (err) {
      if (cgroup !== undefined && cg !== undefined) await cg.destroy(cgroup)
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    const startFailed = new AbortController()
    const exited = child.exited.then(() => undefined)
    child.once('error', (err: Error) => startFailed.abort(new KdlError('KDL_ERR_BACKEND', `instance ${req.id} failed`, { cause: err })))
    void child.exited.then(async ({ code, signal }) => { if (!startFailed.signal.aborted) startFailed.abort(await this.#startExit(meta, code, signal)) })
    meta.pid = child.pid
    const live: Live = { meta, child, stopping: false, exited }
    this.#live.set(req.id, live)
    if (this.#closed) {
      await this.stop(req.id)
      throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the process backend is closed')
    }
    this.#pipeLogs(child, req.id)
    await writeFile(join(dir, 'meta.json'), JSON.stringify(meta))

    const t0 = performance.now()
    try {
      await waitForSocket(socketPath, this.#opts.startTimeoutMs, startFailed.signal)
      await waitHealthy(socketPath, Date.now() + this.#opts.startTimeoutMs, startFailed.signal)
      if (ns && req.network === 'egress') live.net = await this.#startSlirp(req.id, child.pid, inCgroup, startFailed.signal)
    } catch (err) {
      await this.stop(req.id)
      throw err instanceof KdlError ? err : new KdlError('KDL_ERR_BACKEND', `instance ${req.id} did not become healthy`, { cause: err })
    }
    this.#opts.log.debug({ instance: req.id, pool: req.pool, ms: Math.round(performance.now() - t0) }, 'instance started')
    void child.exited.then(({ code, signal }) => this.#onExit(live, code, signal))
      .catch((err: unknown) => this.#opts.log.error({ err, instance: req.id }, 'exit handling failed'))
    return { id: req.id, runtime: req.runtime, pool: req.pool, address: { socketPath }, pid: child.pid, cgroup, startedAt: Date.now() }
  }

  /**
   * Why an instance ended before it was healthy. A SIGKILL that was not its memory limit came from outside
   * (KILLED_DETAILS: the next start would not meet it); one that was is the runtime's limit, and would.
   */
  /** Whether the instance's cgroup saw its memory limit kill a process (false without cgroups). */
  async #oomKilled(meta: Meta): Promise<boolean> {
    if (meta.cgroup === undefined || this.#opts.cgroups === undefined) return false
    const stats = await this.#opts.cgroups.stats(meta.cgroup).catch(() => undefined)
    return stats !== undefined && stats.oomKills > 0
  }

  async #startExit(meta: Meta, code: number | null, signal: string | null): Promise<KdlError> {
    const what = `instance ${meta.id} exited during start (code ${code}, signal ${signal})`
    if (!killedFromOutside(code, signal)) return new KdlError('KDL_ERR_BACKEND', what)
    if (await this.#oomKilled(meta)) return new KdlError('KDL_ERR_BACKEND', `${what}: out of memory (the runtime's memory limit is too small to start it)`)
    return new KdlError('KDL_ERR_BACKEND', what, { details: KILLED_DETAILS })
  }

  async #onExit(live: Live, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (live.stopping) return
    const id = live.meta.id
    const reason: ExitReason = await this.#oomKilled(live.meta) ? 'oom' : code === 0 ? 'exited' : 'crashed'
    this.#remember(id, reason)
    this.#opts.log.warn({ instance: id, code, signal, reason }, 'instance exited')
    // The pools hear of the exit whatever the clean-up says: a cgroup that cannot be removed must not
    // leave a dead instance on record as idle.
    await this.stop(id).catch((err: unknown) => this.#opts.log.error({ err, instance: id }, 'cannot clean up an exited instance'))
    for (const l of this.#exitListeners) {
      try { l({ id, reason, code, signal }) } catch (err) { this.#opts.log.error({ err, instance: id }, 'exit listener threw') }
    }
  }

  #remember(id: string, reason: ExitReason): void {
    this.#reasons.set(id, reason)
    if (this.#reasons.size > 1000) {
      const oldest = this.#reasons.keys().next().value
      if (oldest !== undefined) this.#reasons.delete(oldest)
    }
  }

  onOutput(listener: (output: InstanceOutput) => void): void {
    this.#outputListeners.push(listener)
  }

  /** Instance output, already bounded by the spawner (see OutputLimits), to the output listeners and the debug log. */
  #pipeLogs(child: SpawnedProcess, id: string): void {
    const log = this.#opts.log
    const emit = (output: InstanceOutput): void => {
      for (const l of this.#outputListeners) {
        try { l(output) } catch (err) { log.error({ err, instance: id }, 'output listener threw') }
      }
    }
    child.on('line', (stream: 'stdout' | 'stderr', line: string, truncated: boolean) => {
      // util-linux's unshare says this when the instance is stopped with --kill-child: the sandbox's noise, not the function's.
      if (stream === 'stderr' && line.startsWith(UNSHARE_STOP_NOISE)) return
      log.debug({ instance: id, stream, line }, 'instance output')
      emit({ id, stream, line, truncated })
    })
    child.on('dropped', (stream: 'stdout' | 'stderr', dropped: number) => emit({ id, stream, dropped }))
  }

  stop(id: string): Promise<void> {
    let p = this.#stopping.get(id)
    if (p === undefined) {
      p = this.#stop(id).finally(() => this.#stopping.delete(id))
      this.#stopping.set(id, p)
    }
    return p
  }

  async #stop(id: string): Promise<void> {
    const live = this.#live.get(id)
    const dir = join(this.#opts.runDir, id)
    let meta = live?.meta
    if (meta === undefined) meta = await readMeta(dir)
    if (live !== undefined) {
      live.stopping = true
      if (live.child.exitCode === null && live.child.signalCode === null) {
        // Inner first: the namespace's init dies (taking every process of the namespace with it) and
        // is reaped by `unshare`, our child, which then exits. Killing `unshare` first would orphan
        // the init to the host's pid 1, whose late reaping keeps the cgroup busy.
        const inner = this.#opts.namespaces ? await childrenOf(live.meta.pid) : []
        for (const pid of inner) {
          try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
        }
        const exited = inner.length > 0 && await Promise.race([live.exited.then(() => true), new Promise<false>((r) => setTimeout(r, 2000, false).unref())])
        if (!exited) {
          try { process.kill(-live.meta.pid, 'SIGKILL') } catch { /* already gone */ }
        }
      }
      await live.exited
      await this.#stopSlirp(live)
      this.#live.delete(id)
    }
    const cg = this.#opts.cgroups
    if (cg !== undefined) {
      // Whatever is left (a process that left the group's process group) dies with the group. An orphan
      // without a readable meta.json (its platform died mid-start) is found by its name.
      const refs = meta?.cgroup !== undefined ? [meta.cgroup] : [cg.refFor(this.#parent, id), cg.refFor(this.#quarantineParent, id)]
      for (const ref of refs) await cg.destroy(ref)
    }
    if (live !== undefined) {
      // stopped above
    } else if (meta !== undefined && meta.pid > 0 && await isOurs(meta.pid, id)) {
      try { process.kill(-meta.pid, 'SIGKILL') } catch { try { process.kill(meta.pid, 'SIGKILL') } catch { /* gone */ } }
    }
    await rm(dir, { recursive: true, force: true })
  }

  async list(): Promise<Array<{ id: string; pool: string; runtime: string }>> {
    const out: Array<{ id: string; pool: string; runtime: string }> = []
    let names: string[] = []
    try { names = await readdir(this.#opts.runDir) } catch { return out }
    for (const name of names) {
      const meta = this.#live.get(name)?.meta ?? await readMeta(join(this.#opts.runDir, name))
      out.push({ id: name, pool: meta?.pool ?? 'unknown', runtime: meta?.runtime ?? 'unknown' })
    }
    const cg = this.#opts.cgroups
    if (cg !== undefined) {
      for (const parent of [this.#parent, this.#quarantineParent]) {
        for (const name of await cg.list(parent).catch(() => [] as string[])) {
          if (!out.some((o) => o.id === name)) out.push({ id: name, pool: 'unknown', runtime: 'unknown' })
        }
      }
    }
    return out
  }

  /**
   * Binds the function's code directory, read-only, onto NS_CODE in the instance's mount namespace (through
   * the mounter, else one `mount -N` through the spawner; on the first call's path: see ARCHITECTURE.md). Once per
   * instance: a reload of the same code finds it bound, and other code is refused.
   */
  async prepareCode(id: string, hostCodeDir: string): Promise<string> {
    if (!this.#opts.namespaces) return hostCodeDir
    const rel = relative(this.#opts.codeRoot, hostCodeDir)
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new KdlError('KDL_ERR_BACKEND', `code directory ${hostCodeDir} is outside the code cache`)
    const live = this.#live.get(id)
    if (live === undefined || live.stopping) throw new KdlError('KDL_ERR_BACKEND', `instance ${id} is not running`)
    if (live.code === undefined) {
      const src = join(NS_STAGE, rel)
      const m = this.#opts.mounter
      const mounted = m !== undefined
        ? m.bind(live.meta.pid, src, NS_CODE, true)
        : this.#run(`${id}:code`, [MOUNT, '-N', `/proc/${live.meta.pid}/ns/mnt`, '--no-canonicalize', '--bind', '-o', 'ro', src, NS_CODE])
      live.code = { dir: hostCodeDir, mounted }
      // A failed mount leaves the instance without code: the load that follows fails, and it is destroyed.
      mounted.catch(() => {})
    } else if (live.code.dir !== hostCodeDir) {
      throw new KdlError('KDL_ERR_BACKEND', `instance ${id} already holds the code of ${live.code.dir}`)
    }
    await live.code.mounted
    return NS_CODE
  }

  /** Runs a short root command on the host through the spawner; rejects with its stderr when it fails. */
  async #run(id: string, argv: string[]): Promise<void> {
    const [command, ...args] = argv as [string, ...string[]]
    const proc = await this.#opts.spawner.spawn({ id, command, args, env: { PATH: '/usr/bin:/bin:/usr/sbin:/sbin' }, cwd: '/' })
    const err: string[] = []
    proc.on('line', (_stream: string, line: string) => { if (err.length < 10) err.push(line) })
    const { code, signal } = await proc.exited
    if (code !== 0) throw new KdlError('KDL_ERR_BACKEND', `${command} failed (code ${code}, signal ${signal}): ${err.join(' ')}`)
  }

  /**
   * slirp4netns on the instance's network namespace: a tap device with 10.0.2.100/24, a default route and
   * DNS at 10.0.2.3, outbound TCP/UDP made by slirp's own sockets on the host; `--disable-host-loopback`
   * refuses 10.0.2.2, its alias of the host's 127.0.0.1. In the instance's cgroup, so it dies with it.
   */
  async #startSlirp(id: string, pid: number, inCgroup: (argv: string[]) => { command: string; args: string[] }, failed: AbortSignal): Promise<SpawnedProcess> {
    const { command, args } = inCgroup([this.#slirpBin, '--configure', `--mtu=${SLIRP_MTU}`, '--disable-host-loopback', '--ready-fd=3', String(pid), 'tap0'])
    const net = await this.#opts.spawner.spawn({ id: `${id}:net`, command, args, env: { PATH: '/usr/bin:/bin:/usr/sbin:/sbin' }, cwd: '/', readyFd: 3 })
    const lines: string[] = []
    net.on('line', (_stream: string, line: string) => { if (lines.length < 20) lines.push(line) })
    const ac = new AbortController()
    const timer = setTimeout(() => ac.abort(), this.#opts.startTimeoutMs)
    try {
      await new Promise<void>((resolve, reject) => {
        const fail = (why: string): void => reject(new KdlError('KDL_ERR_BACKEND', `slirp4netns of instance ${id} ${why}: ${lines.join(' ')}`))
        net.once('fd-ready', () => resolve())
        void net.exited.then(({ code, signal }) => fail(`exited (code ${code}, signal ${signal})`))
        ac.signal.addEventListener('abort', () => fail(`was not ready within ${this.#opts.startTimeoutMs} ms`))
        failed.addEventListener('abort', () => reject(failed.reason))
        if (failed.aborted) reject(failed.reason)
      })
    } catch (err) {
      await killSpawned(net)
      throw err
    } finally {
      clearTimeout(timer)
    }
    void net.exited.then(({ code, signal }) => {
      if (this.#live.get(id)?.stopping === false) this.#opts.log.warn({ instance: id, code, signal, output: lines.join(' ') }, 'slirp4netns exited')
    })
    return net
  }

  async #stopSlirp(live: Live): Promise<void> {
    if (live.net !== undefined) await killSpawned(live.net)
  }

  /**
   * One build in a build instance: the instance's cgroup (CPU, memory + swap, pids) joined before exec,
   * new pid/mount/ipc/network namespaces with only `lo`, the build directory the one writable host
   * directory, the data directory covered, uid 65534 without new privileges, a wall-clock limit after which
   * the cgroup is destroyed (every process of the build with it).
   */
  async runBuild(job: BuildJob): Promise<BuildJobResult> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the process backend is closed')
    const rt = this.#opts.runtimes[job.runtime]
    if (rt?.buildFile === undefined) throw new KdlError('KDL_ERR_RUNTIME_NOT_FOUND', `runtime "${job.runtime}" has no build step on the process backend`)
    const ns = this.#opts.namespaces
    if (ns && this.#buildNs === '') {
      throw new KdlError('KDL_ERR_SANDBOX_UNAVAILABLE', 'a build instance needs `ip` (iproute2) for its loopback; scripts/ensure-sandbox.sh installs it as root')
    }
    const needed = [job.npmDir]
    if (this.#hidden.some((d) => needed.some((n) => { const rel = relative(d, n); return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel)) }))) {
      throw new KdlError('KDL_ERR_BACKEND', `npm (${job.npmDir}) is inside a directory builds may not see`)
    }
    const user = this.#opts.user
    if (user !== undefined) await chownTree(job.dir, user.uid, user.gid)
    const cg = this.#opts.cgroups
    const cgroup = cg === undefined ? undefined : await cg.create(this.#parent, job.id, {
      cpu: job.cpu, memoryBytes: job.memoryMb * 1024 * 1024, pidsLimit: job.pidsLimit,
    })
    const inside = ns ? NS_BUILD : job.dir
    const env: Record<string, string> = {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: ns ? '/tmp' : join(job.dir, 'tmp'),
      TMPDIR: ns ? '/tmp' : join(job.dir, 'tmp'),
      KINDLING_BUILD_DIR: inside,
      KINDLING_BUILD_NPM: join(ns ? NS_NPM : job.npmDir, 'bin', 'npm-cli.js'),
      KINDLING_BUILD_REGISTRY: job.registry,
      KINDLING_BUILD_COMMAND: job.command,
    }
    let argv = [ENV, '-u', 'NODE_OPTIONS', '--', rt.command, join(ns ? NS_RUNTIME : rt.serverDir, rt.buildFile), `--kindling-instance=${job.id}`]
    if (user !== undefined) argv = [SETPRIV, `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--no-new-privs', '--', ...argv]
    if (ns) argv = [UNSHARE, '--pid', '--fork', '--kill-child', '--mount', '--ipc', '--net', '--mount-proc', '--', SH, '-c', this.#buildNs, 'kindling-build', job.dir, rt.serverDir, job.npmDir, ...argv]
    const [command0, ...args0] = argv as [string, ...string[]]
    const { command, args } = cgroup === undefined || cg === undefined ? { command: command0, args: args0 } : wrapCommand(cg.procsFiles(cgroup), command0, args0)

    let child: SpawnedProcess
    try {
      child = await this.#opts.spawner.spawn({ id: job.id, command, args, env, cwd: '/' })
    } catch (err) {
      if (cgroup !== undefined && cg !== undefined) await cg.destroy(cgroup)
      throw err
    }
    child.on('line', (stream: 'stdout' | 'stderr', line: string) => job.onLine(stream, line))
    const exited = child.exited
    let ended: 'timeout' | 'aborted' | undefined
    // One destroy of the build's cgroup, shared by a kill and the clean-up after the exit: two at once race
    // on the files of a group being removed (ENODEV).
    let destroying: Promise<void> | undefined
    const destroy = (): Promise<void> => (destroying ??= cgroup !== undefined && cg !== undefined ? cg.destroy(cgroup) : Promise.resolve())
    const kill = async (why: 'timeout' | 'aborted'): Promise<void> => {
      ended ??= why
      if (cgroup !== undefined) await destroy()
      else try { process.kill(-child.pid, 'SIGKILL') } catch { /* gone */ }
    }
    // A failing destroy is reported by the clean-up below, which awaits the same one.
    const timer = setTimeout(() => { kill('timeout').catch(() => {}) }, job.timeoutMs)
    const onAbort = (): void => { kill('aborted').catch(() => {}) }
    job.signal?.addEventListener('abort', onAbort)
    if (job.signal?.aborted === true) onAbort()
    this.#builds.add(kill)
    try {
      const { code, signal } = await exited
      const stats = cgroup !== undefined && cg !== undefined ? await cg.stats(cgroup).catch(() => undefined) : undefined
      const oom = (stats?.oomKills ?? 0) > 0
      const outcome: BuildJobResult['outcome'] = ended ?? (oom ? 'memory' : code === 0 ? 'ok' : 'failed')
      return { outcome, code, signal }
    } finally {
      clearTimeout(timer)
      job.signal?.removeEventListener('abort', onAbort)
      this.#builds.delete(kill)
      await destroy()
    }
  }

  /** Kills of the builds running now (close() ends them). */
  readonly #builds = new Set<(why: 'aborted') => Promise<void>>()

  onExit(listener: (exit: InstanceExit) => void): void {
    this.#exitListeners.push(listener)
  }

  async exitReason(id: string): Promise<ExitReason | undefined> {
    const known = this.#reasons.get(id)
    if (known !== undefined) return known
    const live = this.#live.get(id)
    if (live === undefined) return undefined
    // The call failed before the exit event was processed: wait for it (bounded by the kill below).
    await Promise.race([live.exited, new Promise((r) => setTimeout(r, 2000).unref())])
    await new Promise((r) => setImmediate(r))
    if (await this.#oomKilled(live.meta)) return 'oom'
    return this.#reasons.get(id) ?? (live.child.exitCode === null && live.child.signalCode === null ? undefined : 'crashed')
  }

  /** Moves a running instance onto the quarantine CPUs, or back. */
  async setQuarantine(id: string, on: boolean): Promise<void> {
    const meta = this.#live.get(id)?.meta
    const pin = this.#opts.quarantineCpuset
    if (meta?.cgroup === undefined || this.#opts.cgroups === undefined || pin === undefined) return
    await pin.move(await this.#opts.cgroups.pids(meta.cgroup), on)
  }

  async setPriority(id: string, priority: 'background' | 'serving'): Promise<void> {
    const meta = this.#live.get(id)?.meta
    if (meta?.cgroup === undefined || this.#opts.cgroups === undefined) return
    await this.#opts.cgroups.setShares(meta.cgroup, priority === 'background' ? BACKGROUND_SHARES : SERVING_SHARES)
  }

  async setCpu(id: string, cpu: number): Promise<void> {
    const meta = this.#live.get(id)?.meta
    if (meta?.cgroup === undefined || this.#opts.cgroups === undefined) return
    await this.#opts.cgroups.setCpu(meta.cgroup, cpu)
  }

  /** Stops every instance, then the spawner (which this backend owns from construction on). */
  async close(): Promise<void> {
    this.#closed = true
    // A start past its closed check finds #closed set once its process runs, and stops it itself.
    await Promise.all(this.#starting)
    await Promise.all([...this.#builds].map((kill) => kill('aborted').catch(() => {})))
    await Promise.all([...this.#live.keys()].map((id) => this.stop(id)))
    await this.#opts.spawner.close()
    await this.#opts.mounter?.close()
  }
}


async function isExecutable(path: string): Promise<boolean> {
  try { await access(path, fsConstants.X_OK); return true } catch { return false }
}

/** SIGKILLs a spawned helper (its process group: it was started detached) and waits for its exit. */
async function killSpawned(proc: SpawnedProcess): Promise<void> {
  if (!proc.running) return
  try { process.kill(-proc.pid, 'SIGKILL') } catch { try { process.kill(proc.pid, 'SIGKILL') } catch { /* gone */ } }
  await proc.exited
}

async function readMeta(dir: string): Promise<Meta | undefined> {
  try { return JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as Meta } catch { return undefined }
}

/** Direct children of a process (its main thread's), from procfs. */
async function childrenOf(pid: number): Promise<number[]> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')
    return text.split(' ').filter((x) => x !== '').map(Number)
  } catch {
    return []
  }
}

/** Guards against pid reuse: the process must still carry the instance id on its command line. */
async function isOurs(pid: number, id: string): Promise<boolean> {
  try { return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).includes(`--kindling-instance=${id}`) } catch { return false }
}
