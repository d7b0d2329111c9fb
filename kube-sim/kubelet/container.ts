/**
 * One container of a pod on the stand-in's kubelet (issue 10): its image mapped to a local command, run as a
 * process in its own cgroup (`<pod cgroup>/<container id>`, 64 hex digits, new at each start, status `containerd://<id>`; the container's cpu and memory limits, memory+swap pinned
 * so a process over the limit is OOM-killed by the kernel), as the pod's runAsUser/runAsGroup when the kubelet
 * is root, in its own process group. Exits follow the restart policy with the kubelet's back-off (immediately,
 * then base, 2×base… capped at 10×base; CrashLoopBackOff while waiting); an unknown image waits in
 * ErrImagePull/ImagePullBackOff, a missing ConfigMap/Secret in CreateContainerConfigError. Probes drive
 * `started` and `ready`; a failed liveness or startup probe kills the container (then the policy decides).
 * Output is kept (last ~1 MiB, and the previous run's) for `kubectl logs`.
 *
 * Not enforced (a container shares the host's filesystem, network namespace and capabilities):
 * `readOnlyRootFilesystem`, `capabilities`, `allowPrivilegeEscalation`, `seccompProfile` are accepted and noted
 * only; `runAsNonRoot` is checked as the kubelet checks it (CreateContainerConfigError).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, statSync } from 'node:fs'
import { chown, mkdir } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { constants } from 'node:os'
import type { Logger } from 'pino'
import { wrapCommand, type CgroupDriver, type CgroupRef } from '../../cgroups/index.js'
import type { KubeObject } from '../types.js'
import { bytesOf, cpuMilli } from '../scheduling/quantity.js'
import { ContainerConfigError, buildEnv, expand, rewrite, type EnvSources, type HostMount } from './env.js'
import { resolveImage, type ImageMap, type ImageSpec } from './images.js'
import { LogRing } from './log-ring.js'
import { ProbeWorker, type Probe } from './probes.js'

export interface ContainerContext {
  pod: KubeObject
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec: any
  /** Init containers restart only on failure, whatever the pod says. */
  restartPolicy: 'Always' | 'OnFailure' | 'Never'
  podIP: string
  hostIP: string
  mounts: HostMount[]
  /** The container's own directory (its working directory unless the image or spec names one). */
  dir: string
  images: ImageMap
  cgroups: CgroupDriver | undefined
  /** The pod's cgroup, relative to the controller roots. */
  cgroupParent: string
  sources: EnvSources
  baseEnv: Record<string, string>
  /** The pod's hosts file, bound over /etc/hosts where the container gets a mount namespace (root). */
  hostsFile?: string | undefined
  /** Service-link variables, read at each start (below the image's and the container's env). */
  serviceEnv?: (() => Record<string, string>) | undefined
  backoffBaseMs: number
  /** Tasks each container's cgroup allows (the kubelet's podPidsLimit); 0: unlimited. */
  pidsLimit: number
  /** The pod's grace period (s), for a liveness kill. */
  graceSeconds: number
  onChange(): void
  event(type: 'Normal' | 'Warning', reason: string, message: string): void
  log: Logger | undefined
}

type State =
  | { waiting: { reason: string; message?: string } }
  | { running: { startedAt: string } }
  | { terminated: Terminated }

interface Terminated {
  exitCode: number
  signal?: number
  reason: string
  message?: string
  startedAt: string
  finishedAt: string
  containerID?: string
}

/** coreutils' env: runs a container's command without what a spawn wrapper of this process added (NODE_OPTIONS). */
const ENV = '/usr/bin/env'
const SH = '/bin/sh'
/** util-linux, on every Debian: a private mount namespace for the volume binds, and the drop to the container's user. */
const UNSHARE = '/usr/bin/unshare'
const SETPRIV = '/usr/bin/setpriv'
const HAVE_NS_TOOLS = existsSync(UNSHARE) && existsSync(SETPRIV)
/**
 * `sh -c BIND_SCRIPT name HOSTS N (host path k top1…topk)×N cmd args…`: for each volume, the host's `path/top` entries the
 * container needs are bound into the volume's host directory first, then the volume (with them) over `path`; then the
 * pod's hosts file over /etc/hosts (HOSTS `-`: none); then execs.
 */
