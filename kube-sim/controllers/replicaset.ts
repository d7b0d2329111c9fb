/**
 * The ReplicaSet controller (issue 10): keeps `spec.replicas` active pods that match the set's selector and name it
 * as their controller. As the real one does, it adopts a matching orphan, ORPHANS a pod it owns whose labels stop
 * matching (a claimer relabelled it `kindling.io/managed=false`: the pod lives on, the set no longer counts it and
 * starts a replacement), and deletes a surplus preferring pods that are unscheduled, pending, not ready, newer.
 * Reacts to watches of replica sets and pods; reads the store directly (it is in-process: no informer lag, so no
 * "expectations" bookkeeping is needed).
 */
import type { KubeObject } from '../types.js'
import { QueueController, type ControllerOptions } from './queue.js'
import { matchesLabelSelector } from '../selectors.js'
import {
  controllerOf, controllerRefTo, isApiError, isPodActive, isPodReady, keyOf, recordEvent, sameJson, splitKey,
} from './shared.js'

const COMPONENT = 'replicaset-controller'

export class ReplicaSetController extends QueueController {
  constructor(opts: ControllerOptions) {
    super(opts, 'replicaset sync')
  }

  start(): void {
    this.watch(this.kinds.replicaSet, (ev) => this.queue.add(keyOf(ev.object)))
    this.watch(this.kinds.pod, (ev) => this.#podChanged(ev.object))
  }

  #podChanged(pod: KubeObject): void {
    const ref = controllerOf(pod)
    if (ref !== undefined) {
      if (ref.kind === 'ReplicaSet') this.queue.add(`${String(pod.metadata.namespace)}/${ref.name}`)
      return
    }
    // An orphan: every set whose selector it matches may adopt it.
    const { items } = this.store.list(this.kinds.replicaSet, { namespace: pod.metadata.namespace })
    for (const rs of items) if (matchesLabelSelector(rs.spec?.selector, pod.metadata.labels)) this.queue.add(keyOf(rs))
  }

  sync(key: string): void {
    const { namespace, name } = splitKey(key)
    const rs = this.store.get(this.kinds.replicaSet, namespace, name)
    if (rs === undefined || rs.metadata.deletionTimestamp !== undefined) return
    const uid = rs.metadata.uid
    const selector = rs.spec?.selector
    const owned: KubeObject[] = []
    for (const pod of this.store.list(this.kinds.pod, { namespace }).items) {
      const ref = controllerOf(pod)
      const matches = matchesLabelSelector(selector, pod.metadata.labels)
      if (ref?.uid === uid) {
        if (matches) owned.push(pod)
        else this.#release(pod, uid)
      } else if (ref === undefined && matches && pod.metadata.deletionTimestamp === undefined) {
        const adopted = this.#adopt(pod, rs)
        if (adopted !== undefined) owned.push(adopted)
      }
    }
    const active = owned.filter(isPodActive)
    const want = Number(rs.spec?.replicas ?? 1)
    if (active.length < want) {
      for (let i = active.length; i < want; i++) this.#createPod(rs)
    } else if (active.length > want) {
      for (const pod of [...active].sort(deletionOrder).slice(0, active.length - want)) {
        try {
          this.store.delete(this.kinds.pod, namespace, String(pod.metadata.name))
          recordEvent(this.store, this.kinds, rs, 'Normal', 'SuccessfulDelete', `Deleted pod: ${String(pod.metadata.name)}`, COMPONENT)
        } catch (err) {
          if (!isApiError(err, 404)) throw err
        }
      }
    }
    this.#writeStatus(rs)
  }

  /** Removes the set's owner reference from a pod that no longer matches its selector. */
  #release(pod: KubeObject, uid: string | undefined): void {
    const refs = (pod.metadata.ownerReferences ?? []).filter((r) => r.uid !== uid)
    const next: KubeObject = { ...pod, metadata: { ...pod.metadata } }
    if (refs.length === 0) delete next.metadata.ownerReferences
    else next.metadata.ownerReferences = refs
    try {
      this.store.update(this.kinds.pod, next)
    } catch (err) {
      if (!isApiError(err, 404)) throw err
    }
  }

  #adopt(pod: KubeObject, rs: KubeObject): KubeObject | undefined {
    const next: KubeObject = { ...pod, metadata: { ...pod.metadata, ownerReferences: [...(pod.metadata.ownerReferences ?? []), controllerRefTo(rs)] } }
    try {
      return this.store.update(this.kinds.pod, next)
    } catch (err) {
      if (isApiError(err, 404)) return undefined
      throw err
    }
  }

  #createPod(rs: KubeObject): void {
    const template = rs.spec?.template ?? {}
    const meta = template.metadata ?? {}
    const pod = this.store.create(this.kinds.pod, {
      apiVersion: 'v1', kind: 'Pod',
      metadata: {
        generateName: `${String(rs.metadata.name)}-`, namespace: rs.metadata.namespace,
        ...(meta.labels === undefined ? {} : { labels: { ...meta.labels } }),
        ...(meta.annotations === undefined ? {} : { annotations: { ...meta.annotations } }),
        ownerReferences: [controllerRefTo(rs)],
      },
      spec: structuredClone(template.spec ?? {}),
    })
    recordEvent(this.store, this.kinds, rs, 'Normal', 'SuccessfulCreate', `Created pod: ${String(pod.metadata.name)}`, COMPONENT)
  }

  #writeStatus(rs0: KubeObject): void {
    const rs = this.store.get(this.kinds.replicaSet, rs0.metadata.namespace, String(rs0.metadata.name))
    if (rs === undefined) return
    const templateLabels: Record<string, string> = rs.spec?.template?.metadata?.labels ?? {}
    const pods = this.store.list(this.kinds.pod, { namespace: rs.metadata.namespace }).items
      .filter((p) => controllerOf(p)?.uid === rs.metadata.uid && isPodActive(p))
    const ready = pods.filter(isPodReady).length
    const status = {
      ...(rs.status ?? {}),
      replicas: pods.length,
      fullyLabeledReplicas: pods.filter((p) => Object.entries(templateLabels).every(([k, v]) => p.metadata.labels?.[k] === v)).length,
      readyReplicas: ready,
      availableReplicas: ready,
      observedGeneration: rs.metadata.generation ?? 1,
    }
    if (sameJson(status, rs.status)) return
    this.store.update(this.kinds.replicaSet, { ...rs, status }, { subresource: 'status' })
  }
}

/** Which surplus pods go first, as the real controller ranks them: unscheduled, pending, not ready, then newest. */
function deletionOrder(a: KubeObject, b: KubeObject): number {
  const rank = (p: KubeObject): number[] => [
    p.spec?.nodeName ? 1 : 0,
    p.status?.phase === 'Pending' ? 0 : p.status?.phase === 'Running' ? 2 : 1,
    isPodReady(p) ? 1 : 0,
  ]
  const ra = rank(a)
  const rb = rank(b)
  for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return (ra[i] as number) - (rb[i] as number)
  return String(b.metadata.creationTimestamp ?? '').localeCompare(String(a.metadata.creationTimestamp ?? ''))
}
