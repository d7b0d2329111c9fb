/**
 * Whether a pod may run on a node (issue 10), as the scheduler's filters and the DaemonSet controller decide it:
 * taints against tolerations, `nodeSelector`, required node affinity. Pure functions of the two objects.
 */
import type { KubeObject } from '../types.js'

export interface Taint {
  key: string
  value?: string
  effect: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute' | string
}

export interface Toleration {
  key?: string
  operator?: 'Equal' | 'Exists' | string
  value?: string
  effect?: string
  tolerationSeconds?: number
}

interface NodeSelectorRequirement {
  key: string
  operator: string
  values?: string[]
}

interface NodeSelectorTerm {
  matchExpressions?: NodeSelectorRequirement[]
  matchFields?: NodeSelectorRequirement[]
}

/** The taint a NotReady node carries (the node lifecycle controller's), so pods that tolerate it still land. */
export const NOT_READY_TAINT: Taint = { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }
export const UNSCHEDULABLE_TAINT: Taint = { key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' }

/** Kubernetes' toleration matching: an empty key with Exists tolerates everything; an empty effect matches any. */
export function tolerates(t: Toleration, taint: Taint): boolean {
  if (t.effect !== undefined && t.effect !== '' && t.effect !== taint.effect) return false
  const op = t.operator ?? 'Equal'
  if ((t.key ?? '') === '') return op === 'Exists'
  if (t.key !== taint.key) return false
  if (op === 'Exists') return true
  return (t.value ?? '') === (taint.value ?? '')
}

export function isNodeReady(node: KubeObject): boolean {
  const conditions = (node.status?.conditions ?? []) as Array<{ type?: string; status?: string }>
  return conditions.some((c) => c.type === 'Ready' && c.status === 'True')
}

/** The node's taints, with the not-ready taint added when its Ready condition is not True. */
export function effectiveTaints(node: KubeObject): Taint[] {
  const taints: Taint[] = [...((node.spec?.taints ?? []) as Taint[])]
  if (!isNodeReady(node) && !taints.some((t) => t.key === NOT_READY_TAINT.key)) taints.push(NOT_READY_TAINT)
  return taints
}

/** The first taint with a scheduling effect (NoSchedule, NoExecute) that no toleration of the pod tolerates. */
export function untoleratedTaint(podSpec: { tolerations?: Toleration[] } | undefined, taints: readonly Taint[]): Taint | undefined {
  const tolerations = podSpec?.tolerations ?? []
  return taints.find((taint) => (taint.effect === 'NoSchedule' || taint.effect === 'NoExecute') && !tolerations.some((t) => tolerates(t, taint)))
}

/** `nodeSelector` and required node affinity (terms ORed, expressions within a term ANDed). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function matchesNodeSelectorAndAffinity(podSpec: any, node: KubeObject): boolean {
  const labels: Record<string, string> = node.metadata.labels ?? {}
  for (const [k, v] of Object.entries((podSpec?.nodeSelector ?? {}) as Record<string, string>)) if (labels[k] !== v) return false
  const required = podSpec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution
  const terms = (required?.nodeSelectorTerms ?? []) as NodeSelectorTerm[]
  if (required === undefined || required === null) return true
  return terms.some((term) => termMatches(term, node))
}

function termMatches(term: NodeSelectorTerm, node: KubeObject): boolean {
  const exprs = term.matchExpressions ?? []
  const fields = term.matchFields ?? []
  // A term with no requirements matches nothing (k8s.io/component-helpers nodeaffinity).
  if (exprs.length === 0 && fields.length === 0) return false
  const labels: Record<string, string> = node.metadata.labels ?? {}
  return exprs.every((r) => requirementMatches(r, labels)) &&
    fields.every((r) => requirementMatches(r, { 'metadata.name': String(node.metadata.name) }))
}

export function requirementMatches(r: NodeSelectorRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, r.key)
  const value = labels[r.key]
  const values = r.values ?? []
  switch (r.operator) {
    case 'In': return has && values.includes(value as string)
    case 'NotIn': return !has || !values.includes(value as string)
    case 'Exists': return has
    case 'DoesNotExist': return !has
    case 'Gt':
    case 'Lt': {
      if (!has || values.length !== 1) return false
      const a = Number.parseInt(value as string, 10)
      const b = Number.parseInt(values[0] as string, 10)
      if (!Number.isInteger(a) || !Number.isInteger(b)) return false
      return r.operator === 'Gt' ? a > b : a < b
    }
    default: return false
  }
}

/** Tolerations the DaemonSet controller adds to its pods (they run on not-ready, unreachable, cordoned, pressured nodes). */
export const DAEMON_TOLERATIONS: readonly Toleration[] = Object.freeze([
  { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' },
  { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute' },
  { key: 'node.kubernetes.io/disk-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/memory-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/pid-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' },
])