const BIND_SCRIPT = [
  'h=$1; n=$2; shift 2',
  'while [ "$n" -gt 0 ]; do',
  '  src=$1; dst=$2; k=$3; shift 3',
  '  while [ "$k" -gt 0 ]; do',
  '    if [ -d "$dst/$1" ]; then mkdir -p "$src/$1"; else : > "$src/$1"; fi',
  '    mount --bind "$dst/$1" "$src/$1" || exit 126; shift; k=$((k - 1))',
  '  done',
  '  mount --rbind "$src" "$dst" || exit 126; n=$((n - 1))',
  'done',
  'if [ "$h" != - ]; then mount --bind "$h" /etc/hosts || exit 126; fi',
  'exec "$@"',
].join('\n')

function under(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith('/') ? dir : `${dir}/`)
}

function isHostDir(path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}
const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z')

export class ContainerRunner {
  readonly name: string
  readonly #ctx: ContainerContext
  #state: State = { waiting: { reason: 'ContainerCreating' } }
  #lastState: State | undefined
  #restartCount = 0
  #crashes = 0
  #child: ChildProcess | undefined
  #exited: Promise<void> | undefined
  #cgroup: CgroupRef | undefined
  #containerID: string | undefined
  #started = false
  #ready = false
  #probes: ProbeWorker[] = []
  #stopping = false
  #wake: (() => void) | undefined
  #loop: Promise<void> | undefined
  #logs = new LogRing()
  #previousLogs: LogRing | undefined
  #identity: { uid: number; gid: number } | undefined

  constructor(ctx: ContainerContext) {
    this.#ctx = ctx
    this.name = String(ctx.spec.name)
  }

  /** Runs the container until it finishes for good (the policy allows no restart) or it is stopped. */
  start(): Promise<void> {
    this.#loop ??= this.#run()
    return this.#loop
  }

  get finished(): Terminated | undefined {
    return this.#loop !== undefined && 'terminated' in this.#state && !this.#willRestart(this.#state.terminated) ? this.#state.terminated : undefined
  }

  get running(): boolean {
    return 'running' in this.#state
  }

  logs(previous = false): LogRing | undefined {
    return previous ? this.#previousLogs : this.#logs
  }

  /** The status's `containerID` of the current (or last) run. */
  get containerID(): string | undefined {
    return this.#containerID
  }

  /** The pid of the running main process (tests, `stop()`'s bookkeeping). */
  get pid(): number | undefined {
    return this.#child?.exitCode === null ? this.#child.pid : undefined
  }

  status(): Record<string, unknown> {
    const s = this.#ctx.spec
    return {
      name: this.name,
      image: s.image,
      imageID: this.#containerID === undefined ? '' : `kindling-sim://${String(s.image)}`,
      ...(this.#containerID === undefined ? {} : { containerID: this.#containerID }),
      state: this.#state,
      lastState: this.#lastState ?? {},
      ready: this.#ready,
      started: this.#started,
      restartCount: this.#restartCount,
    }
  }

  /** SIGTERM to the main process, SIGKILL to everything left after `graceMs`; no restart follows. */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true
    this.#wake?.()
    await this.#terminate(graceMs)
    await this.#loop
  }

