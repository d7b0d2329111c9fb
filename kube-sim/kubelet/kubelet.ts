/**
 * The stand-in's kubelet, one per node (issue 10): registers its Node (labels, taints, capacity and allocatable
 * from `cpu`/`memoryMi`, the Ready condition, InternalIP 127.(100+index).0.1, node info), renews its Lease in
 * `kube-node-lease` every 10 s (the heartbeat; the Node itself is written only when something changes), watches
 * the pods bound to it and runs each in a PodWorker (its cgroup `<cluster>/<node>/kubepods/[<qos>/]pod<uid>`) with its own loopback address 127.(100+index).x.y — Linux
 * answers on all of 127/8 through `lo`, so pods can all listen on 8888. `vanish()` is a machine that disappears:
 * every container SIGKILLed at once, nothing more written.
 */
import { chmod, mkdir, stat } from 'node:fs/promises'
import { createServer } from 'node:net'
import { release } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import type { Logger } from 'pino'
import type { CgroupDriver } from '../../cgroups/index.js'
import type { KubeObject, ObjectStore } from '../types.js'
import { type Kinds, isApiError, keyOf, recordEvent, sameJson } from '../controllers/shared.js'
import type { Taint } from '../scheduling/node-fit.js'
import type { ImageMap } from './images.js'
import type { LogRing } from './log-ring.js'
import { PodWorker } from './pod-worker.js'
import { qosOf } from './pod-status.js'

export interface KubeletOptions {
  store: ObjectStore
  kinds: Kinds
  nodeName: string
  /** The node's subnet (reserveNodeSubnet): its address is 127.N.0.1, its pods' 127.N.x.y. */
  subnet: number
  labels: Record<string, string>
  taints: Taint[]
  /** Where the node's pods live: `<dataDir>/nodes/<node>/pods/<uid>/`. */
  dataDir: string
  images: ImageMap
  cgroups: CgroupDriver | undefined
  /** The cluster's cgroup parent (`kube-sim/<clusterId>`); the node's groups go under `<parent>/<node>/`. */
  cgroupParent: string
  /** @default 4 */
  cpu?: number
  /** @default 8192 */
  memoryMi?: number
  /** @default 1000 */
  backoffBaseMs?: number
  /** Tasks a container may run (a real kubelet's `--pod-max-pids`, per container here); 0: unlimited. @default 0 */
  podPidsLimit?: number
  /** Index of the first pod address tried (0 → 127.(100+i).1.1). @default random */
  firstPodAddress?: number
  /** Environment every container starts from (PATH, the API server's KUBERNETES_SERVICE_* variables). */
  baseEnv?: () => Record<string, string>
  /**
   * The API's kubeconfig, given to pods that mount a service-account token (the stand-in's stand-in for the token
   * volume: in a file of the pod's own, named by KUBECONFIG, since `/var/run/secrets/…` is the host's path here).
   */
  kubeconfig?: () => string
  log?: Logger | undefined
}

const LEASE_RENEW_MS = 10_000
const MAX_PODS = 110

export class Kubelet {
  readonly nodeName: string
  readonly hostIP: string
  readonly #opts: KubeletOptions
  readonly #workers = new Map<string, PodWorker>()
  readonly #usedIPs = new Set<string>()
  #cursor: number
  #stopWatch: (() => void) | undefined
  #stopServiceWatch: (() => void) | undefined
  #leaseTimer: NodeJS.Timeout | undefined
  #gone = false

  constructor(opts: KubeletOptions) {
    if (!Number.isInteger(opts.subnet) || opts.subnet < 1 || opts.subnet > 254) throw new RangeError(`node subnet ${opts.subnet} is outside 1…254`)
    this.#opts = opts
    this.nodeName = opts.nodeName
    this.hostIP = `127.${opts.subnet}.0.1`
    this.#cursor = opts.firstPodAddress ?? Math.floor(Math.random() * 255 * 254)
  }

