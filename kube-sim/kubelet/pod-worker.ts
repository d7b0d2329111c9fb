/**
 * One pod on a stand-in node (issue 10): its "sandbox" (a loopback IP of its own, a directory with its volumes —
 * emptyDir as plain directories, world-writable as the real ones; configMap and secret volumes as files; hostPath
 * as the path itself; others empty), its init containers one after another, then its containers, its status
 * written through the store's status subresource whenever something changes, and its end: on deletion every
 * container gets SIGTERM, SIGKILL after the grace period, then the pod is removed (`gracePeriodSeconds: 0`).
 */
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { Logger } from 'pino'
import type { CgroupDriver } from '../../cgroups/index.js'
import type { KubeObject, ObjectStore } from '../types.js'
import { type Kinds, isApiError, nowIso, sameJson } from '../controllers/shared.js'
import { ContainerRunner } from './container.js'
import type { EnvSources, HostMount } from './env.js'
import type { ImageMap } from './images.js'
import { type LogRing } from './log-ring.js'
import { podStatus } from './pod-status.js'
import { hostsFile, serviceLinkEnv, writeInPlace } from './services.js'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any

export interface PodWorkerContext {
  store: ObjectStore
  kinds: Kinds
  nodeName: string
  hostIP: string
  /** The pod's address, given the ports its containers declare (checked free: other stand-ins may share the host). */
  allocateIP(ports: readonly number[]): Promise<string>
  podDir: string
  images: ImageMap
  cgroups: CgroupDriver | undefined
  /** The pod's cgroup (relative): `kube-sim/<cluster>/<node>/kubepods/[burstable|besteffort/]pod<uid>`. */
  cgroupParent: string
  backoffBaseMs: number
  pidsLimit: number
  baseEnv: Record<string, string>
  /** The cluster's Services now (the pod's hosts file and service-link variables; kubelet/services.ts). */
  services(): KubeObject[]
  /** The API's kubeconfig for pods that mount a service-account token (see KubeletOptions.kubeconfig). */
  kubeconfig?: (() => string) | undefined
  log: Logger | undefined
  event(pod: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): void
}

export class PodWorker {
  readonly uid: string
  readonly #ctx: PodWorkerContext
  #pod: KubeObject
  readonly #inits: ContainerRunner[] = []
  readonly #containers: ContainerRunner[] = []
  readonly #startTime = nowIso()
  #initialized = false
  #initFailed = false
  #sandboxReady = false
  #terminating: Promise<void> | undefined
  #silent = false
  #flushScheduled = false
  #mounts = new Map<string, HostMount[]>()
  #run: Promise<void> | undefined
  #podIP: string | undefined
  #hostsWrite: Promise<void> = Promise.resolve()
  #tokenEnv: Record<string, string> = {}

  constructor(ctx: PodWorkerContext, pod: KubeObject) {
    this.#ctx = ctx
    this.#pod = pod
    this.uid = String(pod.metadata.uid)
  }

  get pod(): KubeObject {
    return this.#pod
  }

  /** The pod's address once its sandbox is up. */
  get podIP(): string | undefined {
    return this.#podIP
  }

  start(): void {
    this.#run ??= this.#runPod().catch((err: unknown) => this.#ctx.log?.error({ err, pod: this.#pod.metadata.name }, 'pod worker failed'))
  }

  /** A newer version of the pod from the watch; a deletion timestamp starts the graceful stop. */
  update(pod: KubeObject): void {
    this.#pod = pod
    if (pod.metadata.deletionTimestamp !== undefined) void this.terminate((pod.metadata.deletionGracePeriodSeconds ?? 30) * 1000)
  }

