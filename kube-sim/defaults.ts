import type { KubeObject, ResourceType } from './types.js'

/**
 * The API server's defaulting of the fields clients read back (issue 10): a pod's restart policy, grace period and
 * scheduler, its `Pending` phase at creation; a workload's replicas and strategy; a service's type and ports. Only
 * what the stand-in's components and kubectl's columns rely on — the real defaulting sets more.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any

function containerDefaults(c: Any): void {
  if (c === null || typeof c !== 'object') return
  c.terminationMessagePath ??= '/dev/termination-log'
  c.terminationMessagePolicy ??= 'File'
  if (c.imagePullPolicy === undefined && typeof c.image === 'string') {
    const tag = /:([^/:@]+)$/.exec(c.image)?.[1]
    c.imagePullPolicy = tag === undefined || tag === 'latest' ? 'Always' : 'IfNotPresent'
  }
  c.resources ??= {}
  if (Array.isArray(c.ports)) for (const p of c.ports) if (p && typeof p === 'object') p.protocol ??= 'TCP'
}

function podSpecDefaults(spec: Any): void {
  if (spec === null || typeof spec !== 'object') return
  spec.restartPolicy ??= 'Always'
  spec.terminationGracePeriodSeconds ??= 30
  spec.dnsPolicy ??= 'ClusterFirst'
  spec.schedulerName ??= 'default-scheduler'
  spec.securityContext ??= {}
  for (const list of [spec.containers, spec.initContainers]) if (Array.isArray(list)) for (const c of list) containerDefaults(c)
}

/** The pod's QoS class from its containers' requests and limits (`Guaranteed`, `Burstable`, `BestEffort`). */
function qosClass(spec: Any): string {
  const cs: Any[] = [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]
  let any = false
  let guaranteed = cs.length > 0
  for (const c of cs) {
    const req = c?.resources?.requests ?? {}
    const lim = c?.resources?.limits ?? {}
    if (Object.keys(req).length > 0 || Object.keys(lim).length > 0) any = true
    for (const r of ['cpu', 'memory']) {
      if (lim[r] === undefined || (req[r] !== undefined && String(req[r]) !== String(lim[r]))) guaranteed = false
    }
  }
  return !any ? 'BestEffort' : guaranteed ? 'Guaranteed' : 'Burstable'
}

/** Fills defaults in place on an object about to be written (`create` marks a new object). */
export function applyDefaults(type: ResourceType, obj: KubeObject, create: boolean): void {
  const spec: Any = obj.spec
  switch (`${type.group}/${type.resource}`) {
    case '/pods':
      podSpecDefaults(spec)
      if (create) obj.status = { phase: 'Pending', qosClass: qosClass(spec), ...(obj.status ?? {}) }
      break
    case '/namespaces':
      // The label the real server keeps on every namespace, for namespace selectors.
      if (typeof obj.metadata.name === 'string' && obj.metadata.name !== '') obj.metadata.labels = { ...(obj.metadata.labels ?? {}), 'kubernetes.io/metadata.name': obj.metadata.name }
      obj.spec = { finalizers: ['kubernetes'], ...(spec ?? {}) }
      obj.status = { phase: 'Active', ...(obj.status ?? {}) }
      break
    case '/services':
      if (spec && typeof spec === 'object') {
        spec.type ??= 'ClusterIP'
        spec.sessionAffinity ??= 'None'
        if (Array.isArray(spec.ports)) for (const p of spec.ports) if (p && typeof p === 'object') { p.protocol ??= 'TCP'; p.targetPort ??= p.port }
      }
      break
    case 'apps/deployments':
      if (spec && typeof spec === 'object') {
        spec.replicas ??= 1
        spec.revisionHistoryLimit ??= 10
        spec.progressDeadlineSeconds ??= 600
        spec.strategy ??= { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: '25%', maxSurge: '25%' } }
        podSpecDefaults(spec.template?.spec)
      }
      break
    case 'apps/replicasets':
      if (spec && typeof spec === 'object') { spec.replicas ??= 1; podSpecDefaults(spec.template?.spec) }
      break
    case 'apps/daemonsets':
      if (spec && typeof spec === 'object') {
        spec.revisionHistoryLimit ??= 10
        spec.updateStrategy ??= { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } }
        podSpecDefaults(spec.template?.spec)
      }
      break
  }
}
