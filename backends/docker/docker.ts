import { availableParallelism } from 'node:os'
import { chmod, chown, copyFile, link, lstat, mkdir, readdir, readlink, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { join, resolve, sep } from 'node:path'
import { createInterface } from 'node:readline'
import { PassThrough, Writable, type Duplex } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import type Dockerode from 'dockerode'
import { BACKGROUND_SHARES, QUARANTINE_ROOT, QUARANTINE_SHARES, SERVING_SHARES, type BuildJob, type BuildJobResult, type ContainerBackend, type ExitReason, type InstanceExit, type InstanceHandle, type InstanceOutput, type InstanceRequest, DEFAULT_OUTPUT_LIMITS, type OutputLimits } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import { IMAGE_NODE, IMAGE_PATH, RUNTIME_DIR } from './images/rootfs.js'
import { dispatcherFor, health } from '../../protocol/runtime-client.js'
import { CgroupLocator } from './docker-cgroup.js'
import { LABEL, backendError, checkId, containerName, followPull, noop, silent, statusOf, tailLogs, type BackendLog, type Live } from './docker-common.js'
import { DockerEvents } from './docker-events.js'
import { chownTree } from '../chown-tree.js'
import { OutputLimiter } from '../output-limit.js'
import { waitForSocket } from '../readiness.js'

export type { BackendLog } from './docker-common.js'

export interface DockerBackendOptions {
  /** This platform's id (common/platform-id.ts): its containers carry `kindling.platform=<id>`; list() sees only those. */
  platformId: string
  /** A dockerode client (constructed by main.ts). */
  docker: Dockerode
  /** Image of runtime instances when the request names none (e.g. `kindling/runtime-node:<version>`). */
  image: string
  /** Image per runtime name, taking precedence over `image`. */
  images?: Record<string, string> | undefined
  /** Host directory for per-instance directories: `<id>/` (socket, bind-mounted at /run/kindling), `<id>-code/` (at /code). */
  runDir: string
  /** Host directory code is prepared from (the code cache); `prepareCode` refuses anything outside it. */
  codeRoot: string
  /** uid:gid of the runtime server inside the container. @default 65534:65534 */
  user?: string | undefined
  /** How long create + start + socket + health may take, ms. */
  startTimeoutMs: number
  /** CPUs quarantined containers are confined to (`CpusetCpus`), e.g. "1"; undefined: no CPU confinement. */
  quarantineCpus?: string | undefined
  /** Size of each instance's tmpfs /tmp, MiB (it counts against the memory limit). @default 64 */
  tmpfsMb?: number | undefined
  /** Bounds on each instance's output as the platform reads it from the engine. @default DEFAULT_OUTPUT_LIMITS */
  output?: OutputLimits | undefined
  log?: BackendLog | undefined
}

/** Container-side paths of the runtime protocol. */
const SOCKET_DIR = '/run/kindling'
const SOCKET_NAME = 'rt.sock'
const CODE_DIR = '/code'
const QUARANTINE_PARENT = `/${QUARANTINE_ROOT}`
/**
 * The bridge network of `network: egress` containers: the engine's default bridge, but with inter-container
 * traffic off (issue 8), so an egress instance reaches the outside and never another instance. Host-wide,
 * shared by every platform on the host, created on first use and left in place.
 */
export const EGRESS_NETWORK = 'kindling-egress'
/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107

/**
 * Instances as Docker containers (dockerode, a real engine): one container per instance, labelled `kindling.*`,
 * limited through HostConfig, read-only root, tmpfs /tmp, no capabilities, no network unless asked for, reached
 * over a Unix socket in a bind-mounted host directory. `close()` stops every instance this backend started
 * (containers left by an earlier run are found by `list()` and reaped by the caller through `stop()`).
 */
export class DockerBackend implements ContainerBackend {
  readonly name = 'docker'
  /** dockerd's rate here is ~2.3 starts/s from 2 at once on 2 CPUs: 2 per CPU keeps one start ≈ 1.6 s. */
  readonly parallelStarts = 2 * availableParallelism()
  readonly #docker: Dockerode
  readonly #opts: DockerBackendOptions
  readonly #user: { uid: number; gid: number; spec: string }
  /** Absolute: a relative bind source would name a docker volume instead. */
  readonly #runDir: string
  readonly #codeRoot: string
  readonly #log: BackendLog
  readonly #live = new Map<string, Live>()
  readonly #stops = new Map<string, Promise<void>>()
  readonly #events: DockerEvents
  readonly #cgroups: CgroupLocator
  readonly #outputListeners: Array<(output: InstanceOutput) => void> = []
  /** Each instance's attach stream while it is open: a stop ends it even if the engine does not. */
  readonly #attached = new Map<string, Duplex>()
  #closing = false

  constructor(opts: DockerBackendOptions) {
    this.#docker = opts.docker
    this.#opts = opts
    this.#runDir = resolve(opts.runDir)
    this.#codeRoot = resolve(opts.codeRoot)
    this.#log = opts.log ?? silent
    const spec = opts.user ?? '65534:65534'
    const m = /^(\d+):(\d+)$/.exec(spec)
    if (m === null) throw new KdlError('KDL_ERR_BAD_REQUEST', `docker backend user must be "uid:gid", got "${spec}"`)
    this.#user = { uid: Number(m[1]), gid: Number(m[2]), spec }
    this.#events = new DockerEvents({
      docker: this.#docker, log: this.#log, backend: this.name, live: this.#live, closing: () => this.#closing, reap: (id) => this.stop(id),
    })
    this.#cgroups = new CgroupLocator(this.#log)
  }

  #socketDir(id: string): string { return join(this.#runDir, id) }
  #codeDir(id: string): string { return join(this.#runDir, `${id}-code`) }

  #egress: Promise<void> | undefined

  /** Creates EGRESS_NETWORK when missing (once per backend; a platform beside creating it too is fine). */
  #egressNetwork(): Promise<void> {
    this.#egress ??= (async () => {
      const exists = async (): Promise<boolean> => (await this.#docker.listNetworks({ filters: { name: [EGRESS_NETWORK] } })).some((n) => n.Name === EGRESS_NETWORK)
      if (await exists()) return
      try {
        await this.#docker.createNetwork({
          Name: EGRESS_NETWORK, Driver: 'bridge', CheckDuplicate: true, Labels: { 'kindling.network': 'egress' },
          Options: { 'com.docker.network.bridge.enable_icc': 'false', 'com.docker.network.bridge.enable_ip_masquerade': 'true' },
        })
      } catch (err) {
        if (!await exists()) throw backendError(`cannot create the docker network ${EGRESS_NETWORK}`, err)
      }
    })()
    this.#egress.catch(() => { this.#egress = undefined })
    return this.#egress
  }

  async start(req: InstanceRequest): Promise<InstanceHandle> {
    if (this.#closing) throw new KdlError('KDL_ERR_BACKEND', 'docker backend is closed')
    checkId(req.id)
    if (req.network === 'egress') await this.#egressNetwork()
    const socketDir = this.#socketDir(req.id)
    const socketPath = join(socketDir, SOCKET_NAME)
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
      throw new KdlError('KDL_ERR_BACKEND', `instance socket path ${socketPath} exceeds ${MAX_SOCKET_PATH} bytes; use a shorter run directory`)
    }
    if (this.#live.has(req.id)) throw new KdlError('KDL_ERR_BACKEND', `instance ${req.id} is already running`)
    const t0 = performance.now()
    const image = req.image ?? this.#opts.images?.[req.runtime] ?? this.#opts.image
    let markDied = noop
    const died = new Promise<void>((resolve) => { markDied = resolve })
    const live: Live = { id: req.id, runtime: req.runtime, pool: req.pool, started: false, exited: false, stopping: false, startFailed: new AbortController(), died, markDied }
    this.#live.set(req.id, live)
    this.#events.forget(req.id)
    const timer = setTimeout(() => live.startFailed.abort(
      new KdlError('KDL_ERR_BACKEND', `instance ${req.id} did not answer its health check within ${this.#opts.startTimeoutMs} ms`)), this.#opts.startTimeoutMs)
    const failed = new Promise<never>((_resolve, reject) => {
      live.startFailed.signal.addEventListener('abort', () => reject(live.startFailed.signal.reason as Error), { once: true })
    })
    failed.catch(noop)
    try {
      await Promise.race([this.#events.ensure(), failed])
      await Promise.race([this.#prepareDirs(req.id), failed])
      const tCreate = performance.now()
      const container = await Promise.race([this.#create(req, image), failed])
      live.containerId = container.id
      // stop() or close() ran while the container was being created: it could not see it, so remove it here.
      if (live.stopping || this.#closing) throw new KdlError('KDL_ERR_BACKEND', `instance ${req.id} was stopped while starting`)
      // Attached before the start, so not a line of the runtime's (or the module's top level) is missed.
      if (this.#outputListeners.length > 0) await Promise.race([this.#attachOutput(req.id, container), failed])
      const tRun = performance.now()
      await Promise.race([container.start(), failed])
      const tListen = performance.now()
      // The start timer (aborting startFailed) fires first: its deadline began before this wait.
      await waitForSocket(socketPath, this.#opts.startTimeoutMs, live.startFailed.signal)
      const tHealth = performance.now()
      await Promise.race([this.#probe(socketPath, live.startFailed.signal), failed])
      const tDone = performance.now()
      const info = await Promise.race([container.inspect(), failed])
      const pid = info.State.Pid > 0 ? info.State.Pid : undefined
      const cgroup = pid === undefined ? undefined : await this.#cgroups.locate(pid, req.id)
      live.startFailed.signal.throwIfAborted()
      live.cpuCgroup = cgroup?.version === 1 ? cgroup.paths['cpu'] : undefined
      live.started = true
      this.#log.debug({
        instance: req.id, pool: req.pool, backend: this.name, ms: Math.round(performance.now() - t0),
        createMs: Math.round(tRun - tCreate), runMs: Math.round(tListen - tRun), listenMs: Math.round(tHealth - tListen), healthMs: Math.round(tDone - tHealth),
      }, 'instance started')
      return { id: req.id, runtime: req.runtime, pool: req.pool, address: { socketPath }, pid, cgroup, startedAt: Date.now() }
    } catch (err) {
      const logs = live.containerId === undefined ? '' : await tailLogs(this.#docker, live.containerId)
      await this.stop(req.id).catch((e: unknown) => this.#log.warn({ instance: req.id, err: e }, 'cannot remove a failed instance'))
      const base = backendError(`instance ${req.id} (${image}) did not start`, err)
      if (logs === '') throw base
      throw new KdlError('KDL_ERR_BACKEND', `${base.message}; container output: ${logs}`, { cause: err })
    } finally {
      clearTimeout(timer)
    }
  }

  async #prepareDirs(id: string): Promise<void> {
    const socketDir = this.#socketDir(id)
    const codeDir = this.#codeDir(id)
    await rm(socketDir, { recursive: true, force: true })
    await rm(codeDir, { recursive: true, force: true })
    await mkdir(this.#runDir, { recursive: true, mode: 0o755 })
    // Only the instance user (and root) may reach the socket.
    await mkdir(socketDir, { mode: 0o700 })
    try {
      await chown(socketDir, this.#user.uid, this.#user.gid)
    } catch (err) {
      // A platform that is not root (docker group) cannot chown: the instance user still has to create its socket.
      if ((err as { code?: unknown }).code !== 'EPERM') throw err
      await chmod(socketDir, 0o777)
    }
    await mkdir(codeDir, { mode: 0o755 })
  }

  #createOptions(req: InstanceRequest, image: string): Dockerode.ContainerCreateOptions {
    const env: Record<string, string> = {
      ...req.env,
      PATH: IMAGE_PATH,
      HOME: '/tmp',
      TMPDIR: '/tmp',
      KINDLING_LISTEN: `unix:${SOCKET_DIR}/${SOCKET_NAME}`,
    }
    const labels: Record<string, string> = { [LABEL.instance]: req.id, [LABEL.platform]: this.#opts.platformId, [LABEL.runtime]: req.runtime, [LABEL.pool]: req.pool }
    if (req.pool.startsWith('fn:')) labels[LABEL.fn] = req.pool.slice(3)
    if (req.quarantine === true) labels[LABEL.quarantine] = 'true'
    const memory = req.memoryMb * 1024 * 1024
    return {
      name: containerName(req.id),
      Image: image,
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Labels: labels,
      User: this.#user.spec,
      WorkingDir: '/tmp',
      HostConfig: {
        Binds: [`${this.#socketDir(req.id)}:${SOCKET_DIR}:rw`, `${this.#codeDir(req.id)}:${CODE_DIR}:ro`],
        Memory: memory,
        MemorySwap: memory,
        NanoCpus: Math.round(req.cpu * 1e9),
        PidsLimit: req.pidsLimit,
        ReadonlyRootfs: true,
        Tmpfs: { '/tmp': `rw,nosuid,nodev,size=${this.#opts.tmpfsMb ?? 64}m,mode=1777` },
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        NetworkMode: req.network === 'egress' ? EGRESS_NETWORK : 'none',
        IpcMode: 'private',
        AutoRemove: false,
        RestartPolicy: { Name: 'no' },
        // Bounded logs: an instance that prints in a loop must not fill the host's disk.
        LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
        ...(req.quarantine === true ? { CgroupParent: QUARANTINE_PARENT, CpuShares: QUARANTINE_SHARES } : req.background === true ? { CpuShares: BACKGROUND_SHARES } : {}),
        ...(req.quarantine === true && this.#opts.quarantineCpus !== undefined ? { CpusetCpus: this.#opts.quarantineCpus } : {}),
      },
    }
  }

  async #create(req: InstanceRequest, image: string): Promise<Dockerode.Container> {
    const opts = this.#createOptions(req, image)
    try {
      return await this.#docker.createContainer(opts)
    } catch (err) {
      const status = statusOf(err)
      if (status === 409) {
        // A container of that name survived an earlier run (same id): replace it.
        await this.#remove(req.id)
        return this.#docker.createContainer(opts)
      }
      if (status === 404 && !image.startsWith('kindling/')) {
        this.#log.info({ image }, 'pulling runtime image')
        await followPull(this.#docker, await this.#docker.pull(image))
        return this.#docker.createContainer(opts)
      }
      if (status === 404) throw new KdlError('KDL_ERR_BACKEND', `runtime image ${image} is missing (build it with ensureNodeImage)`, { cause: err })
      throw err
    }
  }

  /** GET /_/health over the socket; a connection refused between bind() and listen() is retried until start fails. */
  async #probe(socketPath: string, failed: AbortSignal): Promise<void> {
    let backoff = 2
    for (;;) {
      const client = dispatcherFor({ socketPath })
      try {
        await health(client, this.#opts.startTimeoutMs)
        return
      } catch (err) {
        if (failed.aborted || (err as { code?: unknown }).code !== 'ECONNREFUSED') throw err
      } finally {
        await client.close().catch(noop)
      }
      await new Promise((resolve) => setTimeout(resolve, backoff))
      backoff = Math.min(backoff * 2, 50)
    }
  }

  /** Stops and removes an instance and its host directories. Idempotent; concurrent calls share one removal. */
  stop(id: string): Promise<void> {
    try { checkId(id) } catch (err) { return Promise.reject(err) }
    const pending = this.#stops.get(id)
    if (pending !== undefined) return pending
    const live = this.#live.get(id)
    if (live !== undefined) live.stopping = true
    const p = (async () => {
      try {
        await this.#remove(id, live?.containerId)
        this.#attached.get(id)?.destroy()
        this.#attached.delete(id)
        if (live !== undefined) this.#events.stopped(id)
        await rm(this.#socketDir(id), { recursive: true, force: true })
        await rm(this.#codeDir(id), { recursive: true, force: true })
        this.#live.delete(id)
      } finally {
        this.#stops.delete(id)
      }
    })()
    this.#stops.set(id, p)
    return p
  }

  /** Force-removes (SIGKILL + remove) the instance's container(s); a missing one is not an error. */
  async #remove(id: string, containerId?: string): Promise<void> {
    const ref = containerId ?? containerName(id)
    try {
      await this.#docker.getContainer(ref).remove({ force: true })
      return
    } catch (err) {
      const status = statusOf(err)
      if (status === 409 && /already in progress/i.test(String((err as Error).message))) return
      if (status !== 404) throw backendError(`cannot remove instance ${id}`, err)
    }
    // Not under its usual name (or already gone): a container carrying the instance label still counts.
    let others: Dockerode.ContainerInfo[]
    try {
      others = await this.#docker.listContainers({ all: true, filters: { label: [`${LABEL.instance}=${id}`] } })
    } catch (err) {
      throw backendError(`cannot list containers of instance ${id}`, err)
    }
    for (const c of others) {
      try {
        await this.#docker.getContainer(c.Id).remove({ force: true })
      } catch (err) {
        if (statusOf(err) !== 404) throw backendError(`cannot remove instance ${id}`, err)
      }
    }
  }

  async list(): Promise<Array<{ id: string; pool: string; runtime: string }>> {
    try {
      const all = await this.#docker.listContainers({ all: true, filters: { label: [LABEL.instance, `${LABEL.platform}=${this.#opts.platformId}`] } })
      return all.map((c) => ({
        id: c.Labels[LABEL.instance] ?? '',
        pool: c.Labels[LABEL.pool] ?? 'unknown',
        runtime: c.Labels[LABEL.runtime] ?? 'unknown',
      })).filter((c) => c.id !== '')
    } catch (err) {
      throw backendError('cannot list instance containers', err)
    }
  }

  /**
   * Makes `hostCodeDir` visible at /code: its content goes into the instance's bind-mounted code directory,
   * hard-linked when on the same filesystem and world-readable (free, and the cache is immutable), copied otherwise.
   */
  async prepareCode(id: string, hostCodeDir: string): Promise<string> {
    checkId(id)
    const dest = this.#codeDir(id)
    try {
      const [src, root] = await Promise.all([realpath(hostCodeDir), realpath(this.#codeRoot)])
      if (src !== root && !src.startsWith(root + sep)) {
        throw new KdlError('KDL_ERR_BACKEND', `code directory ${hostCodeDir} is outside the code root ${this.#opts.codeRoot}`)
      }
      const destStat = await stat(dest).catch(() => undefined)
      if (destStat === undefined) throw new KdlError('KDL_ERR_BACKEND', `instance ${id} has no code directory (not started by this backend?)`)
      for (const ent of await readdir(dest)) await rm(join(dest, ent), { recursive: true, force: true })
      await copyTree(src, dest, (await stat(src)).dev === destStat.dev)
    } catch (err) {
      throw backendError(`cannot prepare code for instance ${id}`, err)
    }
    return CODE_DIR
  }

  onExit(listener: (exit: InstanceExit) => void): void {
    this.#events.onExit(listener)
  }

  onOutput(listener: (output: InstanceOutput) => void): void {
    this.#outputListeners.push(listener)
  }

  /** Follows a created container's stdout and stderr (the engine's attach stream) into the output listeners, bounded. */
  async #attachOutput(id: string, container: Dockerode.Container): Promise<void> {
    // A hijacked connection to the engine: a socket underneath (dockerode types it as a bare ReadWriteStream).
    const stream = await container.attach({ stream: true, stdout: true, stderr: true }) as unknown as Duplex
    this.#attached.set(id, stream)
    const limiter = new OutputLimiter(id, this.#opts.output ?? DEFAULT_OUTPUT_LIMITS, (output) => {
      for (const l of this.#outputListeners) {
        try { l(output) } catch (err) { this.#log.error({ err, instance: id }, 'output listener threw') }
      }
    })
    const sink = (name: 'stdout' | 'stderr'): Writable => {
      const lines = limiter.splitter(name)
      const decoder = new StringDecoder('utf8')
      return new Writable({
        write(chunk: Buffer, _enc, cb) { lines.write(decoder.write(chunk)); cb() },
        final(cb) { lines.write(decoder.end()); lines.end(); cb() },
      })
    }
    const out = sink('stdout')
    const err = sink('stderr')
    this.#docker.modem.demuxStream(stream, out, err)
    const ended = (): void => {
      if (this.#attached.get(id) === stream) this.#attached.delete(id)
      out.end(); err.end(); limiter.close()
    }
    stream.once('end', ended)
    stream.once('close', ended)
    stream.on('error', noop)
  }

  exitReason(id: string): Promise<ExitReason | undefined> {
    return this.#events.exitReason(id)
  }

  /** Moves a running container onto the quarantine CPUs (`docker update --cpuset-cpus`), or back onto all. */
  async setQuarantine(id: string, on: boolean): Promise<void> {
    const cpus = this.#opts.quarantineCpus
    if (cpus === undefined) return
    checkId(id)
    try {
      await this.#docker.getContainer(this.#live.get(id)?.containerId ?? containerName(id)).update({ CpusetCpus: on ? cpus : `0-${availableParallelism() - 1}` })
    } catch (err) {
      throw backendError(`cannot move instance ${id} ${on ? 'into' : 'out of'} quarantine`, err)
    }
  }

  /**
   * A container taken for a call gets its full CPU share on the path of that call: one write to its own
   * cgroup file when it is known (the engine's record of CpuShares then lags, harmlessly), else an update
   * through the engine (a round trip through dockerd).
   */
  async setPriority(id: string, priority: 'background' | 'serving'): Promise<void> {
    checkId(id)
    const shares = priority === 'background' ? BACKGROUND_SHARES : SERVING_SHARES
    const dir = this.#live.get(id)?.cpuCgroup
    try {
      if (dir !== undefined) await writeFile(join(dir, 'cpu.shares'), String(shares))
      else await this.#docker.getContainer(this.#live.get(id)?.containerId ?? containerName(id)).update({ CpuShares: shares })
    } catch (err) {
      throw backendError(`cannot change the CPU share of instance ${id}`, err)
    }
  }

  async setCpu(id: string, cpu: number): Promise<void> {
    checkId(id)
    try {
      await this.#docker.getContainer(this.#live.get(id)?.containerId ?? containerName(id)).update({ NanoCpus: Math.round(cpu * 1e9) })
    } catch (err) {
      throw backendError(`cannot change the CPU quota of instance ${id}`, err)
    }
  }

  /**
   * One build in a build container (issue 9): the runtime image with npm bound read-only and the host's `sh`
   * (npm runs install scripts through it; the image has no shell of its own), the build directory the one
   * writable bind, no network (the loopback only: the build step relays npm to the registry proxy's socket),
   * the build limits, the instance user, a wall-clock limit after which the container is removed.
   */
  async runBuild(job: BuildJob): Promise<BuildJobResult> {
    if (this.#closing) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'docker backend is closed')
    checkId(job.id)
    const image = this.#opts.images?.[job.runtime] ?? this.#opts.image
    await this.#events.ensure()
    try {
      await chownTree(job.dir, this.#user.uid, this.#user.gid)
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'EPERM') throw err
      await chmod(job.dir, 0o777)
    }
    const shell = await realpath('/bin/sh')
    const memory = job.memoryMb * 1024 * 1024
    const inside = '/run/kindling/build'
    const env: Record<string, string> = {
      PATH: IMAGE_PATH, HOME: `${inside}/tmp`, TMPDIR: `${inside}/tmp`,
      KINDLING_BUILD_DIR: inside, KINDLING_BUILD_NPM: '/opt/kindling/npm/bin/npm-cli.js',
      KINDLING_BUILD_REGISTRY: job.registry, KINDLING_BUILD_COMMAND: job.command,
    }
    const container = await this.#docker.createContainer({
      name: containerName(job.id),
      Image: image,
      // The image's entrypoint is the runtime server: the build step replaces it.
      Entrypoint: [IMAGE_NODE, `${RUNTIME_DIR}/build.mjs`],
      Cmd: [`--kindling-instance=${job.id}`],
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Labels: { [LABEL.instance]: job.id, [LABEL.platform]: this.#opts.platformId, [LABEL.runtime]: job.runtime, [LABEL.pool]: 'build' },
      User: this.#user.spec,
      WorkingDir: `${inside}/app`,
      HostConfig: {
        Binds: [`${resolve(job.dir)}:${inside}:rw`, `${job.npmDir}:/opt/kindling/npm:ro`, `${shell}:/bin/sh:ro`],
        Memory: memory,
        MemorySwap: memory,
        NanoCpus: Math.round(job.cpu * 1e9),
        PidsLimit: job.pidsLimit,
        ReadonlyRootfs: true,
        Tmpfs: { '/tmp': 'rw,nosuid,nodev,size=64m,mode=1777' },
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        NetworkMode: 'none',
        IpcMode: 'private',
        RestartPolicy: { Name: 'no' },
        LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
      },
    }).catch((err: unknown) => { throw backendError(`cannot create build container ${job.id} (${image})`, err) })
    let ended: 'timeout' | 'aborted' | undefined
    const kill = (why: 'timeout' | 'aborted'): void => {
      ended ??= why
      container.kill().catch(noop)
    }
    const timer = setTimeout(() => kill('timeout'), job.timeoutMs)
    const onAbort = (): void => kill('aborted')
    job.signal?.addEventListener('abort', onAbort)
    try {
      const stream = await container.attach({ stream: true, stdout: true, stderr: true })
      const out = new PassThrough()
      const err = new PassThrough()
      this.#docker.modem.demuxStream(stream, out, err)
      const lines = [createInterface({ input: out, crlfDelay: Infinity }), createInterface({ input: err, crlfDelay: Infinity })]
      lines[0]!.on('line', (l) => job.onLine('stdout', l))
      lines[1]!.on('line', (l) => job.onLine('stderr', l))
      const streamEnded = new Promise<void>((r) => { stream.once('end', r); stream.once('close', r) })
      await container.start()
      if (job.signal?.aborted === true) onAbort()
      const waited = await container.wait() as { StatusCode?: number }
      await Promise.race([streamEnded, new Promise((r) => setTimeout(r, 1000).unref())])
      out.end(); err.end()
      const info = await container.inspect()
      const code = waited.StatusCode ?? info.State.ExitCode
      const outcome: BuildJobResult['outcome'] = ended ?? (info.State.OOMKilled ? 'memory' : code === 0 ? 'ok' : 'failed')
      return { outcome, code, signal: null }
    } finally {
      clearTimeout(timer)
      job.signal?.removeEventListener('abort', onAbort)
      await container.remove({ force: true }).catch(noop)
    }
  }

  /** Stops every instance this backend started, then the event stream. */
  async close(): Promise<void> {
    this.#closing = true
    const results = await Promise.allSettled([...this.#live.keys()].map((id) => this.stop(id)))
    this.#events.close()
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed !== undefined) throw backendError('cannot stop every instance', failed.reason)
  }
}


/** Recreates `src` under `dest`: hard links where allowed (same filesystem, world-readable files), copies elsewhere. */
async function copyTree(src: string, dest: string, sameFs: boolean): Promise<void> {
  for (const ent of await readdir(src, { withFileTypes: true })) {
    const from = join(src, ent.name)
    const to = join(dest, ent.name)
    if (ent.isDirectory()) {
      const st = await lstat(from)
      await mkdir(to)
      await chmod(to, (st.mode & 0o7777) | 0o555)
      await copyTree(from, to, sameFs)
    } else if (ent.isSymbolicLink()) {
      await symlink(await readlink(from), to)
    } else if (ent.isFile()) {
      const st = await lstat(from)
      if (sameFs && (st.mode & 0o004) !== 0) {
        try { await link(from, to); continue } catch { /* EXDEV / EPERM: copy instead */ }
      }
      await copyFile(from, to)
      await chmod(to, (st.mode & 0o7777) | 0o444)
    }
    // Sockets, fifos and devices are never part of code.
  }
}
