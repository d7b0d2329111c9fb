import { once } from 'node:events'
import { chown, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { isAbsolute, join, relative } from 'node:path'
import type { Logger } from 'pino'
import { BACKGROUND_SHARES, SERVING_SHARES, type CgroupRef, type ContainerBackend, type ExitReason, type InstanceExit, type InstanceHandle, type InstanceRequest } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import type { QuarantineCpuset } from '../cgroups/cpuset.js'
import { wrapCommand, type CgroupDriver } from '../cgroups/index.js'
import type { SpawnedProcess, Spawner } from '../spawner/client.js'
import { waitForSocket, waitHealthy } from './readiness.js'

/** Host-wide cgroup roots; each platform's instances live one level down, under its platform id. */
export const CGROUP_ROOT = 'kindling'
export const QUARANTINE_ROOT = 'kindling-quarantine'
/** cpu.shares of the quarantine root: quarantined instances of every platform share this small weight. */
export const QUARANTINE_SHARES = 64

/** How to run one runtime's server: `node <serverDir>/server.mjs` for the node runtime. */
export interface RuntimeCommand {
  /** Interpreter binary (outside any data directory: it is run by path in every namespace). */
  command: string
  /** Host directory holding the runtime server's files. */
  serverDir: string
  /** The server's file within `serverDir`. */
  serverFile: string
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
  /** Host directory of the content-addressed code cache (mounted read-only into each instance). */
  codeRoot: string
  /** Command of each runtime's server. */
  runtimes: Record<string, RuntimeCommand>
  /** cgroup driver when the host lets us create groups; without it instances run unlimited. */
  cgroups?: CgroupDriver | undefined
  /** CPUs quarantined instances are confined to (v1 cpuset), when the host has them. */
  quarantineCpuset?: QuarantineCpuset | undefined
  /** uid/gid instances run as; only honoured when the platform runs as root. */
  user?: { uid: number; gid: number } | undefined
  /** Run each instance in its own pid/mount/ipc namespaces with a private /tmp (needs root + unshare). */
  namespaces: boolean
  startTimeoutMs: number
  log: Logger
}

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
  stopping: boolean
  exited: Promise<void>
  reason?: ExitReason
}

const SH = '/bin/sh'
const UNSHARE = '/usr/bin/unshare'
const SETPRIV = '/usr/bin/setpriv'
const ENV = '/usr/bin/env'
/**
 * Where an instance sees its own directory, the code cache and the runtime server inside its mount
 * namespace. Fixed paths, because the private /tmp would hide a data directory that lives under /tmp.
 */
export const NS_ROOT = '/run/kindling'
const NS_INSTANCE = `${NS_ROOT}/instance`
const NS_CODE = `${NS_ROOT}/code`
const NS_RUNTIME = `${NS_ROOT}/runtime`
/** Inside the new mount namespace: bind the three directories, then the instance's own tmp over /tmp. */
const MOUNT_NS = [
  `mount --bind "$1" ${NS_INSTANCE}`,
  `mount --bind -o ro "$2" ${NS_CODE}`,
  `mount --bind -o ro "$3" ${NS_RUNTIME}`,
  'mount --bind "$1/tmp" /tmp',
  'shift 3',
  'exec "$@"',
].join(' && ')

/**
 * The embedded default backend: each instance is a child process (SOCK-style lean container) in its own
 * cgroup, namespaces and /tmp, as an unprivileged user, listening on a Unix socket in its own directory.
 */
