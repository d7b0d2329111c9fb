/**
 * The controller's side of the node agents (issue 13): finds the agent of each node by list + watch of the pods
 * matching KINDLING_AGENT_SELECTOR in the platform's namespace (Ready, `status.podIP`, port KINDLING_AGENT_PORT), and
 * talks to them with the bearer KINDLING_AGENT_TOKEN over undici keep-alive connections.
 *
 * The load guard reads instances on kubernetes through {@link AgentClient.reader}: a CgroupReader (loadguard/reader.ts,
 * matched structurally) whose refs name a pod, its node and its container (`agentRef`). Its `prefetch` — called by the
 * guard once per pass — sends one `POST /v1/sample` per agent for all of that node's pods; `stats`, `limits` and the
 * synchronous `demand` then answer from that batch. An agent that does not answer makes its pods' samples fail with
 * KDL_ERR_AGENT_UNAVAILABLE (logged once per outage): the guard skips them and goes on.
 */
import type { CoreV1Api, KubeConfig, V1Pod } from '@kubernetes/client-node'
import { Agent, request } from 'undici'
import type { CgroupRef } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import type { CgroupStats } from '../../cgroups/index.js'
import { isReady, silent, type KubeLog } from './kube-common.js'
import { PodWatch } from './pod-watch.js'

export interface AgentClientOptions {
  /** The cluster the agent pods are listed from (not needed with `addressOf`). */
  kubeConfig?: KubeConfig | undefined
  core?: CoreV1Api | undefined
  namespace: string
  /** Label selector of the agent pods (KINDLING_AGENT_SELECTOR). */
  selector: string
  /** KINDLING_AGENT_PORT. @default 8082 */
  port?: number | undefined
  token?: string | undefined
  /** Bound on each agent request, ms. @default 2000 */
  timeoutMs?: number | undefined
  /** Bound on the agent pods' list, ms. @default 10_000 */
  apiTimeoutMs?: number | undefined
  /** Where an agent is reached, by node; the default reads the agent pods (tests may point elsewhere). */
  addressOf?: ((node: string) => string | undefined) | undefined
  log?: KubeLog | undefined
}

/** The limits the guard reads once per instance (loadguard/reader.ts GroupLimits). `Infinity` = none. */
export interface AgentLimits {
  cpuCores: number
  memoryBytes: number
  pids: number
}

/** What one pod's sample is, as the agent answers it. */
interface WireSample {
  uid: string
  containerId?: string
  stats?: CgroupStats
  limits?: { cpuCores: number; memoryBytes: number | null; pids: number | null }
  demand?: Array<[number, number]>
  error?: { code: string; message: string }
}

interface Sampled {
  stats: CgroupStats
  limits: AgentLimits
  demand: Map<number, number>
}

/** The guard's reader, backed by the agents (the shape of loadguard/reader.ts CgroupReader, plus its prefetch). */
export interface AgentReader {
  prefetch(refs: readonly CgroupRef[]): Promise<void>
  stats(ref: CgroupRef): Promise<CgroupStats>
  limits(ref: CgroupRef): Promise<AgentLimits>
  demand(ref: CgroupRef): Map<number, number>
}

const NODE = 'agent:node'
const POD = 'agent:pod'
const CONTAINER = 'agent:container'

/**
 * The ref of a pod's cgroup as the agent of its node reaches it: `paths` names the node, the pod UID and the
 * container id (no directory: the agent finds them). Undefined until the pod is bound and its container started.
 */
export function agentRef(pod: V1Pod): CgroupRef | undefined {
  const node = pod.spec?.nodeName
  const uid = pod.metadata?.uid
  const cid = pod.status?.containerStatuses?.[0]?.containerID
  if (node === undefined || uid === undefined || node === '' || uid === '') return undefined
  return { version: 2, paths: { [NODE]: node, [POD]: uid, ...(cid === undefined || cid === '' ? {} : { [CONTAINER]: cid }) } }
}

