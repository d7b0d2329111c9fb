import type { KubeObject, ResourceType } from './types.js'

/**
 * Owner references (issue 10): which objects name an owner, and what deleting the owner does to them. The real
 * garbage collector works asynchronously from a graph; the stand-in acts inside the owner's delete call:
 * - `Background` (the default): once the owner is gone, each dependent is deleted (with the same policy, so a
 *   Deployment's ReplicaSets take their pods with them; bound pods then terminate gracefully);
 * - `Foreground` is treated as `Background` — the owner does not wait for its dependents (noted in the store);
 * - `Orphan`: the owner's reference is removed from each dependent before the owner goes.
 */
export interface Dependent {
  type: ResourceType
  obj: KubeObject
}

/** The objects (of any kind) that have an owner reference to `uid`, in the owner's namespace or cluster-scoped. */
export function dependentsOf(all: Iterable<Dependent>, uid: string, namespace: string | undefined): Dependent[] {
  const out: Dependent[] = []
  for (const d of all) {
    const refs = d.obj.metadata.ownerReferences
    if (refs === undefined || !refs.some((r) => r.uid === uid)) continue
    // A namespaced owner owns only objects of its own namespace (cross-namespace references are invalid).
    if (namespace !== undefined && d.obj.metadata.namespace !== undefined && d.obj.metadata.namespace !== namespace) continue
    out.push(d)
  }
  return out
}

/** The dependent without its reference to `uid` (a new object; `ownerReferences` dropped when none remain). */
export function orphaned(obj: KubeObject, uid: string): KubeObject {
  const refs = (obj.metadata.ownerReferences ?? []).filter((r) => r.uid !== uid)
  const metadata = { ...obj.metadata }
  if (refs.length > 0) metadata.ownerReferences = refs
  else delete metadata.ownerReferences
  return { ...obj, metadata }
}
