/**
 * The stand-in's scheduler (issue 10): binds each Pending pod that names no node (and asks for
 * `default-scheduler`) to a node that passes the real scheduler's filters, in its order — NodeUnschedulable,
 * NodeName, TaintToleration (NoSchedule/NoExecute; a NotReady node counts as tainted `node.kubernetes.io/not-ready`),
 * NodeAffinity (nodeSelector + required affinity), NodeResourcesFit (cpu, memory and pod count against allocatable
 * minus what the pods bound there request) — and scores highest on LeastAllocated (requests counted with the real
 * defaults of 100m / 200Mi for containers that state none, so such pods spread). Binding sets `spec.nodeName` and
 * the PodScheduled condition through the store, as the binding subresource does, and records a `Scheduled` event.
 * A pod no node fits stays Pending with PodScheduled=False/Unschedulable and the real message
 * ("0/4 nodes are available: 1 node(s) had untolerated taint {k: v}, 3 node(s) didn't match Pod's node
 * affinity/selector."), retried whenever a node or a bound pod changes.
 */
import type { Logger } from 'pino'
import type { KubeObject, ObjectStore } from './types.js'
import { WorkQueue } from './controllers/queue.js'
import { type Kinds, hasCondition, isApiError, keyOf, nowIso, recordEvent, sameJson, setCondition, splitKey } from './controllers/shared.js'
import { effectiveTaints, matchesNodeSelectorAndAffinity, untoleratedTaint } from './scheduling/node-fit.js'
import { bytesOf, cpuMilli, parseQuantity, podRequests } from './scheduling/quantity.js'

export interface SchedulerOptions {
  store: ObjectStore
  kinds: Kinds
  log?: Logger | undefined
  /** @default 'default-scheduler' */
  schedulerName?: string
}

interface NodeUse {
  node: KubeObject
  cpuMilli: number
  memoryBytes: number
  /** With the scoring defaults for containers that request nothing. */
  scoreCpu: number
  scoreMemory: number
  pods: number
}

export class Scheduler {
  readonly #store: ObjectStore
  readonly #kinds: Kinds
  readonly #name: string
  readonly #log: Logger | undefined
  readonly #queue: WorkQueue
  readonly #stops: Array<() => void> = []

