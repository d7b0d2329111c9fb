/**
 * The Deployment controller (issue 10): one ReplicaSet per pod template, named `<deployment>-<hash>` and labelled
 * `pod-template-hash=<hash>` (in its selector and its pods' labels too, so sets of one deployment never share
 * pods). A changed template rolls: RollingUpdate scales the new set up within `maxSurge` and old sets down within
 * `maxUnavailable` as the real controller computes them; Recreate scales the old sets to 0 first. Status as
 * `kubectl rollout status` reads it: replicas, updated, ready, available, observedGeneration, the Available and
 * Progressing conditions, and the `deployment.kubernetes.io/revision` annotation.
 */
import type { KubeObject } from '../types.js'
import { QueueController, type ControllerOptions } from './queue.js'
import { matchesLabelSelector } from '../selectors.js'
import { controllerOf, controllerRefTo, isApiError, keyOf, nowIso, recordEvent, sameJson, setCondition, splitKey, templateHash } from './shared.js'

const COMPONENT = 'deployment-controller'
const HASH = 'pod-template-hash'
const REVISION = 'deployment.kubernetes.io/revision'

export class DeploymentController extends QueueController {
  constructor(opts: ControllerOptions) {
    super(opts, 'deployment sync')
  }

  start(): void {
    this.watch(this.kinds.deployment, (ev) => this.queue.add(keyOf(ev.object)))
    this.watch(this.kinds.replicaSet, (ev) => {
      const ref = controllerOf(ev.object)
      if (ref?.kind === 'Deployment') this.queue.add(`${String(ev.object.metadata.namespace)}/${ref.name}`)
      else if (ref === undefined) {
        for (const d of this.store.list(this.kinds.deployment, { namespace: ev.object.metadata.namespace }).items) {
          if (matchesLabelSelector(d.spec?.selector, ev.object.metadata.labels)) this.queue.add(keyOf(d))
        }
      }
    })
  }

  sync(key: string): void {
    const { namespace, name } = splitKey(key)
    const d = this.store.get(this.kinds.deployment, namespace, name)
    if (d === undefined || d.metadata.deletionTimestamp !== undefined) return
    const sets = this.#ownedSets(d)
    const hash = templateHash(d.spec?.template)
    let newRS = sets.find((rs) => rs.metadata.labels?.[HASH] === hash)
    const old = sets.filter((rs) => rs !== newRS)
    const desired = Number(d.spec?.replicas ?? 1)
    if (d.spec?.paused !== true) {
      newRS ??= this.#createSet(d, hash, old)
      if (d.spec?.strategy?.type === 'Recreate') this.#recreate(d, newRS, old, desired)
      else this.#rollingUpdate(d, newRS, old, desired)
      this.#cleanHistory(d, old)
    }
    this.#writeStatus(d, hash)
  }

