/**
 * The endpoints controller (issue 13): for every Service with a selector, an `Endpoints` object of the same name
 * listing the pods it selects — Ready ones under `addresses`, the others (running but not Ready, or starting)
 * under `notReadyAddresses` — with each Service port resolved against the pod (`targetPort` a number, or the name
 * of a container port). Pods with no IP yet, finished or being deleted are left out, as the real controller does.
 * The stand-in's kube-proxy (kube-sim/proxy.ts) routes from these objects, and `kubectl get endpoints` shows them.
 * A Service without a selector keeps whatever Endpoints its owner writes.
 */
import type { KubeObject } from '../types.js'
import { matchesLabelSelector } from '../selectors.js'
import { QueueController, type ControllerOptions } from './queue.js'
import { isApiError, isPodActive, isPodReady, keyOf, sameJson, splitKey } from './shared.js'

export interface EndpointPort { name?: string; port: number; protocol: string }
export interface EndpointAddress { ip: string; nodeName?: string; targetRef: { kind: 'Pod'; name: string; namespace: string; uid: string } }
export interface EndpointSubset { addresses?: EndpointAddress[]; notReadyAddresses?: EndpointAddress[]; ports: EndpointPort[] }

export class EndpointsController extends QueueController {
  constructor(opts: ControllerOptions) {
    super(opts, 'endpoints')
  }

  start(): void {
    this.watch(this.kinds.service, (ev) => this.queue.add(keyOf(ev.object)))
    // A pod's labels, IP or readiness changed: every Service of its namespace is looked at again (the set is small).
    this.watch(this.kinds.pod, (ev) => {
      const ns = String(ev.object.metadata.namespace)
      for (const svc of this.store.list(this.kinds.service, { namespace: ns }).items) this.queue.add(keyOf(svc))
    })
    this.watch(this.kinds.endpoints, (ev) => {
      // Someone else changed or removed what we own: put it back.
      if (this.store.get(this.kinds.service, ev.object.metadata.namespace, String(ev.object.metadata.name)) !== undefined) this.queue.add(keyOf(ev.object))
    })
  }

  sync(key: string): void {
    const { namespace, name } = splitKey(key)
    const svc = this.store.get(this.kinds.service, namespace, name)
    const current = this.store.get(this.kinds.endpoints, namespace, name)
    if (svc === undefined) {
      if (current !== undefined) this.#delete(namespace, name)
      return
    }
    const selector = svc.spec?.selector as Record<string, string> | undefined
    if (selector === undefined || Object.keys(selector).length === 0 || svc.spec?.type === 'ExternalName') return
    const pods = this.store.list(this.kinds.pod, { namespace }).items.filter((p) => matchesLabelSelector({ matchLabels: selector }, p.metadata.labels))
    const subsets = subsetsOf(svc, pods)
    const labels = { ...(svc.metadata.labels ?? {}), ...(svc.spec?.clusterIP === 'None' ? { 'service.kubernetes.io/headless': '' } : {}) }
    if (current === undefined) {
      this.store.create(this.kinds.endpoints, { apiVersion: 'v1', kind: 'Endpoints', metadata: { name, namespace, labels }, ...(subsets.length > 0 ? { subsets } : {}) })
      return
    }
    if (sameJson(current.subsets ?? [], subsets) && sameJson(current.metadata.labels ?? {}, labels)) return
    const next: KubeObject = { ...current, metadata: { ...current.metadata, labels } }
    if (subsets.length > 0) next.subsets = subsets
    else delete next.subsets
    this.store.update(this.kinds.endpoints, next)
  }

  #delete(namespace: string | undefined, name: string): void {
    try {
      this.store.delete(this.kinds.endpoints, namespace, name)
    } catch (err) {
      if (!isApiError(err, 404)) throw err
    }
  }
}

/** The subsets of a Service over its selected pods: pods whose ports resolve alike share a subset. */
export function subsetsOf(svc: KubeObject, pods: readonly KubeObject[]): EndpointSubset[] {
  const svcPorts = (svc.spec?.ports ?? []) as Array<{ name?: string; port: number; targetPort?: number | string; protocol?: string }>
  const bySignature = new Map<string, EndpointSubset>()
  const sorted = [...pods].sort((a, b) => String(a.metadata.name).localeCompare(String(b.metadata.name)))
  for (const pod of sorted) {
    const ip = pod.status?.podIP
    if (typeof ip !== 'string' || ip === '' || !isPodActive(pod)) continue
    const ports: EndpointPort[] = []
    for (const p of svcPorts) {
      const port = resolveTargetPort(pod, p.targetPort ?? p.port)
      if (port === undefined) continue
      ports.push({ ...(p.name === undefined ? {} : { name: p.name }), port, protocol: p.protocol ?? 'TCP' })
    }
    if (ports.length === 0 && svcPorts.length > 0) continue
    const signature = JSON.stringify(ports)
    let subset = bySignature.get(signature)
    if (subset === undefined) bySignature.set(signature, (subset = { ports }))
    const address: EndpointAddress = {
      ip, ...(typeof pod.spec?.nodeName === 'string' ? { nodeName: pod.spec.nodeName } : {}),
      targetRef: { kind: 'Pod', name: String(pod.metadata.name), namespace: String(pod.metadata.namespace), uid: String(pod.metadata.uid) },
    }
    if (isPodReady(pod)) (subset.addresses ??= []).push(address)
    else (subset.notReadyAddresses ??= []).push(address)
  }
  return [...bySignature.values()]
}

/** A Service port's target on one pod: the number, or the container port of that name (undefined: the pod has none). */
function resolveTargetPort(pod: KubeObject, target: number | string): number | undefined {
  if (typeof target === 'number') return target
  if (/^\d+$/.test(target)) return Number(target)
  for (const c of (pod.spec?.containers ?? []) as Array<{ ports?: Array<{ name?: string; containerPort: number }> }>) {
    for (const p of c.ports ?? []) if (p.name === target) return p.containerPort
  }
  return undefined
}