  async start(): Promise<void> {
    await mkdir(this.#root(), { recursive: true, mode: 0o755 })
    await this.#traversable()
    this.#register()
    this.#renewLease()
    this.#leaseTimer = setInterval(() => this.#renewLease(), LEASE_RENEW_MS)
    this.#leaseTimer.unref()
    this.#stopWatch = this.#opts.store.watch(this.#opts.kinds.pod, { fieldSelector: `spec.nodeName=${this.nodeName}` }, (ev) => {
      if (this.#gone) return
      const pod = ev.object
      const uid = String(pod.metadata.uid)
      const worker = this.#workers.get(uid)
      if (ev.type === 'DELETED') {
        // Removed without the kubelet's part (a force delete, the pod GC): its containers die now.
        if (worker !== undefined) void worker.kill().finally(() => this.#forget(worker))
        return
      }
      if (worker !== undefined) { worker.update(pod); return }
      if (isFinished(pod)) return
      this.#admit(pod)
    })
    // The pods' hosts files follow the Services (kubelet/services.ts); ADDED replays are the initial state, already written.
    this.#stopServiceWatch = this.#opts.store.watch(this.#opts.kinds.service, { resourceVersion: this.#opts.store.currentVersion() }, () => {
      if (this.#gone) return
      for (const w of this.#workers.values()) void w.refreshHosts()
    })
  }

  /** The node's pods' output, for the API server's `pods/log`. */
  logs(namespace: string, pod: string, container?: string, previous = false): LogRing | undefined {
    for (const w of this.#workers.values()) {
      if (w.pod.metadata.namespace === namespace && w.pod.metadata.name === pod) return w.logs(container, previous)
    }
    return undefined
  }

  /** The main-process pid of a running container by its status's `containerID` (`containerd://<id>`; tests). */
  containerPid(containerID: string): number | undefined {
    for (const w of this.#workers.values()) {
      const pid = w.containerPid(containerID)
      if (pid !== undefined) return pid
    }
    return undefined
  }

  /** Main-process pids of the node's running containers. */
  pids(): number[] {
    return [...this.#workers.values()].flatMap((w) => w.pids())
  }

  /** The machine disappears: every container SIGKILLed, nothing written; resolves once all have exited. */
  async vanish(): Promise<void> {
    this.#gone = true
    this.#halt()
    await Promise.all([...this.#workers.values()].map((w) => w.kill()))
    this.#workers.clear()
    await this.#destroyNodeGroup()
  }

  /** Orderly end of the stand-in: as vanish (the cluster goes with it). */
  stop(): Promise<void> {
    return this.vanish()
  }

  #halt(): void {
    this.#stopWatch?.()
    this.#stopWatch = undefined
    this.#stopServiceWatch?.()
    this.#stopServiceWatch = undefined
    if (this.#leaseTimer !== undefined) clearInterval(this.#leaseTimer)
  }

  async #destroyNodeGroup(): Promise<void> {
    const cg = this.#opts.cgroups
    if (cg === undefined) return
    await cg.destroy(cg.refFor(this.#opts.cgroupParent, this.nodeName)).catch((err: unknown) => this.#opts.log?.warn({ err }, 'cannot remove a node cgroup'))
  }

  #root(): string {
    return join(this.#opts.dataDir, 'nodes', this.nodeName)
  }

  /** Containers that run as another user must reach their directories under dataDir: its owner-only bits are widened by x. */
  async #traversable(): Promise<void> {
    if ((process.getuid?.() ?? 0) !== 0) return
    // Pods run as other users (the runtime image as 65534): every directory above the node's data directory and above
    // the images' files must let them through, or each pod fails later and obscurely (its code fetch cannot reach its
    // emptyDir, its server file cannot be read). Said at once.
    await searchableByOthers(this.#opts.dataDir, 'reach')
    for (const spec of Object.values(this.#opts.images)) {
      const argv = Array.isArray(spec) ? spec : spec.command
      for (const a of argv.filter((x) => x.startsWith('/'))) await searchableByOthers(a, 'run')
    }
    for (const dir of [this.#opts.dataDir, join(this.#opts.dataDir, 'nodes'), this.#root()]) {
      const s = await stat(dir)
      if ((s.mode & 0o011) !== 0o011) await chmod(dir, (s.mode & 0o7777) | 0o011)
    }
  }

  #admit(pod: KubeObject): void {
    const uid = String(pod.metadata.uid)
    const o = this.#opts
    const worker = new PodWorker({
      store: o.store, kinds: o.kinds, nodeName: this.nodeName, hostIP: this.hostIP,
      // A hostNetwork pod shares the node's address, as on a real node.
      allocateIP: (ports) => (pod.spec?.hostNetwork === true ? Promise.resolve(this.hostIP) : this.#allocateIP(ports)),
      podDir: join(this.#root(), 'pods', uid), images: o.images, cgroups: o.cgroups,
      cgroupParent: `${o.cgroupParent}/${this.nodeName}/${podCgroup(pod)}`, backoffBaseMs: o.backoffBaseMs ?? 1000, pidsLimit: o.podPidsLimit ?? 0,
      baseEnv: { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', ...(o.baseEnv?.() ?? {}) },
      services: () => o.store.list(o.kinds.service).items,
      kubeconfig: o.kubeconfig,
      log: o.log?.child({ pod: keyOf(pod) }),
      event: (p, type, reason, message) => recordEvent(o.store, o.kinds, p, type, reason, message, 'kubelet', this.nodeName),
    }, pod)
    this.#workers.set(uid, worker)
    worker.start()
    if (pod.metadata.deletionTimestamp !== undefined) worker.update(pod)
  }

  #forget(worker: PodWorker): void {
    if (this.#workers.get(worker.uid) === worker) this.#workers.delete(worker.uid)
    if (worker.podIP !== undefined && worker.podIP !== this.hostIP) this.#usedIPs.delete(worker.podIP)
  }

  /**
   * The next free 127.N.x.y of the node's own subnet (x 1…255, y 1…254; the subnet is reserved host-wide, see
   * subnet.ts), round-robin from a random start so a freed address is not reused at once; an address where one of
   * the pod's declared ports is already taken (by a process outside the stand-in) is skipped.
   */
  async #allocateIP(ports: readonly number[]): Promise<string> {
    const prefix = `127.${this.#opts.subnet}`
    const size = 255 * 254
    for (let n = 0; n < size; n++) {
      const k = (this.#cursor + n) % size
      const ip = `${prefix}.${1 + Math.floor(k / 254)}.${1 + (k % 254)}`
      if (this.#usedIPs.has(ip)) continue
      this.#usedIPs.add(ip)
      if (await portsFree(ip, ports)) {
        this.#cursor = k + 1
        return ip
      }
      this.#usedIPs.delete(ip)
    }
    throw new Error(`node ${this.nodeName} has no pod address left`)
  }

  #register(): void {
    const { store, kinds } = this.#opts
    const cpu = String(this.#opts.cpu ?? 4)
    const memory = `${(this.#opts.memoryMi ?? 8192) * 1024}Ki`
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
    const resources = { cpu, memory, pods: String(MAX_PODS), 'ephemeral-storage': '100Gi' }
    const condition = (type: string, status: string, reason: string, message: string): Record<string, string> =>
      ({ type, status, reason, message, lastHeartbeatTime: now, lastTransitionTime: now })
    const status = {
      capacity: resources,
      allocatable: resources,
      conditions: [
        condition('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'kubelet has sufficient memory available'),
        condition('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'kubelet has no disk pressure'),
        condition('PIDPressure', 'False', 'KubeletHasSufficientPID', 'kubelet has sufficient PID available'),
        condition('Ready', 'True', 'KubeletReady', 'kubelet is posting ready status'),
      ],
      addresses: [{ type: 'InternalIP', address: this.hostIP }, { type: 'Hostname', address: this.nodeName }],
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: {
        machineID: this.nodeName, systemUUID: this.nodeName, bootID: String(process.pid),
        kernelVersion: release(), osImage: 'Kindling cluster stand-in', containerRuntimeVersion: 'kindling-sim://0.1.0',
        kubeletVersion: 'v1.34.0-kindling-sim', kubeProxyVersion: '', operatingSystem: 'linux', architecture: process.arch === 'x64' ? 'amd64' : process.arch,
      },
    }
    const spec = this.#opts.taints.length > 0 ? { taints: this.#opts.taints } : {}
    const existing = store.get(kinds.node, undefined, this.nodeName)
    let node: KubeObject
    if (existing === undefined) {
      node = store.create(kinds.node, { apiVersion: 'v1', kind: 'Node', metadata: { name: this.nodeName, labels: this.#opts.labels }, spec, status })
      // The API server ignores status on create for kinds with a status subresource; write it as the kubelet does.
      if (!sameJson(node.status, status)) node = store.update(kinds.node, { ...node, status }, { subresource: 'status' })
    } else {
      node = store.update(kinds.node, { ...existing, status }, { subresource: 'status' })
    }
    recordEvent(store, kinds, node, 'Normal', 'NodeReady', `Node ${this.nodeName} status is now: NodeReady`, 'kubelet', this.nodeName)
  }

  #renewLease(): void {
    if (this.#gone) return
    const { store, kinds } = this.#opts
    const renewTime = new Date().toISOString().replace('Z', '000Z').replace(/(\.\d{6})\d*Z$/, '$1Z')
    const current = store.get(kinds.lease, 'kube-node-lease', this.nodeName)
    try {
      if (current === undefined) {
        const node = store.get(kinds.node, undefined, this.nodeName)
        store.create(kinds.lease, {
          apiVersion: 'coordination.k8s.io/v1', kind: 'Lease',
          metadata: {
            name: this.nodeName, namespace: 'kube-node-lease',
            ...(node === undefined ? {} : { ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: this.nodeName, uid: String(node.metadata.uid) }] }),
          },
          spec: { holderIdentity: this.nodeName, leaseDurationSeconds: 40, renewTime },
        })
      } else {
        store.update(kinds.lease, { ...current, spec: { ...current.spec, renewTime } })
      }
    } catch (err) {
      if (!isApiError(err, 409) && !isApiError(err, 404)) this.#opts.log?.warn({ err }, 'node lease renewal failed')
    }
  }
}

/**
 * A pod's cgroup below the node's, as the kubelet's cgroupfs driver names it: `kubepods/pod<uid>` for a Guaranteed
 * pod, `kubepods/burstable/pod<uid>` and `kubepods/besteffort/pod<uid>` for the others (its QoS class); each
 * container's group under it is named by its container id. A node agent finds pods there as on a real node.
 */
export function podCgroup(pod: KubeObject): string {
  const uid = String(pod.metadata.uid)
  const qos = String(pod.status?.qosClass ?? qosOf(pod))
  return qos === 'Guaranteed' ? `kubepods/pod${uid}` : `kubepods/${qos === 'BestEffort' ? 'besteffort' : 'burstable'}/pod${uid}`
}

function isFinished(pod: KubeObject): boolean {
  return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed'
}

/** Whether every port can be bound on `ip` now (a listen that is closed at once). */
async function portsFree(ip: string, ports: readonly number[]): Promise<boolean> {
  for (const port of new Set(ports)) {
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer()
      server.once('error', () => resolve(false))
      server.listen({ host: ip, port, exclusive: true }, () => server.close(() => resolve(true)))
    })
    if (!free) return false
  }
  return true
}

/** Throws, naming it, when a directory above `path` does not let other users through (mode without o+x). */
async function searchableByOthers(path: string, verb: string): Promise<void> {
  for (let dir = dirname(resolve(path)); ; dir = dirname(dir)) {
    const s = await stat(dir)
    if ((s.mode & 0o001) === 0) {
      throw new Error(`kube-sim: pods run as other users and cannot ${verb} ${path}: ${dir} is not searchable by others (mode ${(s.mode & 0o777).toString(8).padStart(4, '0')}); use a path under searchable directories (e.g. --data-dir /var/tmp/kube-sim, a checkout outside /root) or chmod o+x ${dir}`)
    }
    if (dir === dirname(dir)) return
  }
}