export class ProcessBackend implements ContainerBackend {
  readonly name = 'process'
  readonly #opts: ProcessBackendOptions
  readonly #live = new Map<string, Live>()
  readonly #exitListeners: Array<(exit: InstanceExit) => void> = []
  readonly #reasons = new Map<string, ExitReason>()
  readonly #stopping = new Map<string, Promise<void>>()
  readonly #parent: string
  readonly #quarantineParent: string
  #closed = false

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
    for (const d of [NS_INSTANCE, NS_CODE, NS_RUNTIME]) await mkdir(d, { recursive: true, mode: 0o755 })
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
    const dir = join(this.#opts.runDir, req.id)
    const tmp = join(dir, 'tmp')
    const socketPath = join(dir, 'rt.sock')
    const user = this.#opts.user
    await mkdir(tmp, { recursive: true, mode: 0o755 })
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

    const ns = this.#opts.namespaces
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
      argv = [UNSHARE, '--pid', '--fork', '--kill-child', '--mount', '--ipc', '--mount-proc', '--', SH, '-c', MOUNT_NS, 'kindling-ns', dir, this.#opts.codeRoot, rt.serverDir, ...argv]
    }
    let [command, ...args] = argv as [string, ...string[]]
    // Joins the cgroups before exec: nothing of the instance runs unlimited, not even for a moment.
    if (cgroup !== undefined && cg !== undefined) {
      const join = cg.procsFiles(cgroup)
      const pin = req.quarantine === true ? this.#opts.quarantineCpuset : undefined
      ;({ command, args } = wrapCommand(pin === undefined ? join : [...join, pin.procsFile], command, args))
    }
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
      child = await this.#opts.spawner.spawn({ id: req.id, command, args, env, cwd: dir })
    } catch (err) {
      if (cgroup !== undefined && cg !== undefined) await cg.destroy(cgroup)
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    const startFailed = new AbortController()
    const exited = once(child, 'exit').then(() => undefined, () => undefined)
    child.once('error', (err: Error) => startFailed.abort(new KdlError('KDL_ERR_BACKEND', `instance ${req.id} failed`, { cause: err })))
    child.once('exit', (code: number | null, signal: string | null) => startFailed.abort(new KdlError('KDL_ERR_BACKEND', `instance ${req.id} exited during start (code ${code}, signal ${signal})`)))
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
    } catch (err) {
      await this.stop(req.id)
      throw err instanceof KdlError ? err : new KdlError('KDL_ERR_BACKEND', `instance ${req.id} did not become healthy`, { cause: err })
    }
    this.#opts.log.debug({ instance: req.id, pool: req.pool, ms: Math.round(performance.now() - t0) }, 'instance started')
    child.once('exit', (code: number | null, signal: NodeJS.Signals | null) => {
      this.#onExit(live, code, signal).catch((err: unknown) => this.#opts.log.error({ err, instance: req.id }, 'exit handling failed'))
    })
    return { id: req.id, runtime: req.runtime, pool: req.pool, address: { socketPath }, pid: child.pid, cgroup, startedAt: Date.now() }
  }

  async #onExit(live: Live, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (live.stopping) return
    const id = live.meta.id
    let reason: ExitReason = code === 0 ? 'exited' : 'crashed'
    if (live.meta.cgroup !== undefined && this.#opts.cgroups !== undefined) {
      const stats = await this.#opts.cgroups.stats(live.meta.cgroup).catch(() => undefined)
      if (stats !== undefined && stats.oomKills > 0) reason = 'oom'
    }
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

  #pipeLogs(child: SpawnedProcess, instance: string): void {
    const log = this.#opts.log
    child.on('line', (stream: 'stdout' | 'stderr', line: string) => {
      if (stream === 'stdout') log.info({ instance, stream, line }, 'instance output')
      else log.warn({ instance, stream, line }, 'instance output')
    })
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

  async prepareCode(_id: string, hostCodeDir: string): Promise<string> {
    if (!this.#opts.namespaces) return hostCodeDir
    const rel = relative(this.#opts.codeRoot, hostCodeDir)
    if (rel.startsWith('..') || isAbsolute(rel)) throw new KdlError('KDL_ERR_BACKEND', `code directory ${hostCodeDir} is outside the code cache`)
    return join(NS_CODE, rel)
  }

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
    if (live.meta.cgroup !== undefined && this.#opts.cgroups !== undefined) {
      const stats = await this.#opts.cgroups.stats(live.meta.cgroup).catch(() => undefined)
      if (stats !== undefined && stats.oomKills > 0) return 'oom'
    }
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
    await Promise.all([...this.#live.keys()].map((id) => this.stop(id)))
    await this.#opts.spawner.close()
  }
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
