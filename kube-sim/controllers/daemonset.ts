/**
 * The DaemonSet controller (issue 10): one pod per node that the template's nodeSelector and required node
 * affinity select and whose NoSchedule/NoExecute taints it tolerates. As the real controller does, each pod is
 * pinned with a required node affinity on `metadata.name` (matchFields) and left to the scheduler to bind, and
 * carries the daemon tolerations (not-ready, unreachable, pressure, unschedulable). Surplus pods (a node no longer
 * selected, a second pod on a node, a node gone) and failed pods are deleted; a changed template rolls one node
 * at a time (RollingUpdate, maxUnavailable 1) or waits for deletions (OnDelete).
 */
import type { KubeObject } from '../types.js'
import { DAEMON_TOLERATIONS, matchesNodeSelectorAndAffinity, untoleratedTaint, type Taint, type Toleration } from '../scheduling/node-fit.js'
import { QueueController, type ControllerOptions } from './queue.js'
import { controllerOf, controllerRefTo, isApiError, isPodReady, keyOf, recordEvent, sameJson, splitKey, templateHash } from './shared.js'

const COMPONENT = 'daemonset-controller'
const REVISION = 'controller-revision-hash'

export class DaemonSetController extends QueueController {
  constructor(opts: ControllerOptions) {
    super(opts, 'daemonset sync')
  }

  start(): void {
    this.watch(this.kinds.daemonSet, (ev) => this.queue.add(keyOf(ev.object)))
    this.watch(this.kinds.pod, (ev) => {
      const ref = controllerOf(ev.object)
      if (ref?.kind === 'DaemonSet') this.queue.add(`${String(ev.object.metadata.namespace)}/${ref.name}`)
    })
    this.watch(this.kinds.node, () => {
      for (const ds of this.store.list(this.kinds.daemonSet).items) this.queue.add(keyOf(ds))
    })
  }