  /** Runs `command` in the container's context (an exec probe); resolves with its exit code. */
  async exec(command: string[], timeoutMs: number): Promise<number> {
    const env = this.#envOrUndefined()
    if (env === undefined || command.length === 0) return -1
    const argv = this.#wrap(command[0] as string, command.slice(1))
    const child = spawn(argv.command, argv.args, { env, cwd: this.#ctx.dir, stdio: 'ignore', detached: true, ...(this.#spawnIdentity() ?? {}) })
    const timer = setTimeout(() => { try { process.kill(-(child.pid as number), 'SIGKILL') } catch { /* gone */ } }, timeoutMs)
    try {
      const [code] = await once(child, 'exit') as [number | null]
      return code ?? -1
    } finally {
      clearTimeout(timer)
    }
  }

  async #run(): Promise<void> {
    let pullFailures = 0
    let configFailures = 0
    while (!this.#stopping) {
      const image = resolveImage(this.#ctx.images, String(this.#ctx.spec.image))
      if (image === undefined) {
        pullFailures++
        this.#setState({ waiting: { reason: pullFailures === 1 ? 'ErrImagePull' : 'ImagePullBackOff',
          message: pullFailures === 1
            ? `the stand-in has no command for image "${String(this.#ctx.spec.image)}" (startCluster's images option)`
            : `Back-off pulling image "${String(this.#ctx.spec.image)}"` } })
        if (pullFailures === 1) this.#ctx.event('Warning', 'Failed', `Failed to pull image "${String(this.#ctx.spec.image)}": no command is mapped to it`)
        await this.#sleep(this.#backoff(pullFailures))
        continue
      }
      let started: { ranMs: number; result: Terminated } | undefined
      try {
        started = await this.#runOnce(image)
      } catch (err) {
        // A config error (missing ConfigMap key, runAsNonRoot as root) or a failed start (a cgroup that cannot be
        // made): the container waits, and is tried again after a back-off, as the kubelet does.
        await this.#reap()
        configFailures++
        const config = err instanceof ContainerConfigError
        const message = (err as Error).message
        this.#setState({ waiting: { reason: config ? 'CreateContainerConfigError' : 'RunContainerError', message } })
        if (configFailures === 1) this.#ctx.event('Warning', 'Failed', `Error: ${message}`)
        if (!config) this.#ctx.log?.warn({ err, container: this.name }, 'container start failed')
        await this.#sleep(this.#backoff(configFailures))
        continue
      }
      configFailures = 0
      const { ranMs, result } = started
      if (this.#stopping || !this.#willRestart(result)) break
      // A container that ran long enough starts its back-off over (the kubelet forgets old crashes).
      if (ranMs > 20 * this.#ctx.backoffBaseMs) this.#crashes = 0
      this.#crashes++
      const delay = this.#crashes === 1 ? 0 : this.#backoff(this.#crashes - 1)
      if (delay > 0) {
        this.#lastState = { terminated: result }
        this.#setState({ waiting: { reason: 'CrashLoopBackOff', message: `back-off ${Math.round(delay / 100) / 10}s restarting failed container=${this.name} pod=${podRef(this.#ctx.pod)}` } })
        this.#ctx.event('Warning', 'BackOff', 'Back-off restarting failed container')
        await this.#sleep(delay)
        if (this.#stopping) break
      }
      this.#restartCount++
    }
  }

  #willRestart(t: Terminated): boolean {
    if (this.#stopping) return false
    const policy = this.#ctx.restartPolicy
    return policy === 'Always' || (policy === 'OnFailure' && t.exitCode !== 0)
  }

  #backoff(n: number): number {
    const base = this.#ctx.backoffBaseMs
    return Math.min(base * 2 ** Math.max(0, n - 1), 10 * base)
  }

  async #sleep(ms: number): Promise<void> {
    if (this.#stopping || ms <= 0) return
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms)
      function done(): void { clearTimeout(timer); resolve() }
      this.#wake = done
    })
    this.#wake = undefined
  }

  #setState(s: State): void {
    this.#state = s
    this.#ctx.onChange()
  }

  #identityFor(image: ImageSpec): { uid: number; gid: number } | undefined {
    const sc = this.#ctx.spec.securityContext ?? {}
    const psc = this.#ctx.pod.spec?.securityContext ?? {}
    const uid: number | undefined = sc.runAsUser ?? psc.runAsUser ?? image.user?.uid
    const nonRoot = (sc.runAsNonRoot ?? psc.runAsNonRoot) === true
    const self = process.getuid?.() ?? 0
    if (nonRoot && (uid ?? self) === 0) {
      throw new ContainerConfigError(`container has runAsNonRoot and image will run as root (pod: "${podRef(this.#ctx.pod)}", container: ${this.name})`)
    }
    // Only root can become another user; a kubelet run unprivileged runs everything as itself.
    if (self !== 0 || uid === undefined) return undefined
    const gid: number = sc.runAsGroup ?? psc.runAsGroup ?? (image.user !== undefined && image.user.uid === uid ? image.user.gid : 0)
    return { uid, gid }
  }

  #envOrUndefined(): Record<string, string> | undefined {
    try {
      return this.#buildEnv(resolveImage(this.#ctx.images, String(this.#ctx.spec.image)) ?? { command: [] })
    } catch {
      return undefined
    }
  }

  #buildEnv(image: ImageSpec): Record<string, string> {
    return buildEnv({
      pod: this.#ctx.pod, container: this.#ctx.spec, podIP: this.#ctx.podIP, hostIP: this.#ctx.hostIP, mounts: this.#ctx.mounts,
      sources: this.#ctx.sources, base: { ...this.#ctx.baseEnv, ...(this.#ctx.serviceEnv?.() ?? {}), ...(image.env ?? {}) },
    })
  }

  /**
   * The container's command line, outermost first: join its cgroup; as root, a private mount namespace with each
   * volume bound over its mountPath where that directory exists on the host (so `/tmp` is the pod's emptyDir, as in
   * a real container; a mountPath the host lacks, like `/code`, is reached through the rewritten environment), then
   * the container's user (setpriv); last `env -u NODE_OPTIONS` — a spawn wrapper of the process running the
   * stand-in (a test runner's hooks, an APM) may add NODE_OPTIONS to any environment it spawns with.
   */
  #wrap(command: string, args: string[]): { command: string; args: string[] } {
    let argv = [ENV, '-u', 'NODE_OPTIONS', '--', command, ...args]
    if (this.#privileged()) {
      const id = this.#identity
      // allowPrivilegeEscalation: false is the kernel's no_new_privs, as a real runtime sets it.
      const noNewPrivs = this.#ctx.spec.securityContext?.allowPrivilegeEscalation === false ? ['--no-new-privs'] : []
      if (id !== undefined || noNewPrivs.length > 0) {
        argv = [SETPRIV, ...(id === undefined ? [] : [`--reuid=${id.uid}`, `--regid=${id.gid}`, '--clear-groups']), ...noNewPrivs, '--', ...argv]
      }
      // What the container needs from the host under a mount path stays reachable: its own directory, its volumes'
      // host directories (reached through the rewritten environment) and the image's files — a stand-in whose data
      // directory or repository lies under /tmp would otherwise hide them behind the pod's /tmp. Each such top
      // directory is bound into the volume first, then the volume with it (rbind) over the mount path.
      const needed = [this.#ctx.dir, ...this.#ctx.mounts.map((m) => m.hostPath), command, ...args.filter((a) => a.startsWith('/'))]
      const binds = this.#ctx.mounts.filter((m) => m.mountPath !== '/' && isHostDir(m.mountPath))
      const hosts = this.#ctx.hostsFile
      if (binds.length > 0 || hosts !== undefined) {
        const triples = binds.flatMap((m) => {
          const tops = [...new Set(needed.filter((n) => under(n, m.mountPath) && n !== m.mountPath).map((n) => n.slice(m.mountPath.replace(/\/$/, '').length + 1).split('/')[0]!))]
          return [m.hostPath, m.mountPath, String(tops.length), ...tops]
        })
        argv = [UNSHARE, '--mount', '--propagation', 'private', '--', SH, '-c', BIND_SCRIPT, 'kube-sim-mounts', hosts ?? '-', String(binds.length), ...triples, ...argv]
      }
    }
    const [cmd, ...rest] = argv as [string, ...string[]]
    const cg = this.#ctx.cgroups
    return cg === undefined || this.#cgroup === undefined ? { command: cmd, args: rest } : wrapCommand(cg.procsFiles(this.#cgroup), cmd, rest)
  }

  /** Root with setpriv and unshare at hand: the user is dropped by setpriv inside the wrapper, not by spawn. */
  #privileged(): boolean {
    return process.getuid?.() === 0 && HAVE_NS_TOOLS
  }

  /** What spawn itself runs as: the container's user, unless the wrapper drops to it (#privileged). */
  #spawnIdentity(): { uid: number; gid: number } | undefined {
    return this.#privileged() ? undefined : this.#identity
  }

  /** One run: resolves when the process has exited (with how long it ran and how it ended). */
  async #runOnce(image: ImageSpec): Promise<{ ranMs: number; result: Terminated }> {
    const { spec, mounts, podIP } = this.#ctx
    this.#identity = this.#identityFor(image)
    const env = this.#buildEnv(image)
    const fix = (v: string): string => rewrite(expand(v, env), podIP, mounts)
    // The image's own entrypoint is a host command line: only what the pod spec says is expanded and rewritten.
    const entry: string[] = spec.command === undefined ? image.command : (spec.command as string[]).map(fix)
    const args: string[] = spec.args !== undefined ? (spec.args as string[]).map(fix) : spec.command === undefined ? image.args ?? [] : []
    if (entry.length === 0) throw new ContainerConfigError('no command specified')
    const cwd = spec.workingDir !== undefined ? fix(String(spec.workingDir)) : image.workingDir ?? this.#ctx.dir
    await mkdir(cwd, { recursive: true })
    const cg = this.#ctx.cgroups
    // A container id as containerd's: 64 hex digits, a new one at each start; the container's cgroup is named by it.
    const id = randomBytes(32).toString('hex')
    if (cg !== undefined) {
      const limits = spec.resources?.limits ?? {}
      this.#cgroup = await cg.create(this.#ctx.cgroupParent, id, {
        cpu: limits.cpu === undefined ? 0 : cpuMilli(limits.cpu) / 1000,
        memoryBytes: limits.memory === undefined ? 0 : bytesOf(limits.memory),
        pidsLimit: this.#ctx.pidsLimit,
      })
      // The wrapper joins the group as the container's user: the procs files must be its to write.
      if (this.#identity !== undefined) for (const f of cg.procsFiles(this.#cgroup)) await chown(f, this.#identity.uid, this.#identity.gid)
    }
    if (this.#restartCount > 0 || this.#lastState !== undefined) {
      this.#previousLogs = this.#logs
      this.#logs = new LogRing()
    }
    const argv = this.#wrap(entry[0] as string, [...entry.slice(1), ...args])
    const startedAt = Date.now()
    const child = spawn(argv.command, argv.args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...(this.#spawnIdentity() ?? {}) })
    this.#child = child
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
      child.once('exit', (code, signal) => resolve([code, signal]))
      child.once('error', () => resolve([128, null]))
    })
    this.#exited = exited.then(() => undefined)
    // Stopped while the start was under way (volumes, cgroup): the new process goes at once.
    if (this.#stopping) void this.#terminate(0)
    child.stdout?.on('data', (d: Buffer) => this.#logs.write(d))
    child.stderr?.on('data', (d: Buffer) => this.#logs.write(d))
    this.#containerID = `containerd://${id}`
    this.#started = false
    this.#ready = false
    this.#ctx.event('Normal', 'Started', `Started container ${this.name}`)
    this.#setState({ running: { startedAt: iso(startedAt) } })
    this.#startProbes()
    const [code, signal] = await exited
    this.#stopProbes()
    const oom = await this.#oomKilled()
    await this.#reap()
    const finishedAt = Date.now()
    const signum = signal === null ? undefined : constants.signals[signal]
    const exitCode = oom ? 137 : code ?? 128 + (signum ?? 9)
    const result: Terminated = {
      exitCode, reason: oom ? 'OOMKilled' : exitCode === 0 ? 'Completed' : 'Error',
      startedAt: iso(startedAt), finishedAt: iso(finishedAt), containerID: this.#containerID,
      ...(signum === undefined || oom ? {} : { signal: signum }),
    }
    if (exitCode !== 0 && spec.terminationMessagePolicy === 'FallbackToLogsOnError') {
      const tail = this.#logs.read({ tailLines: 80 })
      if (tail !== '') result.message = tail.slice(-2048)
    }
    this.#started = false
    this.#ready = false
    this.#child = undefined
    if (this.#willRestart(result)) this.#lastState = { terminated: result }
    this.#setState({ terminated: result })
    return { ranMs: finishedAt - startedAt, result }
  }

  async #oomKilled(): Promise<boolean> {
    const cg = this.#ctx.cgroups
    if (cg === undefined || this.#cgroup === undefined) return false
    const stats = await cg.stats(this.#cgroup).catch(() => undefined)
    return (stats?.oomKills ?? 0) > 0
  }

  /** Kills what the main process left behind (its cgroup, or its process group) and removes the cgroup. */
  async #reap(): Promise<void> {
    const pid = this.#child?.pid
    if (pid !== undefined) { try { process.kill(-pid, 'SIGKILL') } catch { /* the group is empty */ } }
    const cg = this.#ctx.cgroups
    if (cg !== undefined && this.#cgroup !== undefined) {
      await cg.destroy(this.#cgroup).catch((err: unknown) => this.#ctx.log?.warn({ err, container: this.name }, 'cannot remove a container cgroup'))
      this.#cgroup = undefined
    }
  }

  async #terminate(graceMs: number): Promise<void> {
    const child = this.#child
    const exited = this.#exited
    if (child === undefined || exited === undefined || child.exitCode !== null || child.signalCode !== null) return
    this.#ctx.event('Normal', 'Killing', `Stopping container ${this.name}`)
    try { child.kill('SIGTERM') } catch { /* already gone */ }
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<'late'>((resolve) => { timer = setTimeout(() => resolve('late'), Math.max(0, graceMs)) })
    const outcome = await Promise.race([exited.then(() => 'exited' as const), late])
    clearTimeout(timer)
    if (outcome === 'late') {
      try { process.kill(-(child.pid as number), 'SIGKILL') } catch { /* gone meanwhile */ }
      try { child.kill('SIGKILL') } catch { /* gone meanwhile */ }
      await exited
    }
  }

  #startProbes(): void {
    const spec = this.#ctx.spec
    const target = {
      ip: this.#ctx.podIP,
      ports: (spec.ports ?? []) as Array<{ name?: string; containerPort: number }>,
      exec: (cmd: string[], ms: number) => this.exec(cmd, ms),
    }
    const startup = spec.startupProbe as Probe | undefined
    const startLiveAndReady = (): void => {
      this.#started = true
      const readiness = spec.readinessProbe as Probe | undefined
      if (readiness === undefined) this.#ready = true
      else this.#addProbe(readiness, target, (ok, msg) => {
        this.#ready = ok
        if (!ok) this.#ctx.event('Warning', 'Unhealthy', `Readiness probe failed: ${msg}`)
      })
      const liveness = spec.livenessProbe as Probe | undefined
      if (liveness !== undefined) this.#addProbe(liveness, target, (ok, msg) => { if (!ok) this.#probeKill('liveness', msg, liveness) })
      this.#ctx.onChange()
    }
    if (startup === undefined) startLiveAndReady()
    else {
      this.#addProbe(startup, target, (ok, msg) => {
        if (ok) startLiveAndReady()
        else this.#probeKill('startup', msg, startup)
      })
    }
  }

  #addProbe(probe: Probe, target: ConstructorParameters<typeof ProbeWorker>[1], onResult: (ok: boolean, msg: string) => void): void {
    const w = new ProbeWorker(probe, target, (ok, msg) => {
      if (!this.running) return
      onResult(ok, msg)
      this.#ctx.onChange()
    })
    this.#probes.push(w)
    w.start()
  }

  #probeKill(kind: string, message: string, probe: Probe): void {
    this.#ctx.event('Warning', 'Unhealthy', `${kind === 'liveness' ? 'Liveness' : 'Startup'} probe failed: ${message}`)
    this.#ctx.event('Normal', 'Killing', `Container ${this.name} failed ${kind} probe, will be restarted`)
    this.#stopProbes()
    void this.#terminate((probe.terminationGracePeriodSeconds ?? this.#ctx.graceSeconds) * 1000)
  }

  #stopProbes(): void {
    for (const p of this.#probes.splice(0)) p.stop()
  }
}

function podRef(pod: KubeObject): string {
  return `${String(pod.metadata.name)}_${String(pod.metadata.namespace)}(${String(pod.metadata.uid)})`
}