/** The node, pod UID and container id an agent ref names. */
export function agentTarget(ref: CgroupRef): { node: string; uid: string; containerId?: string | undefined } {
  const node = ref.paths[NODE]
  const uid = ref.paths[POD]
  if (node === undefined || uid === undefined) throw new KdlError('KDL_ERR_BACKEND', 'not a node agent\'s cgroup ref')
  return { node, uid, containerId: ref.paths[CONTAINER] }
}

export class AgentClient {
  readonly #o: AgentClientOptions
  readonly #log: KubeLog
  readonly #watch: PodWatch | undefined
  readonly #http = new Agent({ keepAliveTimeout: 30_000, connections: 4 })
  readonly #timeoutMs: number
  /** Nodes whose agent failed last time (logged once per outage). */
  readonly #down = new Set<string>()
  /** The last batch: pod UID → its sample or why there is none. */
  #batch = new Map<string, Sampled | KdlError>()

  constructor(opts: AgentClientOptions) {
    this.#o = opts
    this.#log = opts.log ?? silent
    this.#timeoutMs = opts.timeoutMs ?? 2000
    if (opts.addressOf === undefined && (opts.kubeConfig === undefined || opts.core === undefined)) throw new KdlError('KDL_ERR_INTERNAL', 'AgentClient needs a kubeConfig and core, or addressOf')
    this.#watch = opts.addressOf !== undefined || opts.kubeConfig === undefined || opts.core === undefined ? undefined : new PodWatch({
      kubeConfig: opts.kubeConfig, core: opts.core, namespace: opts.namespace, labelSelector: opts.selector,
      server: opts.kubeConfig.getCurrentCluster()?.server ?? '(no current cluster)', timeoutMs: opts.apiTimeoutMs ?? 10_000, log: this.#log,
      onEvent: () => undefined,
    })
  }

  /** The first list of the agent pods (the watch keeps the copy from then on). */
  async start(): Promise<void> {
    await this.#watch?.ensure()
  }

  /** `http://podIP:port` of the Ready agent pod on `node`, if any. */
  addressOf(node: string): string | undefined {
    if (this.#o.addressOf !== undefined || this.#watch === undefined) return this.#o.addressOf?.(node)
    void this.#watch.ensure().catch(() => undefined)
    for (const pod of this.#watch.pods.values()) {
      const ip = pod.status?.podIP ?? ''
      if (pod.spec?.nodeName === node && ip !== '' && pod.metadata?.deletionTimestamp === undefined && isReady(pod)) {
        return `http://${ip.includes(':') ? `[${ip}]` : ip}:${this.#o.port ?? 8082}`
      }
    }
    return undefined
  }

  /** One `POST /v1/sample` to the agent of `node`; rejects with KDL_ERR_AGENT_UNAVAILABLE when it does not answer. */
  async sample(node: string, pods: ReadonlyArray<{ uid: string; containerId?: string | undefined }>): Promise<WireSample[]> {
    const body = await this.#call<{ pods?: WireSample[] }>(node, 'POST', '/v1/sample', { pods })
    if (!Array.isArray(body.pods) || body.pods.length !== pods.length) throw this.#unavailable(node, 'the agent\'s sample answer is malformed')
    return body.pods
  }

  /** `PUT /v1/pods/:uid/cpu` on the agent of `node`: the pod's (container's) CFS quota, cores (0: none). */
  async setCpu(node: string, uid: string, cores: number, containerId?: string): Promise<void> {
    await this.#call(node, 'PUT', `/v1/pods/${encodeURIComponent(uid)}/cpu`, { cores, ...(containerId === undefined ? {} : { containerId }) })
  }

  /** The load guard's reader over the agents (see the file comment). */
  reader(): AgentReader {
    return {
      prefetch: (refs) => this.#prefetch(refs),
      stats: async (ref) => this.#sampled(ref).stats,
      limits: async (ref) => this.#sampled(ref).limits,
      demand: (ref) => {
        try {
          return this.#sampled(ref).demand
        } catch {
          return new Map()
        }
      },
    }
  }

  async close(): Promise<void> {
    this.#watch?.close()
    await this.#http.close().catch(() => undefined)
  }

  #sampled(ref: CgroupRef): Sampled {
    const { uid, node } = agentTarget(ref)
    const got = this.#batch.get(uid)
    if (got === undefined) throw new KdlError('KDL_ERR_AGENT_UNAVAILABLE', `no sample of pod ${uid} from the agent of node ${node} in this pass`)
    if (got instanceof KdlError) throw got
    return got
  }

  /** One POST per node for all of its pods, in parallel; the batch the reads of this pass answer from. */
  async #prefetch(refs: readonly CgroupRef[]): Promise<void> {
    const byNode = new Map<string, Array<{ uid: string; containerId?: string | undefined }>>()
    for (const ref of refs) {
      let t: ReturnType<typeof agentTarget>
      try { t = agentTarget(ref) } catch { continue }
      const list = byNode.get(t.node) ?? []
      list.push({ uid: t.uid, ...(t.containerId === undefined ? {} : { containerId: t.containerId }) })
      byNode.set(t.node, list)
    }
    const batch = new Map<string, Sampled | KdlError>()
    await Promise.all([...byNode].map(async ([node, pods]) => {
      try {
        const answers = await this.sample(node, pods)
        for (const a of answers) {
          if (a.error !== undefined || a.stats === undefined || a.limits === undefined) {
            batch.set(a.uid, new KdlError(a.error?.code === 'KDL_ERR_AGENT_POD_NOT_FOUND' ? 'KDL_ERR_AGENT_POD_NOT_FOUND' : 'KDL_ERR_AGENT_UNAVAILABLE', a.error?.message ?? `no sample of pod ${a.uid}`))
            continue
          }
          const l = a.limits
          batch.set(a.uid, {
            stats: a.stats,
            limits: { cpuCores: l.cpuCores, memoryBytes: l.memoryBytes ?? Infinity, pids: l.pids ?? Infinity },
            demand: new Map(a.demand ?? []),
          })
        }
      } catch (err) {
        const e = err instanceof KdlError ? err : this.#unavailable(node, (err as Error).message, err)
        for (const p of pods) batch.set(p.uid, e)
      }
    }))
    this.#batch = batch
  }

  async #call<T>(node: string, method: 'POST' | 'PUT', path: string, body: unknown): Promise<T> {
    const base = this.addressOf(node)
    if (base === undefined) throw this.#unavailable(node, 'no Ready agent pod on the node')
    let status: number
    let text: string
    try {
      const res = await request(`${base}${path}`, {
        method, dispatcher: this.#http, headersTimeout: this.#timeoutMs, bodyTimeout: this.#timeoutMs,
        headers: { 'content-type': 'application/json', ...(this.#o.token === undefined ? {} : { authorization: `Bearer ${this.#o.token}` }) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      })
      status = res.statusCode
      text = await res.body.text()
    } catch (err) {
      throw this.#unavailable(node, `${base}: ${(err as Error).message}`, err)
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      throw this.#unavailable(node, `${base}${path} answered ${status} without JSON`)
    }
    if (status === 404 && (json as { code?: unknown }).code === 'KDL_ERR_AGENT_POD_NOT_FOUND') {
      throw new KdlError('KDL_ERR_AGENT_POD_NOT_FOUND', String((json as { message?: unknown }).message ?? 'pod not found'))
    }
    if (status !== 200) throw this.#unavailable(node, `${base}${path} answered ${status}: ${String((json as { message?: unknown }).message ?? text.slice(0, 200))}`)
    if (this.#down.delete(node)) this.#log.info({ node }, 'node agent answers again')
    return json as T
  }

  #unavailable(node: string, why: string, cause?: unknown): KdlError {
    if (!this.#down.has(node)) {
      this.#down.add(node)
      this.#log.warn({ node, reason: why }, 'node agent unavailable: the load guard skips its pods')
    }
    return new KdlError('KDL_ERR_AGENT_UNAVAILABLE', `the node agent of ${node} does not answer: ${why}`, cause === undefined ? {} : { cause })
  }
}