  sync(key: string): void {
    const { namespace, name } = splitKey(key)
    const ds = this.store.get(this.kinds.daemonSet, namespace, name)
    if (ds === undefined || ds.metadata.deletionTimestamp !== undefined) return
    const hash = templateHash(ds.spec?.template)
    const nodes = this.store.list(this.kinds.node).items
    const byNode = new Map<string, KubeObject[]>()
    for (const pod of this.store.list(this.kinds.pod, { namespace }).items) {
      if (controllerOf(pod)?.uid !== ds.metadata.uid || pod.metadata.deletionTimestamp !== undefined) continue
      const node = nodeOfDaemonPod(pod)
      byNode.set(node, [...(byNode.get(node) ?? []), pod])
    }
    const wanted = new Set(nodes.filter((n) => this.#shouldRun(ds, n)).map((n) => String(n.metadata.name)))
    const toDelete: KubeObject[] = []
    const outdated: KubeObject[] = []
    for (const [node, pods] of byNode) {
      if (!wanted.has(node)) { toDelete.push(...pods); continue }
      const failed = pods.filter((p) => p.status?.phase === 'Failed')
      toDelete.push(...failed)
      const live = pods.filter((p) => p.status?.phase !== 'Failed')
      toDelete.push(...live.slice(1))
      const kept = live[0]
      if (kept !== undefined && kept.metadata.labels?.[REVISION] !== hash) outdated.push(kept)
    }
    for (const node of wanted) {
      const live = (byNode.get(node) ?? []).filter((p) => p.status?.phase !== 'Failed')
      if (live.length === 0) this.#createPod(ds, node, hash)
    }
    if (ds.spec?.updateStrategy?.type !== 'OnDelete' && outdated.length > 0) {
      // One node at a time: only when every other daemon pod is ready.
      const notReady = [...byNode.values()].flat().filter((p) => !isPodReady(p)).length
      if (notReady === 0 || outdated.some((p) => !isPodReady(p))) toDelete.push(outdated.find((p) => !isPodReady(p)) ?? outdated[0] as KubeObject)
    }
    for (const pod of toDelete) {
      try {
        this.store.delete(this.kinds.pod, namespace, String(pod.metadata.name))
        recordEvent(this.store, this.kinds, ds, 'Normal', 'SuccessfulDelete', `Deleted pod: ${String(pod.metadata.name)}`, COMPONENT)
      } catch (err) {
        if (!isApiError(err, 404)) throw err
      }
    }
    this.#writeStatus(ds, wanted, hash)
  }

  #shouldRun(ds: KubeObject, node: KubeObject): boolean {
    const spec = ds.spec?.template?.spec ?? {}
    if (!matchesNodeSelectorAndAffinity(spec, node)) return false
    const tolerations: Toleration[] = [...(spec.tolerations ?? []), ...DAEMON_TOLERATIONS]
    return untoleratedTaint({ tolerations }, (node.spec?.taints ?? []) as Taint[]) === undefined
  }

  #createPod(ds: KubeObject, node: string, hash: string): void {
    const template = structuredClone(ds.spec?.template ?? {})
    const spec = template.spec ?? {}
    const tolerations: Toleration[] = [...(spec.tolerations ?? [])]
    for (const t of DAEMON_TOLERATIONS) if (!tolerations.some((x) => x.key === t.key && x.effect === t.effect)) tolerations.push({ ...t })
    spec.tolerations = tolerations
    spec.affinity = {
      ...(spec.affinity ?? {}),
      nodeAffinity: {
        ...(spec.affinity?.nodeAffinity ?? {}),
        requiredDuringSchedulingIgnoredDuringExecution: {
          nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: [node] }] }],
        },
      },
    }
    const pod = this.store.create(this.kinds.pod, {
      apiVersion: 'v1', kind: 'Pod',
      metadata: {
        generateName: `${String(ds.metadata.name)}-`, namespace: ds.metadata.namespace,
        labels: { ...(template.metadata?.labels ?? {}), [REVISION]: hash, 'pod-template-generation': String(ds.metadata.generation ?? 1) },
        ...(template.metadata?.annotations === undefined ? {} : { annotations: { ...template.metadata.annotations } }),
        ownerReferences: [controllerRefTo(ds)],
      },
      spec,
    })
    recordEvent(this.store, this.kinds, ds, 'Normal', 'SuccessfulCreate', `Created pod: ${String(pod.metadata.name)}`, COMPONENT)
  }

  #writeStatus(ds0: KubeObject, wanted: Set<string>, hash: string): void {
    const ds = this.store.get(this.kinds.daemonSet, ds0.metadata.namespace, String(ds0.metadata.name))
    if (ds === undefined) return
    const pods = this.store.list(this.kinds.pod, { namespace: ds.metadata.namespace }).items
      .filter((p) => controllerOf(p)?.uid === ds.metadata.uid && p.metadata.deletionTimestamp === undefined)
    const scheduled = new Set<string>()
    const ready = new Set<string>()
    const updated = new Set<string>()
    let misscheduled = 0
    for (const p of pods) {
      const node = p.spec?.nodeName as string | undefined
      if (node === undefined) continue
      if (!wanted.has(node)) { misscheduled++; continue }
      scheduled.add(node)
      if (isPodReady(p)) ready.add(node)
      if (p.metadata.labels?.[REVISION] === hash) updated.add(node)
    }
    const status = {
      currentNumberScheduled: scheduled.size,
      numberMisscheduled: misscheduled,
      desiredNumberScheduled: wanted.size,
      numberReady: ready.size,
      updatedNumberScheduled: updated.size,
      numberAvailable: ready.size,
      ...(wanted.size - ready.size > 0 ? { numberUnavailable: wanted.size - ready.size } : {}),
      observedGeneration: ds.metadata.generation ?? 1,
    }
    if (sameJson(status, ds.status)) return
    this.store.update(this.kinds.daemonSet, { ...ds, status }, { subresource: 'status' })
  }
}

/** The node a daemon pod is for: where it is bound, else its `metadata.name` affinity. */
function nodeOfDaemonPod(pod: KubeObject): string {
  if (typeof pod.spec?.nodeName === 'string' && pod.spec.nodeName !== '') return pod.spec.nodeName
  const terms = pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? []
  for (const term of terms) {
    for (const f of term.matchFields ?? []) if (f.key === 'metadata.name' && f.operator === 'In' && f.values?.length === 1) return String(f.values[0])
  }
  return ''
}