  logs(container: string | undefined, previous = false): LogRing | undefined {
    const all = [...this.#containers, ...this.#inits]
    const c = container === undefined ? this.#containers[0] : all.find((x) => x.name === container)
    return c?.logs(previous)
  }

  containerNames(): string[] {
    return [...this.#containers, ...this.#inits].map((c) => c.name)
  }

  /** The pid of the running main process of the container with that status `containerID`. */
  containerPid(containerID: string): number | undefined {
    return [...this.#inits, ...this.#containers].find((c) => c.containerID === containerID)?.pid
  }

  /** Pids of the running main processes. */
  pids(): number[] {
    return [...this.#inits, ...this.#containers].map((c) => c.pid).filter((p): p is number => p !== undefined)
  }

  /** Graceful stop, then the pod's removal; one stop however often asked. */
  terminate(graceMs: number): Promise<void> {
    this.#terminating ??= (async () => {
      await Promise.all([...this.#inits, ...this.#containers].map((c) => c.stop(graceMs)))
      await this.#run
      this.#flushNow()
      if (this.#silent) return
      try {
        this.#ctx.store.delete(this.#ctx.kinds.pod, this.#pod.metadata.namespace, String(this.#pod.metadata.name), { gracePeriodSeconds: 0, preconditions: { uid: this.uid } })
      } catch (err) {
        if (!isApiError(err, 404) && !isApiError(err, 409)) throw err
      }
      await this.cleanUp()
    })()
    return this.#terminating
  }

  /** The machine vanished (or the pod was removed behind the kubelet's back): SIGKILL now, write nothing. */
  async kill(): Promise<void> {
    this.#silent = true
    // SIGKILL now, even when a graceful stop is already waiting out its grace period.
    await Promise.all([...this.#inits, ...this.#containers].map((c) => c.stop(0)))
    await this.#run
    await this.#terminating
    await this.cleanUp()
  }

  async cleanUp(): Promise<void> {
    const cg = this.#ctx.cgroups
    if (cg !== undefined) {
      const parent = dirname(this.#ctx.cgroupParent)
      const name = this.#ctx.cgroupParent.slice(parent.length + 1)
      await cg.destroy(cg.refFor(parent, name)).catch((err: unknown) => this.#ctx.log?.warn({ err }, 'cannot remove a pod cgroup'))
    }
    await rm(this.#ctx.podDir, { recursive: true, force: true }).catch(() => undefined)
  }

  /**
   * The service-account token, unless the pod or its ServiceAccount turns it off (`automountServiceAccountToken`):
   * a kubeconfig with the API's address, CA and token in the pod's directory, named by KUBECONFIG. Readable by the
   * pod's users (0644 under the pod's 0755 directory), as the projected token volume is.
   */
  async #mountToken(): Promise<void> {
    const make = this.#ctx.kubeconfig
    if (make === undefined) return
    const spec = this.#pod.spec ?? {}
    const sa = this.#ctx.store.get(this.#ctx.store.type('', 'v1', 'serviceaccounts')!, String(this.#pod.metadata.namespace), String(spec.serviceAccountName ?? 'default'))
    const automount = spec.automountServiceAccountToken ?? sa?.automountServiceAccountToken ?? true
    if (automount === false) return
    const dir = join(this.#ctx.podDir, 'serviceaccount')
    await mkdir(dir, { recursive: true, mode: 0o755 })
    const file = join(dir, 'kubeconfig')
    await writeFile(file, make(), { mode: 0o644 })
    await chmod(file, 0o644)
    this.#tokenEnv = { KUBECONFIG: file }
  }

  /** The pod's hosts file (bound over its containers' /etc/hosts). */
  get #hostsPath(): string {
    return join(this.#ctx.podDir, 'etc-hosts')
  }

  /** Rewrites the pod's hosts file from the cluster's Services (the kubelet calls it when they change). */
  refreshHosts(): Promise<void> {
    // One write at a time: two interleaved in-place writes could mix their texts.
    this.#hostsWrite = this.#hostsWrite.then(async () => {
      if (this.#podIP === undefined || this.#halted) return
      await writeInPlace(this.#hostsPath, hostsFile(this.#pod, this.#podIP, this.#ctx.services()))
        .catch((err: unknown) => this.#ctx.log?.warn({ err }, 'cannot write a pod\'s hosts file'))
    })
    return this.#hostsWrite
  }

  /** Being stopped (gracefully or not): no container starts any more. */
  get #halted(): boolean {
    return this.#terminating !== undefined || this.#silent
  }

  async #runPod(): Promise<void> {
    const spec = this.#pod.spec ?? {}
    try {
      await this.#setUpVolumes()
    } catch (err) {
      this.#ctx.event(this.#pod, 'Warning', 'FailedMount', `Unable to set up volumes: ${(err as Error).message}`)
      throw err
    }
    const ports = [...(spec.initContainers ?? []), ...(spec.containers ?? [])]
      .flatMap((c: Any) => (c.ports ?? []).map((p: Any) => Number(p.containerPort))).filter((p: number) => Number.isInteger(p) && p > 0)
    this.#podIP = await this.#ctx.allocateIP(ports)
    if (this.#halted) return
    await this.refreshHosts()
    await this.#mountToken()
    this.#sandboxReady = true
    this.#changed()
    const restartPolicy: 'Always' | 'OnFailure' | 'Never' = spec.restartPolicy ?? 'Always'
    for (const c of (spec.initContainers ?? []) as Any[]) {
      if (this.#halted) return
      const runner = this.#runner(c, restartPolicy === 'Never' ? 'Never' : 'OnFailure')
      this.#inits.push(runner)
      await runner.start()
      if (runner.finished?.exitCode !== 0) {
        if (!this.#halted) { this.#initFailed = true; this.#changed() }
        return
      }
    }
    if (this.#halted) return
    this.#initialized = true
    for (const c of (spec.containers ?? []) as Any[]) this.#containers.push(this.#runner(c, restartPolicy))
    this.#changed()
    await Promise.all(this.#containers.map((r) => r.start()))
    this.#changed()
  }

  #runner(spec: Any, restartPolicy: 'Always' | 'OnFailure' | 'Never'): ContainerRunner {
    const dir = join(this.#ctx.podDir, 'containers', String(spec.name))
    const store = this.#ctx.store
    const kinds = this.#ctx.kinds
    const sources: EnvSources = {
      configMap: (ns, name) => store.get(kinds.configMap, ns, name),
      secret: (ns, name) => store.get(kinds.secret, ns, name),
    }
    return new ContainerRunner({
      pod: this.#pod, spec, restartPolicy, podIP: this.#podIP as string, hostIP: this.#ctx.hostIP,
      mounts: this.#mountsOf(spec), dir, images: this.#ctx.images, cgroups: this.#ctx.cgroups, cgroupParent: this.#ctx.cgroupParent,
      sources, baseEnv: { ...this.#ctx.baseEnv, ...this.#tokenEnv, HOSTNAME: String(this.#pod.metadata.name), HOME: dir },
      hostsFile: this.#hostsPath,
      serviceEnv: () => (this.#pod.spec?.enableServiceLinks === false ? {}
        : serviceLinkEnv(this.#ctx.services().filter((s) => s.metadata.namespace === this.#pod.metadata.namespace))),
      backoffBaseMs: this.#ctx.backoffBaseMs, pidsLimit: this.#ctx.pidsLimit, graceSeconds: Number(this.#pod.spec?.terminationGracePeriodSeconds ?? 30),
      onChange: () => this.#changed(),
      event: (type, reason, message) => this.#ctx.event(this.#pod, type, reason, message),
      log: this.#ctx.log,
    })
  }

  #mountsOf(container: Any): HostMount[] {
    return this.#mounts.get(String(container.name)) ?? []
  }

  async #setUpVolumes(): Promise<void> {
    const spec = this.#pod.spec ?? {}
    const volumes = new Map<string, string>()
    await mkdir(this.#ctx.podDir, { recursive: true, mode: 0o755 })
    for (const v of (spec.volumes ?? []) as Any[]) {
      let dir = join(this.#ctx.podDir, 'volumes', String(v.name))
      if (v.hostPath !== undefined) {
        dir = String(v.hostPath.path)
        if (v.hostPath.type === 'DirectoryOrCreate') await mkdir(dir, { recursive: true })
      } else {
        await mkdir(dir, { recursive: true })
        // An emptyDir is world-writable (0777), as the real kubelet makes it: any runAsUser can use it.
        await chmod(dir, 0o777)
        const source = v.configMap ?? v.secret
        if (source !== undefined) await this.#writeKeys(dir, source, v.secret !== undefined)
      }
      volumes.set(String(v.name), dir)
    }
    for (const c of [...(spec.initContainers ?? []), ...(spec.containers ?? [])] as Any[]) {
      const mounts: HostMount[] = []
      for (const m of (c.volumeMounts ?? []) as Any[]) {
        const base = volumes.get(String(m.name))
        if (base === undefined) continue
        const hostPath = m.subPath ? join(base, String(m.subPath)) : base
        if (m.subPath) await mkdir(hostPath, { recursive: true, mode: 0o777 })
        mounts.push({ mountPath: String(m.mountPath), hostPath })
      }
      this.#mounts.set(String(c.name), mounts)
      const cdir = join(this.#ctx.podDir, 'containers', String(c.name))
      await mkdir(cdir, { recursive: true })
      await chmod(cdir, 0o777)
    }
  }

  async #writeKeys(dir: string, source: Any, isSecret: boolean): Promise<void> {
    const name = String(isSecret ? source.secretName : source.name)
    const obj = this.#ctx.store.get(isSecret ? this.#ctx.kinds.secret : this.#ctx.kinds.configMap, this.#pod.metadata.namespace, name)
    if (obj === undefined) {
      if (source.optional === true) return
      throw new Error(`${isSecret ? 'secret' : 'configmap'} "${name}" not found`)
    }
    const data: Record<string, Buffer> = {}
    for (const [k, v] of Object.entries((obj.data ?? {}) as Record<string, string>)) data[k] = isSecret ? Buffer.from(v, 'base64') : Buffer.from(v)
    for (const [k, v] of Object.entries((obj.binaryData ?? obj.stringData ?? {}) as Record<string, string>)) data[k] = isSecret ? Buffer.from(v) : Buffer.from(v, 'base64')
    const items: Array<{ key: string; path: string }> = source.items ?? Object.keys(data).map((k) => ({ key: k, path: k }))
    for (const item of items) {
      const value = data[item.key]
      if (value === undefined) continue
      const file = join(dir, item.path)
      await mkdir(dirname(file), { recursive: true })
      await writeFile(file, value, { mode: source.defaultMode ?? 0o644 })
    }
  }

  #changed(): void {
    if (this.#flushScheduled || this.#silent) return
    this.#flushScheduled = true
    setImmediate(() => {
      this.#flushScheduled = false
      this.#flushNow()
    })
  }

  #flushNow(): void {
    if (this.#silent) return
    const { store, kinds } = this.#ctx
    const stored = store.get(kinds.pod, this.#pod.metadata.namespace, String(this.#pod.metadata.name))
    if (stored === undefined || stored.metadata.uid !== this.uid) return
    const spec = stored.spec ?? {}
    const waiting = (c: Any): Any => ({
      name: c.name, image: c.image, imageID: '', state: { waiting: { reason: this.#sandboxReady ? 'PodInitializing' : 'ContainerCreating' } },
      lastState: {}, ready: false, started: false, restartCount: 0,
    })
    const init = (spec.initContainers ?? []).map((c: Any, i: number) => this.#inits[i]?.status() ?? waiting(c))
    const containers = (spec.containers ?? []).map((c: Any, i: number) => this.#containers[i]?.status() ?? waiting(c))
    const status = podStatus(stored, {
      podIP: this.#sandboxReady ? this.#podIP : undefined, hostIP: this.#ctx.hostIP, startTime: this.#startTime,
      init, initialized: this.#initialized || (spec.initContainers ?? []).length === 0 && this.#sandboxReady, initFailed: this.#initFailed,
      containers, restartPolicy: spec.restartPolicy ?? 'Always', sandboxReady: this.#sandboxReady,
    }, nowIso())
    if (sameJson(status, stored.status)) return
    try {
      store.update(kinds.pod, { ...stored, status }, { subresource: 'status' })
    } catch (err) {
      if (isApiError(err, 404)) return
      if (isApiError(err, 409)) { this.#changed(); return }
      this.#ctx.log?.warn({ err, pod: stored.metadata.name }, 'pod status write failed')
    }
  }
}