  constructor(opts: SchedulerOptions) {
    this.#store = opts.store
    this.#kinds = opts.kinds
    this.#name = opts.schedulerName ?? 'default-scheduler'
    this.#log = opts.log
    this.#queue = new WorkQueue((key) => this.schedule(key), {
      onError: (key, err) => opts.log?.warn({ key, err }, 'scheduling failed'),
    })
  }

  start(): void {
    this.#stops.push(this.#store.watch(this.#kinds.pod, {}, (ev) => {
      const pod = ev.object
      if (ev.type !== 'DELETED' && this.#wants(pod)) this.#queue.add(keyOf(pod))
      // A pod leaving a node (deleted, finished) frees what it requested there.
      else if (typeof pod.spec?.nodeName === 'string' && (ev.type === 'DELETED' || isTerminal(pod))) this.#retryAll()
    }))
    this.#stops.push(this.#store.watch(this.#kinds.node, {}, (ev) => {
      if (ev.type === 'ADDED' || ev.type === 'DELETED' || ev.type === 'MODIFIED') this.#retryAll()
    }))
  }

  stop(): void {
    for (const s of this.#stops.splice(0)) s()
    this.#queue.stop()
  }

  #wants(pod: KubeObject): boolean {
    const node = pod.spec?.nodeName
    return (node === undefined || node === '') && pod.metadata.deletionTimestamp === undefined && !isTerminal(pod) &&
      (pod.spec?.schedulerName ?? 'default-scheduler') === this.#name
  }

  #retryAll(): void {
    for (const pod of this.#store.list(this.#kinds.pod).items) {
      if (this.#wants(pod)) this.#queue.add(keyOf(pod))
    }
  }

  schedule(key: string): void {
    const { namespace, name } = splitKey(key)
    const pod = this.#store.get(this.#kinds.pod, namespace, name)
    if (pod === undefined || !this.#wants(pod)) return
    const nodes = this.#store.list(this.#kinds.node).items
    const use = this.#usage(nodes)
    const want = podRequests(pod.spec)
    const wantScore = podRequests(pod.spec, true)
    const reasons = new Map<string, number>()
    const fit: NodeUse[] = []
    for (const u of use.values()) {
      const why = this.#filter(pod, u, want)
      if (why.length === 0) fit.push(u)
      for (const r of why) reasons.set(r, (reasons.get(r) ?? 0) + 1)
    }
    if (fit.length === 0) {
      this.#unschedulable(pod, nodes.length === 0 ? 'no nodes available to schedule pods' : fitError(nodes.length, reasons))
      return
    }
    const score = (u: NodeUse): number => {
      const cpu = allocatableCpu(u.node)
      const mem = allocatableMemory(u.node)
      const free = (cap: number, used: number): number => (cap <= 0 ? 0 : Math.max(0, (cap - used) / cap))
      return (free(cpu, u.scoreCpu + wantScore.cpuMilli) + free(mem, u.scoreMemory + wantScore.memoryBytes)) / 2
    }
    fit.sort((a, b) => score(b) - score(a) || a.pods - b.pods || String(a.node.metadata.name).localeCompare(String(b.node.metadata.name)))
    this.#bind(pod, String((fit[0] as NodeUse).node.metadata.name))
  }

  #usage(nodes: KubeObject[]): Map<string, NodeUse> {
    const use = new Map<string, NodeUse>()
    for (const node of nodes) use.set(String(node.metadata.name), { node, cpuMilli: 0, memoryBytes: 0, scoreCpu: 0, scoreMemory: 0, pods: 0 })
    for (const p of this.#store.list(this.#kinds.pod).items) {
      const u = typeof p.spec?.nodeName === 'string' ? use.get(p.spec.nodeName) : undefined
      if (u === undefined || isTerminal(p)) continue
      const r = podRequests(p.spec)
      const s = podRequests(p.spec, true)
      u.cpuMilli += r.cpuMilli
      u.memoryBytes += r.memoryBytes
      u.scoreCpu += s.cpuMilli
      u.scoreMemory += s.memoryBytes
      u.pods++
    }
    return use
  }

  /** Why the node does not fit, as the failing filter plugin words it; [] when it fits. */
  #filter(pod: KubeObject, u: NodeUse, want: { cpuMilli: number; memoryBytes: number }): string[] {
    const node = u.node
    const spec = pod.spec ?? {}
    if (node.spec?.unschedulable === true && !(spec.tolerations ?? []).some((t: { key?: string; operator?: string }) =>
      (t.key === 'node.kubernetes.io/unschedulable' || ((t.key ?? '') === '' && t.operator === 'Exists')))) {
      return ['node(s) were unschedulable']
    }
    const taint = untoleratedTaint(spec, effectiveTaints(node))
    if (taint !== undefined) return [`node(s) had untolerated taint {${taint.key}: ${taint.value ?? ''}}`]
    if (!matchesNodeSelectorAndAffinity(spec, node)) return ["node(s) didn't match Pod's node affinity/selector"]
    const out: string[] = []
    if (u.pods + 1 > (parseQuantity(node.status?.allocatable?.pods ?? 110) || 110)) out.push('Too many pods')
    if (want.cpuMilli > 0 && u.cpuMilli + want.cpuMilli > allocatableCpu(node)) out.push('Insufficient cpu')
    if (want.memoryBytes > 0 && u.memoryBytes + want.memoryBytes > allocatableMemory(node)) out.push('Insufficient memory')
    return out
  }

  #bind(pod: KubeObject, node: string): void {
    let bound: KubeObject
    try {
      bound = this.#store.update(this.#kinds.pod, { ...pod, spec: { ...pod.spec, nodeName: node } })
    } catch (err) {
      if (isApiError(err, 404)) return
      throw err
    }
    const conditions = setCondition(bound.status?.conditions, { type: 'PodScheduled', status: 'True', lastTransitionTime: nowIso() })
    try {
      this.#store.update(this.#kinds.pod, { ...bound, status: { ...(bound.status ?? {}), conditions } }, { subresource: 'status' })
    } catch (err) {
      // The kubelet may have written the status first; its own PodScheduled condition then stands.
      if (!isApiError(err, 409) && !isApiError(err, 404)) throw err
    }
    this.#log?.debug({ pod: keyOf(pod), node }, 'pod bound')
    recordEvent(this.#store, this.#kinds, bound, 'Normal', 'Scheduled',
      `Successfully assigned ${String(pod.metadata.namespace)}/${String(pod.metadata.name)} to ${node}`, 'default-scheduler')
  }

  #unschedulable(pod: KubeObject, message: string): void {
    const old = ((pod.status?.conditions ?? []) as Array<{ type: string; message?: string }>).find((c) => c.type === 'PodScheduled')
    const conditions = setCondition(pod.status?.conditions, {
      type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message, lastTransitionTime: nowIso(),
    })
    const status = { ...(pod.status ?? {}), phase: 'Pending', conditions }
    if (sameJson(status, pod.status)) return
    this.#store.update(this.#kinds.pod, { ...pod, status }, { subresource: 'status' })
    if (old?.message !== message || !hasCondition(pod, 'PodScheduled', 'False')) {
      recordEvent(this.#store, this.#kinds, pod, 'Warning', 'FailedScheduling', message, 'default-scheduler')
    }
  }
}

function isTerminal(pod: KubeObject): boolean {
  return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed'
}

function allocatableCpu(node: KubeObject): number {
  return cpuMilli(node.status?.allocatable?.cpu ?? node.status?.capacity?.cpu ?? 0)
}

function allocatableMemory(node: KubeObject): number {
  return bytesOf(node.status?.allocatable?.memory ?? node.status?.capacity?.memory ?? 0)
}

/** The scheduler's FitError message: each reason with its node count, sorted as strings, as the real one sorts them. */
export function fitError(nodes: number, reasons: Map<string, number>): string {
  const parts = [...reasons].map(([r, n]) => `${n} ${r}`).sort()
  return `0/${nodes} nodes are available: ${parts.join(', ')}.`
}
