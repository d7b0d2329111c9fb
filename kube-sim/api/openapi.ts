import { apiVersionOf } from '../resources.js'
import type { ResourceType } from '../types.js'

/**
 * The OpenAPI v3 documents kubectl reads before `apply`/`create`/`replace` (issue 10). kubectl asks them whether
 * the server validates fields itself (a PATCH operation tagged with the kind's `x-kubernetes-group-version-kind`
 * listing the `fieldValidation` parameter); answering yes makes it send `fieldValidation=Strict` and leave
 * validation to the server, which the stand-in does against the published schemas. No schemas are served: with no
 * strategic-merge content type declared, `kubectl apply` computes its patches from its compiled-in types.
 */
function gvPath(group: string, version: string): string {
  return group === '' ? `api/${version}` : `apis/${group}/${version}`
}

export function openApiRoot(types: readonly ResourceType[]): unknown {
  const paths: Record<string, { serverRelativeURL: string }> = {}
  for (const t of types) {
    const p = gvPath(t.group, t.version)
    paths[p] = { serverRelativeURL: `/openapi/v3/${p}?hash=kindling-kube-sim-1` }
  }
  return { paths }
}

const PARAMS = ['dryRun', 'fieldManager', 'fieldValidation', 'force', 'pretty'].map((name) => ({ name, in: 'query', schema: { type: name === 'force' ? 'boolean' : 'string' }, uniqueItems: true }))

/** The document of one group version, or undefined when none is served. */
export function openApiGroupVersion(types: readonly ResourceType[], path: string): unknown {
  const of = types.filter((t) => gvPath(t.group, t.version) === path)
  if (of.length === 0) return undefined
  const paths: Record<string, unknown> = {}
  for (const t of of) {
    const gvk = { group: t.group, version: t.version, kind: t.kind }
    const base = `/${gvPath(t.group, t.version)}${t.namespaced ? '/namespaces/{namespace}' : ''}/${t.resource}`
    const op = (verb: string, params: unknown[] = []) => ({ operationId: `${verb}${t.kind}`, 'x-kubernetes-action': verb, 'x-kubernetes-group-version-kind': gvk, parameters: params, responses: { 200: { description: 'OK' } } })
    paths[base] = { get: op('list'), post: op('post', PARAMS) }
    paths[`${base}/{name}`] = { get: op('get'), put: op('put', PARAMS), patch: op('patch', PARAMS), delete: op('delete') }
  }
  return { openapi: '3.0.0', info: { title: 'Kubernetes', version: 'v1.34.1' }, paths, components: { schemas: {} }, 'x-kindling-api-version': apiVersionOf(of[0]!) }
}
