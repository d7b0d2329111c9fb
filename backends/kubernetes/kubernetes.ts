import { AppsV1Api, CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { Dispatcher } from 'undici'
import { KILLED_DETAILS, type ContainerBackend, type ExitReason, type GenericPoolSpec, type InstanceExit, type InstanceHandle, type InstanceRequest } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import type { InstanceAddress } from '../../common/types.js'
import { dispatcherFor, fetchCode, health, type HealthAnswer } from '../../protocol/runtime-client.js'
import { agentRef, agentTarget, type AgentClient } from './agents.js'
import { LABEL, POOL_ANNOTATION, apiError, sameQuantity, checkId, describePod, isReady, noop, podEnd, silent, statusOf, type KubeLog, type PodEnd } from './kube-common.js'
import { RUNTIME_PORT, barePod, claimLabels, poolDeployment, resourcesOf, type NodeRole } from './pod-spec.js'
import { PodWatch, withTimeout, type PodEventType } from './pod-watch.js'
import { PoolDeployments, mergePatch } from './pool-deployments.js'

export type { KubeLog } from './kube-common.js'


/** What the backend needs of the code server (backends/kubernetes/code-server.ts): a per-instance grant, revoked at stop. */
export interface CodeGrants {
  grant(instanceId: string, hostCodeDir: string): Promise<{ url: string; sha256: string; token: string }>
  revoke?(instanceId: string): void
}

export interface KubernetesBackendOptions {
  /** This platform's id (common/platform-id.ts): its pods and Deployments carry `kindling.io/platform=<id>`. */
  platformId: string
  /** A client configuration (constructed by main.ts from a kubeconfig). */
  kubeConfig: KubeConfig
  /** Namespace of every pod and Deployment; created when missing. @default 'kindling' */
  namespace?: string | undefined
  /** Image of runtime pods when neither the request nor `images` names one. @default `kindling/runtime-node:<version>` */
  runtimeImage: string
  /** Image per runtime name, before `runtimeImage`. */
  images?: Record<string, string> | undefined
  /** Label (nodeSelector) and NoSchedule taint (toleration) of the runtime nodes. @default kindling.io/node-role=runtime */
  runtimeNodes?: NodeRole | undefined
  /** The same for the quarantine nodes (load guard). @default kindling.io/node-role=quarantine */
  quarantineNodes?: NodeRole | undefined
  /** Grants pods their function's code (prepareCode). */
  codeServer: CodeGrants
  /**
   * The code server's origin as pods reach it (`http://host:port`, CodeServer.start's answer): a runtime then fetches
   * from there only, so whoever else reaches a generic pod's port cannot make it download code (KINDLING_CODE_ORIGIN).
   */
  codeOrigin?: string | undefined
  /** How long a start may take: a claim and its health check, or a bare pod's scheduling, start and readiness, ms. */
  startTimeoutMs: number
  /** Bound on each API call, ms. @default 10_000 */
  apiTimeoutMs?: number | undefined
  /** Bound on a pod's code fetch, ms. @default 30_000 */
  fetchTimeoutMs?: number | undefined
  /** Size bounds of each pod's /tmp and /code emptyDirs, MiB. @default 64, 256 */
  tmpMb?: number | undefined
  codeMb?: number | undefined
  log?: KubeLog | undefined
  /**
   * The node agents (issue 13, KINDLING_AGENT_SELECTOR): set, each instance's handle carries a ref the load guard reads
   * through the agent of the pod's node, and setCpu() lowers the pod's CFS quota there. Closed with the backend.
   */
  agents?: AgentClient | undefined
}

/** A pod this backend holds for an instance: claimed from a pool, or created bare. */
interface Held {
  id: string
  runtime: string
  pool: string
  podName?: string | undefined
  address?: { host: string; port: number } | undefined
  /** The runtime container's restarts when the pod became the instance's: one more means it died. */
  restarts: number
  started: boolean
  stopping: boolean
  ended: boolean
  startFailed: AbortController
  died: Promise<void>
  markDied: () => void
}

const REMEMBERED = 1024
/** Pool pods one start claims before it creates a pod of its own (each claimed one that did not answer is deleted). */
const CLAIM_TRIES = 3
/** How long a claimed pool pod (Ready, so listening) may take to answer its health check. */
const POOL_PROBE_MS = 2_000
/** How long exitReason() waits for the watch to report a death it has not reported yet. */
const EXIT_WAIT_MS = 2_000
const DEFAULT_RUNTIME_NODES: NodeRole = { key: 'kindling.io/node-role', value: 'runtime' }
const DEFAULT_QUARANTINE_NODES: NodeRole = { key: 'kindling.io/node-role', value: 'quarantine' }

/**
 * Instances as Kubernetes pods (issue 10). Each runtime's generic pool is a Deployment of runtime pods on the
 * runtime nodes (`ownsGenericPools`: the pool manager hands the pools over); start() claims a Ready pool pod by
 * relabelling it out of the Deployment's selector (a merge patch guarded by its resourceVersion: a 409 means another
 * claimer won, take the next), and the ReplicaSet refills the pool by itself. A start no pool pod fits (other
 * limits, egress, quarantine, an empty pool) creates a bare pod owned by nobody. Pods are reached on
 * `podIP:8888`: the warm path never touches the API. One pod watch keeps the pool copy and reports deaths
 * (OOMKilled, crashes, deletions behind the platform's back) to the exit listeners.
 *
 * `close()` deletes the pods it holds and leaves the Deployments: they are the pools, and a restarted platform
 * (same platform id) claims from them at once. `deletePools()` removes them (teardown, tests).
 */
export class KubernetesBackend implements ContainerBackend {
  readonly name = 'kubernetes'
  readonly ownsGenericPools = true
  /** A claim is two API calls and a health check; a bare pod waits on the cluster, not on this host. */
  readonly parallelStarts = 16
  readonly #o: KubernetesBackendOptions
  readonly #ns: string
  readonly #server: string
  readonly #core: CoreV1Api
  readonly #deployments: PoolDeployments
  readonly #log: KubeLog
  readonly #apiTimeoutMs: number
  readonly #watch: PodWatch
  readonly #held = new Map<string, Held>()
  /** Held pods by pod name. */
  readonly #byPod = new Map<string, string>()
  /** Pool pods a claim of this backend is patching now: another local claim skips them. */
  readonly #claiming = new Set<string>()
  readonly #pools = new Map<string, GenericPoolSpec>()
  readonly #reasons = new Map<string, ExitReason>()
  readonly #listeners: Array<(exit: InstanceExit) => void> = []
  /** Callbacks run on every event of a pod (start() waiting for a pod to be Ready). */
  readonly #podWaiters = new Map<string, Set<() => void>>()
  readonly #stops = new Map<string, Promise<void>>()
  #closing = false
  /** Pods whose delete failed (the API server away), retried until they are gone. */
  readonly #deleting = new Map<string, NodeJS.Timeout>()

  constructor(opts: KubernetesBackendOptions) {
    this.#o = opts
    this.#ns = opts.namespace ?? 'kindling'
    this.#server = opts.kubeConfig.getCurrentCluster()?.server ?? '(no current cluster)'
    this.#core = opts.kubeConfig.makeApiClient(CoreV1Api)
    this.#log = opts.log ?? silent
    this.#apiTimeoutMs = opts.apiTimeoutMs ?? 10_000
    this.#deployments = new PoolDeployments({
      core: this.#core, apps: opts.kubeConfig.makeApiClient(AppsV1Api), namespace: this.#ns, platformId: opts.platformId, server: this.#server, timeoutMs: this.#apiTimeoutMs,
    })
    this.#watch = new PodWatch({
      kubeConfig: opts.kubeConfig, core: this.#core, namespace: this.#ns, labelSelector: `${LABEL.platform}=${opts.platformId}`,
      server: this.#server, timeoutMs: this.#apiTimeoutMs, log: this.#log, onEvent: (type, pod) => this.#onPod(type, pod),
    })
  }

  /** One API call, bounded and wrapped as KDL_ERR_BACKEND. */
  async #api<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await withTimeout(call(), this.#apiTimeoutMs, what)
    } catch (err) {
      throw apiError(`cannot ${what}`, err, this.#server)
    }
  }

  async #ready(): Promise<void> {
    await this.#deployments.namespace()
    await this.#watch.ensure()
  }

  #imageOf(runtime: string, image?: string): string {
    return image ?? this.#o.images?.[runtime] ?? this.#o.runtimeImage
  }

  /** The Deployment of a runtime's pool. */
  poolName(runtime: string): string {
    return `kindling-${this.#o.platformId}-${runtime}`
  }

  /** Creates or updates the runtime's pool Deployment (replicas = size, the pod shape of its limits and image). */
  async setGenericPool(pool: GenericPoolSpec): Promise<void> {
    if (this.#closing) throw new KdlError('KDL_ERR_BACKEND', 'kubernetes backend is closed')
    this.#pools.set(pool.runtime, pool)
    await this.#ready()
    const name = this.poolName(pool.runtime)
    const body = poolDeployment(name, this.#ns, pool.size, {
      platformId: this.#o.platformId, runtime: pool.runtime, image: this.#imageOf(pool.runtime, pool.image), memoryMb: pool.memoryMb, cpu: pool.cpu,
      role: this.#o.runtimeNodes ?? DEFAULT_RUNTIME_NODES, tmpMb: this.#o.tmpMb ?? 64, codeMb: this.#o.codeMb ?? 256, codeOrigin: this.#o.codeOrigin,
    })
    // An existing one (an earlier run, another replica of the platform) becomes this pool.
    await this.#deployments.write(body)
    this.#log.info({ backend: this.name, runtime: pool.runtime, size: pool.size, deployment: name }, 'generic pool set')
  }

  /** Ready, unclaimed pool pods of the runtime in the watch's copy (what a claim could take now). */
  genericPoolIdle(runtime: string): number {
    const pool = this.#pools.get(runtime)
    if (pool === undefined) return 0
    const want = resourcesOf(pool.memoryMb, pool.cpu)
    const image = this.#imageOf(runtime, pool.image)
    let n = 0
    for (const [name, pod] of this.#watch.pods) if (this.#claimable(pod, runtime, want, image) && !this.#claiming.has(name) && !this.#byPod.has(name)) n++
    return n
  }

  async start(req: InstanceRequest): Promise<InstanceHandle> {
    if (this.#closing) throw new KdlError('KDL_ERR_BACKEND', 'kubernetes backend is closed')
    checkId(req.id)
    if (this.#held.has(req.id)) throw new KdlError('KDL_ERR_BACKEND', `instance ${req.id} is already running`)
    const t0 = performance.now()
    let markDied = noop
    const died = new Promise<void>((resolve) => { markDied = resolve })
    const held: Held = { id: req.id, runtime: req.runtime, pool: req.pool, restarts: 0, started: false, stopping: false, ended: false, startFailed: new AbortController(), died, markDied }
    this.#held.set(req.id, held)
    this.#reasons.delete(req.id)
    const timer = setTimeout(() => held.startFailed.abort(new KdlError('KDL_ERR_BACKEND',
      `instance ${req.id} was not ready within ${this.#o.startTimeoutMs} ms: ${held.podName === undefined ? 'no pod yet' : describePod(this.#watch.pods.get(held.podName))}`)), this.#o.startTimeoutMs)
    const failed = new Promise<never>((_resolve, reject) => {
      held.startFailed.signal.addEventListener('abort', () => reject(held.startFailed.signal.reason as Error), { once: true })
    })
    failed.catch(noop)
    try {
      await Promise.race([this.#ready(), failed])
      let pod: V1Pod | undefined
      let address: { host: string; port: number } | undefined
      let pooled = false
      // A claimed pool pod that does not answer as a new runtime is dropped and the next one claimed (a few at most).
      for (let tries = 0; pod === undefined && tries < CLAIM_TRIES && this.#fitsPool(req); tries++) {
        pod = await Promise.race([this.#claim(req, held), failed])
        if (pod === undefined) break
        address = { host: pod.status?.podIP ?? '', port: RUNTIME_PORT }
        const answer = await Promise.race([this.#probe(address, held.startFailed.signal, POOL_PROBE_MS).catch((err: unknown) => err as Error), failed])
        if (!(answer instanceof Error) && answer.state === 'generic') { pooled = true; break }
        this.#log.warn({ instance: req.id, pod: held.podName, backend: this.name, address, answer: answer instanceof Error ? answer.message : answer }, 'a claimed pool pod does not answer as a new runtime; deleting it')
        await this.#dropClaim(held)
        pod = undefined
      }
      if (pod === undefined) {
        pod = await Promise.race([this.#startBare(req, held), failed])
        address = { host: pod.status?.podIP ?? '', port: RUNTIME_PORT }
        const answer = await Promise.race([this.#probe(address, held.startFailed.signal), failed])
        // A new runtime has no function: one that answers with a function is not this pod's (an address someone
        // else holds) and is never handed out.
        if (answer.state !== 'generic') throw new KdlError('KDL_ERR_BACKEND', `pod ${held.podName} at ${address.host}:${address.port} answers as a runtime with function ${answer.function ?? '?'} loaded, not a new one`)
      }
      if (address === undefined) throw new KdlError('KDL_ERR_INTERNAL', 'no address')
      held.address = address
      held.startFailed.signal.throwIfAborted()
      held.started = true
      this.#log.debug({ instance: req.id, pool: req.pool, backend: this.name, pod: held.podName, node: pod.spec?.nodeName, pooled, ms: Math.round(performance.now() - t0) }, 'instance started')
      const cgroup = this.#cgroupOf(held.podName === undefined ? pod : this.#watch.pods.get(held.podName) ?? pod)
      return { id: req.id, runtime: req.runtime, pool: req.pool, address, startedAt: Date.now(), pooled, ...(cgroup === undefined ? {} : { cgroup }) }
    } catch (err) {
      await this.stop(req.id).catch((e: unknown) => this.#log.warn({ instance: req.id, err: e }, 'cannot remove a failed instance'))
      if (err instanceof KdlError) throw err
      throw new KdlError('KDL_ERR_BACKEND', `instance ${req.id} did not start: ${(err as Error).message}`, { cause: err })
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Issue 13, a leader failover: the claimed pod of an instance the previous controller handed to a router is this
   * backend's from now on — found in the watch by its instance label (this platform's, claimed, Ready, not being
   * deleted). Exits and stop() then work on it as on any instance started here.
   */
  async adopt(id: string): Promise<InstanceHandle | undefined> {
    checkId(id)
    await this.#ready()
    const known = this.#held.get(id)
    if (known !== undefined) {
      return known.started && !known.stopping && !known.ended && known.address !== undefined
        ? { id, runtime: known.runtime, pool: known.pool, address: known.address, startedAt: Date.now(), pooled: true, ...this.#cgroupField(known.podName) }
        : undefined
    }
    for (const [name, pod] of this.#watch.pods) {
      const labels = pod.metadata?.labels ?? {}
      if (labels[LABEL.instance] !== id || labels[LABEL.platform] !== this.#o.platformId || labels[LABEL.managed] !== 'false') continue
      const ip = pod.status?.podIP ?? ''
      if (pod.metadata?.deletionTimestamp !== undefined || !isReady(pod) || ip === '' || this.#byPod.has(name)) return undefined
      let markDied = noop
      const died = new Promise<void>((resolve) => { markDied = resolve })
      const address = { host: ip, port: RUNTIME_PORT }
      const held: Held = {
        id, runtime: labels[LABEL.runtime] ?? 'node', pool: pod.metadata?.annotations?.[POOL_ANNOTATION] ?? 'unknown', podName: name, address,
        restarts: pod.status?.containerStatuses?.[0]?.restartCount ?? 0, started: true, stopping: false, ended: false, startFailed: new AbortController(), died, markDied,
      }
      this.#held.set(id, held)
      this.#byPod.set(name, id)
      this.#reasons.delete(id)
      this.#log.info({ instance: id, pod: name, node: pod.spec?.nodeName }, 'instance adopted from an earlier controller')
      const created = Date.parse(pod.metadata?.creationTimestamp === undefined ? '' : String(pod.metadata.creationTimestamp))
      return { id, runtime: held.runtime, pool: held.pool, address, startedAt: Number.isFinite(created) ? created : Date.now(), pooled: true, ...this.#cgroupField(name) }
    }
    return undefined
  }

  /** The ref the load guard reads a pod through its node's agent with (only with agents). */
  #cgroupOf(pod: V1Pod | undefined): InstanceHandle['cgroup'] {
    return this.#o.agents === undefined || pod === undefined ? undefined : agentRef(pod)
  }

  #cgroupField(podName: string | undefined): { cgroup?: NonNullable<InstanceHandle['cgroup']> } {
    const cgroup = this.#cgroupOf(podName === undefined ? undefined : this.#watch.pods.get(podName))
    return cgroup === undefined ? {} : { cgroup }
  }

  /**
   * The load guard's throttle (issue 13): the CFS quota of the instance pod's container, set by the node agent of its
   * node (`PUT /v1/pods/:uid/cpu`); `0` removes it. KDL_ERR_AGENT_UNAVAILABLE when that agent does not answer.
   */
  async setCpu(id: string, cores: number): Promise<void> {
    const agents = this.#o.agents
    if (agents === undefined) throw new KdlError('KDL_ERR_BACKEND', 'no node agents (KINDLING_AGENT_SELECTOR is unset): a pod\'s CPU quota cannot be changed')
    const held = this.#held.get(id)
    const pod = held?.podName === undefined ? undefined : this.#watch.pods.get(held.podName)
    const ref = pod === undefined ? undefined : agentRef(pod)
    if (ref === undefined) throw new KdlError('KDL_ERR_BACKEND', `instance ${id} has no running pod of this backend`)
    const t = agentTarget(ref)
    await agents.setCpu(t.node, t.uid, cores, t.containerId)
    this.#log.info({ instance: id, pod: held?.podName, node: t.node, cores }, 'pod CPU quota set by its node agent')
  }

  /** A request the runtime's pool pods serve: same limits and image, no network, not quarantined. */
  #fitsPool(req: InstanceRequest): boolean {
    const pool = this.#pools.get(req.runtime)
    return pool !== undefined && pool.size > 0 && req.memoryMb === pool.memoryMb && req.cpu === pool.cpu && req.network === 'none' &&
      req.quarantine !== true && this.#imageOf(req.runtime, req.image) === this.#imageOf(req.runtime, pool.image)
  }

  /** A Ready pool pod of the request's runtime and limits, not held or being claimed here, oldest first. */
  #candidates(req: InstanceRequest): V1Pod[] {
    const want = resourcesOf(req.memoryMb, req.cpu)
    const image = this.#imageOf(req.runtime, req.image)
    const out: V1Pod[] = []
    for (const [name, pod] of this.#watch.pods) {
      if (!this.#claimable(pod, req.runtime, want, image) || this.#claiming.has(name) || this.#byPod.has(name)) continue
      out.push(pod)
    }
    return out.sort((a, b) => new Date(a.metadata?.creationTimestamp ?? 0).getTime() - new Date(b.metadata?.creationTimestamp ?? 0).getTime())
  }

  #claimable(pod: V1Pod, runtime: string, want: { memory: string; cpu: string }, image: string): boolean {
    const labels = pod.metadata?.labels ?? {}
    const c = pod.spec?.containers?.[0]
    return labels[LABEL.managed] === 'true' && labels[LABEL.runtime] === runtime && labels[LABEL.platform] === this.#o.platformId &&
      pod.metadata?.deletionTimestamp === undefined && isReady(pod) && (pod.status?.podIP ?? '') !== '' &&
      c?.image === image && sameQuantity(c.resources?.limits?.['memory'], want.memory) && sameQuantity(c.resources?.limits?.['cpu'], want.cpu)
  }

  /**
   * Claims a Ready pool pod: a merge patch of its labels carrying the resourceVersion it was seen at. 409: it changed
   * since (another claimer took it, or the kubelet wrote its status) — read it again and try it once more if still
   * free, else the next; 404: gone, the next. Undefined when no pool pod is left to try.
   */
  async #claim(req: InstanceRequest, held: Held): Promise<V1Pod | undefined> {
    for (const seen of this.#candidates(req)) {
      const name = seen.metadata?.name ?? ''
      if (this.#claiming.has(name) || this.#byPod.has(name)) continue
      this.#claiming.add(name)
      try {
        let pod: V1Pod | undefined = seen
        for (let attempt = 0; attempt < 2 && pod !== undefined && !held.startFailed.signal.aborted; attempt++) {
          const body = { metadata: { resourceVersion: pod.metadata?.resourceVersion, labels: claimLabels(req.id, req.pool, req.version), annotations: { [POOL_ANNOTATION]: req.pool } } }
          try {
            const claimed = await withTimeout(this.#core.patchNamespacedPod({ name, namespace: this.#ns, body }, mergePatch), this.#apiTimeoutMs, 'the claim')
            held.podName = name
            held.restarts = claimed.status?.containerStatuses?.[0]?.restartCount ?? 0
            this.#byPod.set(name, req.id)
            // The start gave up (timed out) while the patch was on its way: its stop could not see this pod.
            if (held.stopping) this.#deleteLate(name, req.id)
            this.#log.debug({ instance: req.id, pod: name, backend: this.name }, 'pool pod claimed')
            return claimed
          } catch (err) {
            const s = statusOf(err)
            if (s === 404) break
            if (s !== 409) throw apiError(`cannot claim pool pod ${name}`, err, this.#server)
            this.#log.debug({ instance: req.id, pod: name, backend: this.name }, 'claim lost a race')
          }
          pod = await this.#readPod(name)
          const want = resourcesOf(req.memoryMb, req.cpu)
          if (pod !== undefined && !this.#claimable(pod, req.runtime, want, this.#imageOf(req.runtime, req.image))) pod = undefined
        }
      } finally {
        this.#claiming.delete(name)
      }
    }
    return undefined
  }

  async #readPod(name: string): Promise<V1Pod | undefined> {
    try {
      return await withTimeout(this.#core.readNamespacedPod({ name, namespace: this.#ns }), this.#apiTimeoutMs, 'the pod read')
    } catch (err) {
      if (statusOf(err) === 404) return undefined
      throw apiError(`cannot read pod ${name}`, err, this.#server)
    }
  }

  /** Creates the instance's own pod and waits for it to be Ready (the start timer bounds the wait). */
  async #startBare(req: InstanceRequest, held: Held): Promise<V1Pod> {
    const name = `kindling-${req.id}`
    const role = req.quarantine === true ? this.#o.quarantineNodes ?? DEFAULT_QUARANTINE_NODES : this.#o.runtimeNodes ?? DEFAULT_RUNTIME_NODES
    // `network: egress` pods are labelled `kindling.io/network=egress`: the chart's NetworkPolicy gives only those
    // egress (the stand-in stores NetworkPolicies but does not enforce them).
    const body = barePod(name, this.#ns, req.id, req.pool, req.version, {
      platformId: this.#o.platformId, runtime: req.runtime, image: this.#imageOf(req.runtime, req.image), memoryMb: req.memoryMb, cpu: req.cpu,
      role, env: req.env, tmpMb: this.#o.tmpMb ?? 64, codeMb: this.#o.codeMb ?? 256, codeOrigin: this.#o.codeOrigin,
    }, req.network)
    held.podName = name
    this.#byPod.set(name, req.id)
    await this.#api(`create pod ${name}`, () => this.#core.createNamespacedPod({ namespace: this.#ns, body }))
    if (held.stopping) this.#deleteLate(name, req.id)
    return this.#waitReady(name, held.startFailed.signal)
  }

  /** Lets go of a claimed pool pod that cannot serve: it is deleted (the ReplicaSet no longer counts it) and forgotten. */
  async #dropClaim(held: Held): Promise<void> {
    const name = held.podName
    if (name === undefined) return
    held.podName = undefined
    if (this.#byPod.get(name) === held.id) this.#byPod.delete(name)
    try {
      await withTimeout(this.#core.deleteNamespacedPod({ name, namespace: this.#ns, gracePeriodSeconds: 0 }), this.#apiTimeoutMs, 'the pod delete')
    } catch (err) {
      if (statusOf(err) !== 404) throw apiError(`cannot delete pod ${name}`, err, this.#server)
    }
  }

  /** Deletes a pod that became an instance's after its start had already been given up. */
  #deleteLate(name: string, id: string): void {
    if (this.#byPod.get(name) === id) this.#byPod.delete(name)
    this.#core.deleteNamespacedPod({ name, namespace: this.#ns, gracePeriodSeconds: 0 }).catch((err: unknown) => {
      if (statusOf(err) !== 404) this.#log.warn({ err, instance: id, pod: name }, 'cannot delete the pod of a failed start; list() reports it')
    })
  }

  #waitReady(name: string, signal: AbortSignal): Promise<V1Pod> {
    return new Promise((resolve, reject) => {
      const waiters = this.#podWaiters.get(name) ?? new Set()
      this.#podWaiters.set(name, waiters)
      const finish = (): void => {
        waiters.delete(check)
        if (waiters.size === 0) this.#podWaiters.delete(name)
        signal.removeEventListener('abort', onAbort)
      }
      const check = (): void => {
        const pod = this.#watch.pods.get(name)
        if (pod !== undefined && isReady(pod) && (pod.status?.podIP ?? '') !== '') { finish(); resolve(pod) }
      }
      const onAbort = (): void => { finish(); reject(signal.reason as Error) }
      waiters.add(check)
      signal.addEventListener('abort', onAbort)
      if (signal.aborted) onAbort()
      else check()
    })
  }

  /** GET /_/health on the pod; a refused connection (the runtime not listening yet, or not reachable yet) is retried until the start fails. */
  async #probe(address: InstanceAddress, failed: AbortSignal, timeoutMs = this.#o.startTimeoutMs): Promise<HealthAnswer> {
    let backoff = 2
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const client = dispatcherFor(address)
      try {
        return await health(client, Math.max(1, deadline - Date.now()))
      } catch (err) {
        const code = (err as { code?: unknown }).code
        if (failed.aborted || Date.now() >= deadline || (code !== 'ECONNREFUSED' && code !== 'ECONNRESET')) throw err
      } finally {
        await client.close().catch(noop)
      }
      await new Promise((resolve) => setTimeout(resolve, backoff))
      backoff = Math.min(backoff * 2, 50)
    }
  }

  /** The watch saw a pod change: wake start()s waiting on it; a held pod that ended (or went) not by stop() is an exit. */
  #onPod(type: PodEventType, pod: V1Pod): void {
    const name = pod.metadata?.name ?? ''
    for (const w of [...this.#podWaiters.get(name) ?? []]) w()
    const id = this.#byPod.get(name)
    const held = id === undefined ? undefined : this.#held.get(id)
    if (held === undefined || held.stopping || held.ended) return
    const gone = type === 'DELETED' || pod.metadata?.deletionTimestamp !== undefined
    const end = podEnd(pod, held.restarts)
    // Deleted (or evicted, or its node removed) behind the platform's back: killed, unless its memory limit did it.
    const why: PodEnd | undefined = gone && end?.reason !== 'oom' ? { reason: 'killed', code: null, signal: 'SIGKILL', detail: type === 'DELETED' ? 'the pod was deleted' : 'the pod is being deleted' } : end
    if (why === undefined) return
    held.ended = true
    if (!held.started) {
      held.startFailed.abort(new KdlError('KDL_ERR_BACKEND', `instance ${held.id} ended during start (${why.detail}): ${describePod(pod)}`, why.reason === 'killed' ? { details: KILLED_DETAILS } : {}))
      held.markDied()
      return
    }
    this.#remember(held.id, why.reason)
    held.markDied()
    for (const l of this.#listeners) {
      try { l({ id: held.id, reason: why.reason, code: why.code, signal: why.signal }) } catch (err) { this.#log.error({ err, instance: held.id }, 'exit listener threw') }
    }
    this.#log.warn({ instance: held.id, pool: held.pool, backend: this.name, pod: name, node: pod.spec?.nodeName, reason: why.reason, code: why.code, detail: why.detail }, 'instance exited')
    if (type !== 'DELETED') void this.stop(held.id).catch((err: unknown) => this.#log.warn({ err, instance: held.id }, 'cannot remove an exited instance'))
    else this.#forget(held.id)
  }

  #remember(id: string, reason: ExitReason): void {
    this.#reasons.delete(id)
    this.#reasons.set(id, reason)
    if (this.#reasons.size > REMEMBERED) this.#reasons.delete(this.#reasons.keys().next().value as string)
  }

  #forget(id: string): void {
    const held = this.#held.get(id)
    if (held?.podName !== undefined && this.#byPod.get(held.podName) === id) this.#byPod.delete(held.podName)
    this.#held.delete(id)
    this.#o.codeServer.revoke?.(id)
  }

  /** Deletes the instance's pod (no grace: the instance is done). Idempotent: an unknown or gone pod resolves. */
  stop(id: string): Promise<void> {
    try { checkId(id) } catch (err) { return Promise.reject(err) }
    const pending = this.#stops.get(id)
    if (pending !== undefined) return pending
    const held = this.#held.get(id)
    if (held !== undefined) held.stopping = true
    const p = (async () => {
      try {
        const names = held?.podName !== undefined ? [held.podName] : await this.#podsOf(id)
        for (const name of names) {
          try {
            await this.#deletePod(name)
          } catch (err) {
            // The API server is away (or refused): the instance is gone for the platform all the same, and its pod
            // is deleted as soon as the API answers again — a pod left claimed would hold a node's room forever.
            if (this.#closing) throw apiError(`cannot delete pod ${name} of instance ${id}`, err, this.#server)
            this.#log.warn({ pod: name, instance: id, err: (err as Error).message }, 'pod delete failed; retrying until the API server answers')
            this.#retryDelete(name, 250)
          }
        }
        if (!this.#reasons.has(id)) this.#remember(id, 'stopped')
        held?.markDied()
        this.#forget(id)
      } finally {
        this.#stops.delete(id)
      }
    })()
    this.#stops.set(id, p)
    return p
  }

  /** Deletes a pod at once (grace 0); a 404 is done already. */
  async #deletePod(name: string): Promise<void> {
    try {
      await withTimeout(this.#core.deleteNamespacedPod({ name, namespace: this.#ns, gracePeriodSeconds: 0 }), this.#apiTimeoutMs, 'the pod delete')
    } catch (err) {
      if (statusOf(err) !== 404) throw err
    }
  }

  /** Retries a pod's delete, backing off from `delayMs` to 5 s, until it is gone or the backend closes. */
  #retryDelete(name: string, delayMs: number): void {
    if (this.#deleting.has(name)) return
    const timer = setTimeout(() => {
      this.#deleting.delete(name)
      if (this.#closing) return
      this.#deletePod(name).catch(() => this.#retryDelete(name, Math.min(5000, delayMs * 2)))
    }, delayMs)
    timer.unref()
    this.#deleting.set(name, timer)
  }

  /** Pods carrying the instance's label: the watch's copy, else the API (an instance of an earlier run). */
  async #podsOf(id: string): Promise<string[]> {
    const local = [...this.#watch.pods.values()].filter((p) => p.metadata?.labels?.[LABEL.instance] === id).map((p) => p.metadata?.name ?? '')
    if (local.length > 0) return local
    const list = await this.#api(`list the pods of instance ${id}`, () => this.#core.listNamespacedPod({ namespace: this.#ns, labelSelector: `${LABEL.platform}=${this.#o.platformId},${LABEL.instance}=${id}` }))
    return list.items.map((p) => p.metadata?.name ?? '').filter((n) => n !== '')
  }

  /** The platform's instance pods (claimed or bare: `managed=false`), including those an earlier run left. */
  async list(): Promise<Array<{ id: string; pool: string; runtime: string }>> {
    await this.#deployments.namespace()
    const list = await this.#api('list instance pods', () => this.#core.listNamespacedPod({ namespace: this.#ns, labelSelector: `${LABEL.platform}=${this.#o.platformId},${LABEL.managed}=false,${LABEL.instance}` }))
    return list.items.map((p) => ({
      id: p.metadata?.labels?.[LABEL.instance] ?? '',
      pool: p.metadata?.annotations?.[POOL_ANNOTATION] ?? 'unknown',
      runtime: p.metadata?.labels?.[LABEL.runtime] ?? 'unknown',
    })).filter((x) => x.id !== '')
  }

  /**
   * The pod fetches its code itself (issue 10): the code server grants this instance the archive of `hostCodeDir`,
   * and the runtime's `POST /_/fetch` downloads it, checks its sha256 and unpacks it; the directory it answers is
   * where the load reads from.
   */
  async prepareCode(id: string, hostCodeDir: string): Promise<string> {
    const held = this.#held.get(id)
    if (held?.address === undefined) throw new KdlError('KDL_ERR_BACKEND', `instance ${id} is not a started pod of this backend`)
    const grant = await this.#o.codeServer.grant(id, hostCodeDir)
    const client: Dispatcher = dispatcherFor(held.address)
    try {
      const { codeDir } = await fetchCode(client, { url: grant.url, sha256: grant.sha256, token: grant.token, instance: id }, this.#o.fetchTimeoutMs ?? 30_000)
      return codeDir
    } catch (err) {
      if (err instanceof KdlError) throw err
      throw new KdlError('KDL_ERR_BACKEND', `instance ${id} could not fetch its code: ${(err as Error).message}`, { cause: err })
    } finally {
      await client.close().catch(noop)
    }
  }

  onExit(listener: (exit: InstanceExit) => void): void {
    this.#listeners.push(listener)
  }

  async exitReason(id: string): Promise<ExitReason | undefined> {
    const known = this.#reasons.get(id)
    if (known !== undefined) return known
    const held = this.#held.get(id)
    if (held === undefined) return undefined
    // The call failed before the watch reported the death: wait for it, bounded.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([held.died, new Promise((resolve) => { timer = setTimeout(resolve, EXIT_WAIT_MS) })])
    clearTimeout(timer)
    return this.#reasons.get(id)
  }

  // No setQuarantine: a pod cannot move to another node. The load guard's quarantine starts a quarantined
  // function's next pods on the quarantine nodes (start() with `quarantine`), and the pool manager replaces its
  // idle prewarmed ones (setQuarantined); pods serving it finish where they are.

  /** Deletes every pool Deployment of this platform (and, by garbage collection, their pool pods). */
  async deletePools(): Promise<void> {
    await this.#deployments.deleteAll()
    this.#pools.clear()
  }

  /** Deletes the pods this backend holds and stops the watch; the pool Deployments stay (see the class comment). */
  /** Stops every instance but those in `keep` (issue 13: a stepping-down controller leaves routers' instances to the next leader). */
  async close(keep?: ReadonlySet<string>): Promise<void> {
    this.#closing = true
    const retried = [...this.#deleting.keys()]
    for (const timer of this.#deleting.values()) clearTimeout(timer)
    this.#deleting.clear()
    const results = await Promise.allSettled([...[...this.#held.keys()].filter((id) => keep?.has(id) !== true).map((id) => this.stop(id)), ...retried.map((name) => this.#deletePod(name))])
    this.#watch.close()
    await this.#o.agents?.close()
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason instanceof KdlError ? failed.reason : new KdlError('KDL_ERR_BACKEND', 'cannot stop every instance', { cause: failed.reason })
  }
}
