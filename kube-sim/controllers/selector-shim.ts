/** Temporary until sim-api's kube-sim/selectors.ts is merged (then this file goes). */
export interface LabelSelector {
  matchLabels?: Record<string, string> | undefined
  matchExpressions?: Array<{ key: string; operator: string; values?: string[] | undefined }> | undefined
}

export function matchesLabelSelector(sel: LabelSelector | null | undefined, labels: Record<string, string> | undefined): boolean {
  if (sel === null || sel === undefined) return false
  const l = labels ?? {}
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (l[k] !== v) return false
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.hasOwn(l, e.key)
    const vals = e.values ?? []
    if (e.operator === 'In' && !(has && vals.includes(l[e.key] as string))) return false
    if (e.operator === 'NotIn' && has && vals.includes(l[e.key] as string)) return false
    if (e.operator === 'Exists' && !has) return false
    if (e.operator === 'DoesNotExist' && has) return false
  }
  return true
}