  #ownedSets(d: KubeObject): KubeObject[] {
    const out: KubeObject[] = []
    for (const rs of this.store.list(this.kinds.replicaSet, { namespace: d.metadata.namespace }).items) {
      const ref = controllerOf(rs)
      if (ref?.uid === d.metadata.uid) out.push(rs)
      else if (ref === undefined && rs.metadata.deletionTimestamp === undefined && matchesLabelSelector(d.spec?.selector, rs.metadata.labels)) {
        out.push(this.store.update(this.kinds.replicaSet, {
          ...rs, metadata: { ...rs.metadata, ownerReferences: [...(rs.metadata.ownerReferences ?? []), controllerRefTo(d)] },
        }))
      }
    }
    return out
  }

  #createSet(d: KubeObject, hash: string, old: KubeObject[]): KubeObject {
    const template = structuredClone(d.spec?.template ?? {})
    template.metadata = { ...(template.metadata ?? {}), labels: { ...(template.metadata?.labels ?? {}), [HASH]: hash } }
    const selector = structuredClone(d.spec?.selector ?? {})
    selector.matchLabels = { ...(selector.matchLabels ?? {}), [HASH]: hash }
    const revision = 1 + Math.max(0, ...old.map((rs) => Number(rs.metadata.annotations?.[REVISION] ?? 0)))
    const name = `${String(d.metadata.name)}-${hash}`
    // A first set starts at the full count; a rollout's new set starts at 0 and grows within maxSurge.
    const replicas = old.length === 0 ? Number(d.spec?.replicas ?? 1) : 0
    try {
      const rs = this.store.create(this.kinds.replicaSet, {
        apiVersion: 'apps/v1', kind: 'ReplicaSet',
        metadata: {
          name, namespace: d.metadata.namespace,
          labels: { ...(template.metadata.labels as Record<string, string>) },
          annotations: { [REVISION]: String(revision), 'deployment.kubernetes.io/desired-replicas': String(d.spec?.replicas ?? 1) },
          ownerReferences: [controllerRefTo(d)],
        },
        spec: { replicas, selector, template, minReadySeconds: d.spec?.minReadySeconds ?? 0 },
      })
      recordEvent(this.store, this.kinds, d, 'Normal', 'ScalingReplicaSet', `Scaled up replica set ${name} from 0 to ${replicas}`, COMPONENT)
      return rs
    } catch (err) {
      if (!isApiError(err, 409)) throw err
      const existing = this.store.get(this.kinds.replicaSet, d.metadata.namespace, name)
      if (existing === undefined) throw err
      return existing
    }
  }

  #recreate(d: KubeObject, newRS: KubeObject, old: KubeObject[], desired: number): void {
    for (const rs of old) this.#scale(d, rs, 0)
    const oldPods = old.reduce((n, rs) => n + Number(rs.status?.replicas ?? 0) + Number(rs.spec?.replicas ?? 0), 0)
    if (oldPods === 0) this.#scale(d, newRS, desired)
  }

  /** The real controller's arithmetic (reconcileNewReplicaSet, reconcileOldReplicaSets). */
  #rollingUpdate(d: KubeObject, newRS: KubeObject, old: KubeObject[], desired: number): void {
    const ru = d.spec?.strategy?.rollingUpdate ?? {}
    const surge = resolve(ru.maxSurge ?? '25%', desired, true)
    let unavailable = resolve(ru.maxUnavailable ?? '25%', desired, false)
    if (surge === 0 && unavailable === 0) unavailable = 1
    const all = [newRS, ...old]
    const specOf = (rs: KubeObject): number => Number(rs.spec?.replicas ?? 0)
    const availableOf = (rs: KubeObject): number => Number(rs.status?.availableReplicas ?? 0)
    const total = all.reduce((n, rs) => n + specOf(rs), 0)
    const newSpec = specOf(newRS)
    if (newSpec > desired) newRS = this.#scale(d, newRS, desired)
    else if (newSpec < desired && total < desired + surge) newRS = this.#scale(d, newRS, Math.min(desired, newSpec + desired + surge - total))

    const minAvailable = desired - unavailable
    const allPods = [newRS, ...old].reduce((n, rs) => n + specOf(rs), 0)
    const newUnavailable = specOf(newRS) - availableOf(newRS)
    let budget = allPods - minAvailable - newUnavailable
    if (budget <= 0) return
    const oldest = [...old].filter((rs) => specOf(rs) > 0).sort((a, b) => String(a.metadata.creationTimestamp).localeCompare(String(b.metadata.creationTimestamp)))
    // Unhealthy old replicas go first: removing them costs no availability.
    for (const [i, rs] of oldest.entries()) {
      if (budget <= 0) break
      const unhealthy = Math.max(0, specOf(rs) - availableOf(rs))
      const cut = Math.min(budget, unhealthy)
      if (cut > 0) {
        oldest[i] = this.#scale(d, rs, specOf(rs) - cut)
        budget -= cut
      }
    }
    const allAvailable = [newRS, ...oldest].reduce((n, rs) => n + availableOf(rs), 0)
    let down = allAvailable - minAvailable
    for (const rs of oldest) {
      if (down <= 0) break
      const cut = Math.min(specOf(rs), down)
      if (cut > 0) {
        this.#scale(d, rs, specOf(rs) - cut)
        down -= cut
      }
    }
  }

  #scale(d: KubeObject, rs: KubeObject, replicas: number): KubeObject {
    const from = Number(rs.spec?.replicas ?? 0)
    if (from === replicas) return rs
    const next = this.store.update(this.kinds.replicaSet, {
      ...rs,
      metadata: { ...rs.metadata, annotations: { ...(rs.metadata.annotations ?? {}), 'deployment.kubernetes.io/desired-replicas': String(d.spec?.replicas ?? 1) } },
      spec: { ...rs.spec, replicas },
    })
    recordEvent(this.store, this.kinds, d, 'Normal', 'ScalingReplicaSet',
      `Scaled ${replicas > from ? 'up' : 'down'} replica set ${String(rs.metadata.name)} from ${from} to ${replicas}`, COMPONENT)
    return next
  }

  /** Old sets scaled to 0 beyond `revisionHistoryLimit` are deleted, oldest first. */
  #cleanHistory(d: KubeObject, old: KubeObject[]): void {
    const limit = Number(d.spec?.revisionHistoryLimit ?? 10)
    const idle = old.filter((rs) => Number(rs.spec?.replicas ?? 0) === 0 && Number(rs.status?.replicas ?? 0) === 0 && rs.metadata.deletionTimestamp === undefined)
      .sort((a, b) => Number(a.metadata.annotations?.[REVISION] ?? 0) - Number(b.metadata.annotations?.[REVISION] ?? 0))
    for (const rs of idle.slice(0, Math.max(0, idle.length - limit))) {
      try {
        this.store.delete(this.kinds.replicaSet, rs.metadata.namespace, String(rs.metadata.name))
      } catch (err) {
        if (!isApiError(err, 404)) throw err
      }
    }
  }

  #writeStatus(d0: KubeObject, hash: string): void {
    const d = this.store.get(this.kinds.deployment, d0.metadata.namespace, String(d0.metadata.name))
    if (d === undefined) return
    const sets = this.store.list(this.kinds.replicaSet, { namespace: d.metadata.namespace }).items.filter((rs) => controllerOf(rs)?.uid === d.metadata.uid)
    const newRS = sets.find((rs) => rs.metadata.labels?.[HASH] === hash)
    const sum = (f: string): number => sets.reduce((n, rs) => n + Number(rs.status?.[f] ?? 0), 0)
    const desired = Number(d.spec?.replicas ?? 1)
    const replicas = sum('replicas')
    const available = sum('availableReplicas')
    const updated = Number(newRS?.status?.replicas ?? 0)
    const ru = d.spec?.strategy?.rollingUpdate ?? {}
    const maxUnavailable = d.spec?.strategy?.type === 'Recreate' ? 0 : resolve(ru.maxUnavailable ?? '25%', desired, false)
    const now = nowIso()
    const minimum = available >= desired - maxUnavailable
    const complete = newRS !== undefined && updated === desired && replicas === desired && available === desired &&
      Number(newRS.status?.observedGeneration ?? 0) >= Number(newRS.metadata.generation ?? 1)
    let conditions = setCondition(d.status?.conditions, {
      type: 'Available', status: minimum ? 'True' : 'False',
      reason: minimum ? 'MinimumReplicasAvailable' : 'MinimumReplicasUnavailable',
      message: minimum ? 'Deployment has minimum availability.' : 'Deployment does not have minimum availability.',
      lastUpdateTime: now, lastTransitionTime: now,
    })
    const rsName = String(newRS?.metadata.name ?? '')
    conditions = setCondition(conditions, {
      type: 'Progressing', status: 'True',
      reason: complete ? 'NewReplicaSetAvailable' : 'ReplicaSetUpdated',
      message: complete ? `ReplicaSet "${rsName}" has successfully progressed.` : `ReplicaSet "${rsName}" is progressing.`,
      lastUpdateTime: now, lastTransitionTime: now,
    })
    const status: Record<string, unknown> = {
      observedGeneration: d.metadata.generation ?? 1,
      replicas, updatedReplicas: updated, readyReplicas: sum('readyReplicas'), availableReplicas: available,
      ...(desired - available > 0 ? { unavailableReplicas: desired - available } : {}),
      conditions,
    }
    const revision = newRS?.metadata.annotations?.[REVISION]
    if (revision !== undefined && d.metadata.annotations?.[REVISION] !== revision) {
      this.store.update(this.kinds.deployment, { ...d, metadata: { ...d.metadata, annotations: { ...(d.metadata.annotations ?? {}), [REVISION]: revision } } })
      return // the write's own watch event syncs again and writes the status
    }
    if (sameJson(status, d.status)) return
    this.store.update(this.kinds.deployment, { ...d, status }, { subresource: 'status' })
  }
}

/** An int-or-percent of `total` (surge rounds up, unavailability down, as Kubernetes does). */
function resolve(v: unknown, total: number, roundUp: boolean): number {
  if (typeof v === 'number') return v
  const m = /^(\d+)%$/.exec(String(v))
  if (m === null) return Number(v) || 0
  const x = (Number(m[1]) * total) / 100
  return roundUp ? Math.ceil(x) : Math.floor(x)
}
