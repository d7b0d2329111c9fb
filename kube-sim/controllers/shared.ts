/**
 * What the stand-in's control loops share (issue 10): the kinds they use, owner references, pod readiness, the
 * pod-template hash and Events. No state: every function takes the store it works on.
 */
import { createHash, randomBytes } from 'node:crypto'
import { ApiError, type KubeObject, type ObjectStore, type OwnerReference, type ResourceType } from '../types.js'

export interface Kinds {
  pod: ResourceType
  node: ResourceType
  event: ResourceType
  lease: ResourceType
  namespace: ResourceType
  configMap: ResourceType
  secret: ResourceType
  replicaSet: ResourceType
  deployment: ResourceType
  daemonSet: ResourceType
  service: ResourceType
  endpoints: ResourceType
}

/** The kinds the controllers, scheduler and kubelets use, looked up once; throws when the store lacks one. */
export function kindsOf(store: ObjectStore): Kinds {
  const need = (group: string, version: string, resource: string): ResourceType => {
    const t = store.type(group, version, resource)
    if (t === undefined) throw new Error(`the store does not serve ${group === '' ? '' : `${group}/`}${version} ${resource}`)
    return t
  }
  return {
    pod: need('', 'v1', 'pods'),
    node: need('', 'v1', 'nodes'),
    event: need('', 'v1', 'events'),
    lease: need('coordination.k8s.io', 'v1', 'leases'),
    namespace: need('', 'v1', 'namespaces'),
    configMap: need('', 'v1', 'configmaps'),
    secret: need('', 'v1', 'secrets'),
    replicaSet: need('apps', 'v1', 'replicasets'),
    deployment: need('apps', 'v1', 'deployments'),
    daemonSet: need('apps', 'v1', 'daemonsets'),
    service: need('', 'v1', 'services'),
    endpoints: need('', 'v1', 'endpoints'),
  }
}

export function keyOf(obj: KubeObject): string {
  return obj.metadata.namespace === undefined ? String(obj.metadata.name) : `${obj.metadata.namespace}/${String(obj.metadata.name)}`
}

export function splitKey(key: string): { namespace: string | undefined; name: string } {
  const i = key.indexOf('/')
  return i < 0 ? { namespace: undefined, name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) }
}

export function controllerOf(obj: KubeObject): OwnerReference | undefined {
  return obj.metadata.ownerReferences?.find((r) => r.controller === true)
}

/** The owner reference a controller puts on what it creates. */
export function controllerRefTo(owner: KubeObject): OwnerReference {
  return {
    apiVersion: owner.apiVersion, kind: owner.kind, name: String(owner.metadata.name), uid: String(owner.metadata.uid),
    controller: true, blockOwnerDeletion: true,
  }
}

export function hasCondition(obj: KubeObject, type: string, status = 'True'): boolean {
  const conditions = (obj.status?.conditions ?? []) as Array<{ type?: string; status?: string }>
  return conditions.some((c) => c.type === type && c.status === status)
}

export function isPodReady(pod: KubeObject): boolean {
  return pod.status?.phase === 'Running' && hasCondition(pod, 'Ready')
}

/** The cluster IP a Service is reached on, when it has one (not headless, not ExternalName). */
export function clusterIPOf(svc: KubeObject): string | undefined {
  const ip = svc.spec?.clusterIP
  if (typeof ip !== 'string' || ip === '' || ip === 'None' || svc.spec?.type === 'ExternalName') return undefined
  return ip
}

/** Not finished and not being deleted: what a ReplicaSet counts. */
export function isPodActive(pod: KubeObject): boolean {
  const phase = pod.status?.phase
  return phase !== 'Succeeded' && phase !== 'Failed' && pod.metadata.deletionTimestamp === undefined
}

/** Alphabet of generated name suffixes (Kubernetes' own: no vowels, no confusable characters). */
const SAFE = 'bcdfghjklmnpqrstvwxz2456789'

/** A short, name-safe hash of a pod template (the `pod-template-hash` / `controller-revision-hash` label). */
export function templateHash(template: unknown): string {
  const digest = createHash('sha256').update(stableJson(template)).digest()
  let out = ''
  for (let i = 0; i < 10; i++) out += SAFE[(digest[i] as number) % SAFE.length]
  return out
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableJson(x)}`).join(',')}}`
  }
  return JSON.stringify(v)
}

export function isApiError(err: unknown, code: number): boolean {
  return err instanceof ApiError ? err.code === code : (err as { code?: unknown })?.code === code
}

/**
 * Records an Event about `involved` (in its namespace; `default` for cluster-scoped objects), as
 * `kubectl describe` and `kubectl get events` show them. Never throws: an event is worth less than the work.
 */
export function recordEvent(
  store: ObjectStore, kinds: Kinds, involved: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string, component: string,
  host?: string,
): void {
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
  const namespace = involved.metadata.namespace ?? 'default'
  try {
    store.create(kinds.event, {
      apiVersion: 'v1', kind: 'Event',
      metadata: { name: `${String(involved.metadata.name)}.${randomBytes(8).toString('hex')}`, namespace },
      involvedObject: {
        apiVersion: involved.apiVersion, kind: involved.kind, name: involved.metadata.name,
        ...(involved.metadata.namespace === undefined ? {} : { namespace: involved.metadata.namespace }),
        uid: involved.metadata.uid, resourceVersion: involved.metadata.resourceVersion,
      },
      reason, message, type, count: 1, firstTimestamp: now, lastTimestamp: now,
      source: { component, ...(host === undefined ? {} : { host }) },
      reportingComponent: component, reportingInstance: host ?? component,
    })
  } catch {
    // An event store that refuses (validation, a namespace being deleted) must not stop a controller.
  }
}

/** Shallow-structural equality of two JSON values (status writes are skipped when nothing changed). */
export function sameJson(a: unknown, b: unknown): boolean {
  return stableJson(a) === stableJson(b)
}

/**
 * A condition list with `next` merged in: the transition time is kept when the status did not change, as the
 * real controllers do (so a condition re-asserted every sync does not churn).
 */
export function setCondition<T extends { type: string; status: string; lastTransitionTime?: string; lastUpdateTime?: string }>(
  conditions: readonly T[] | undefined, next: T,
): T[] {
  const list = [...(conditions ?? [])]
  const i = list.findIndex((c) => c.type === next.type)
  const old = i < 0 ? undefined : list[i]
  const merged = { ...next }
  if (old !== undefined && old.status === next.status) {
    if (old.lastTransitionTime !== undefined && 'lastTransitionTime' in next) merged.lastTransitionTime = old.lastTransitionTime
    if (old.lastUpdateTime !== undefined && 'lastUpdateTime' in next && sameJson({ ...old, lastUpdateTime: '', lastTransitionTime: '' }, { ...merged, lastUpdateTime: '', lastTransitionTime: '' })) {
      merged.lastUpdateTime = old.lastUpdateTime
    }
  }
  if (i < 0) list.push(merged)
  else list[i] = merged
  return list
}

export function nowIso(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z')
}
