import fjp from 'fast-json-patch'
import { ApiError } from '../types.js'

/**
 * The patch types the API server accepts (issue 10): JSON merge patch (RFC 7386), JSON patch (RFC 6902, through
 * fast-json-patch) and enough of the strategic merge patch for the built-in kinds: lists merged by their merge keys
 * (containers, volumes, env, ports, volumeMounts, conditions, ownerReferences…), `finalizers` merged as a set,
 * `$patch: delete|replace|merge`, `$setElementOrder/<list>` (order only), `$deleteFromPrimitiveList/<list>`;
 * `$retainKeys` is ignored. Every other list is replaced, as the real schema's non-merging lists are.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any

export type PatchType = 'merge' | 'json' | 'strategic'

export function patchTypeOf(contentType: string | undefined): PatchType | 'apply' | undefined {
  const ct = (contentType ?? '').split(';')[0]!.trim().toLowerCase()
  switch (ct) {
    case 'application/merge-patch+json': return 'merge'
    case 'application/json-patch+json': return 'json'
    case 'application/strategic-merge-patch+json': return 'strategic'
    case 'application/apply-patch+yaml': case 'application/apply-patch+cbor': return 'apply'
    default: return undefined
  }
}

const isObject = (v: unknown): v is Record<string, Json> => v !== null && typeof v === 'object' && !Array.isArray(v)

export function mergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return patch
  const out: Record<string, Json> = isObject(target) ? { ...target } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

export function jsonPatch(target: Json, ops: unknown): Json {
  if (!Array.isArray(ops)) throw new ApiError(400, 'BadRequest', 'json: cannot unmarshal object into Go value of type jsonpatch.Patch')
  try {
    return fjp.applyPatch(structuredClone(target), ops, true, true, true).newDocument
  } catch (err) {
    const e = err as { name?: string; message?: string }
    if (e.name === 'TEST_OPERATION_FAILED') throw new ApiError(422, 'Invalid', `the server rejected our request due to an error in our request: testing value failed`)
    throw new ApiError(422, 'Invalid', `the server rejected our request due to an error in our request: ${(e.message ?? String(err)).split('\n')[0]}`)
  }
}

/** The merge key of a list field, by its name (and, for `ports`, where it sits). */
function mergeKey(field: string, path: readonly string[]): string | undefined {
  switch (field) {
    case 'containers': case 'initContainers': case 'ephemeralContainers': case 'volumes': case 'env': case 'imagePullSecrets':
    case 'resourceClaims': case 'readinessGates': return field === 'readinessGates' ? 'conditionType' : 'name'
    case 'volumeMounts': return 'mountPath'
    case 'volumeDevices': return 'devicePath'
    case 'ports': return path.includes('containers') || path.includes('initContainers') ? 'containerPort' : 'port'
    case 'conditions': case 'addresses': return 'type'
    case 'ownerReferences': return 'uid'
    case 'hostAliases': return 'ip'
    case 'topologySpreadConstraints': return 'topologyKey'
    case 'taints': return 'key'
    default: return undefined
  }
}
const PRIMITIVE_SETS = new Set(['finalizers'])

function mergeList(field: string, path: readonly string[], target: Json, patch: Json[]): Json[] {
  const key = mergeKey(field, path)
  const base: Json[] = Array.isArray(target) ? [...target] : []
  if (PRIMITIVE_SETS.has(field)) {
    for (const v of patch) if (!base.includes(v)) base.push(v)
    return base
  }
  if (key === undefined) return patch.filter((v) => !(isObject(v) && v.$patch !== undefined)).map((v) => strip(v))
  if (patch.some((v) => isObject(v) && v.$patch === 'replace')) return patch.filter((v) => !(isObject(v) && v.$patch === 'replace')).map((v) => strip(v))
  for (const item of patch) {
    if (!isObject(item)) continue
    const at = base.findIndex((b) => isObject(b) && b[key] === item[key])
    if (item.$patch === 'delete') { if (at >= 0) base.splice(at, 1); continue }
    if (at >= 0) base[at] = strategic(base[at], item, [...path, field])
    else base.push(strategic(undefined, item, [...path, field]))
  }
  return base
}

/** Directives removed from what is stored. */
function strip(v: Json): Json {
  if (Array.isArray(v)) return v.map(strip)
  if (!isObject(v)) return v
  const out: Record<string, Json> = {}
  for (const [k, x] of Object.entries(v)) if (!k.startsWith('$')) out[k] = strip(x)
  return out
}

export function strategicMergePatch(target: Json, patch: Json): Json {
  return strategic(target, patch, [])
}

function strategic(target: Json, patch: Json, path: readonly string[]): Json {
  if (!isObject(patch)) return patch
  if (patch.$patch === 'replace') return strip(patch)
  if (patch.$patch === 'delete') return undefined
  const out: Record<string, Json> = isObject(target) ? { ...target } : {}
  const orders: Array<[string, Json[]]> = []
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch' || k === '$retainKeys') continue
    if (k.startsWith('$setElementOrder/')) { if (Array.isArray(v)) orders.push([k.slice('$setElementOrder/'.length), v]); continue }
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length)
      if (Array.isArray(out[field]) && Array.isArray(v)) out[field] = out[field].filter((x: Json) => !v.includes(x))
      continue
    }
    if (v === null) { delete out[k]; continue }
    if (Array.isArray(v)) out[k] = mergeList(k, path, out[k], v)
    else if (isObject(v)) {
      const merged = strategic(out[k], v, [...path, k])
      if (merged === undefined) delete out[k]
      else out[k] = merged
    } else out[k] = v
  }
  for (const [field, order] of orders) {
    const key = mergeKey(field, path)
    const list = out[field]
    if (!Array.isArray(list)) continue
    const rank = (x: Json): number => {
      const i = order.findIndex((o) => (key === undefined ? o === x : isObject(o) && isObject(x) && o[key] === x[key]))
      return i < 0 ? order.length : i
    }
    out[field] = [...list].sort((a, b) => rank(a) - rank(b))
  }
  return out
}
