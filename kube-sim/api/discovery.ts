import { apiVersionOf } from '../resources.js'
import type { KubeObject, ResourceType } from '../types.js'

/**
 * Discovery documents (issue 10): `/version`, `/api`, `/apis`, the per-version resource lists, and the aggregated
 * discovery (`apidiscovery.k8s.io/v2`) that kubectl 1.34 asks for first — answering it saves kubectl a request per
 * group version; a client that does not ask gets the legacy documents.
 */
export const VERSION = {
  major: '1', minor: '34', gitVersion: 'v1.34.1', gitCommit: '0000000000000000000000000000000000000000', gitTreeState: 'clean',
  buildDate: '2025-09-09T00:00:00Z', goVersion: 'go1.24.6', compiler: 'gc', platform: 'linux/amd64',
}

const SCALE = { group: 'autoscaling', version: 'v1', kind: 'Scale' }

/** `[group, version]` pairs the store serves, the core group first. */
function groupVersions(types: readonly ResourceType[]): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const t of types) {
    const vs = out.get(t.group) ?? []
    if (!vs.includes(t.version)) vs.push(t.version)
    out.set(t.group, vs)
  }
  return out
}

function subresourceKind(t: ResourceType, sub: string): { group?: string; version?: string; kind: string } {
  switch (sub) {
    case 'scale': return SCALE
    case 'binding': return { kind: 'Binding', group: '', version: 'v1' }
    case 'eviction': return { kind: 'Eviction', group: 'policy', version: 'v1' }
    case 'log': return { kind: 'Pod', group: '', version: 'v1' }
    default: return { kind: t.kind }
  }
}

function subresourceVerbs(sub: string): string[] {
  return sub === 'binding' || sub === 'eviction' ? ['create'] : sub === 'log' ? ['get'] : ['get', 'patch', 'update']
}

export function apiVersions(serverAddress: string): KubeObject {
  return { kind: 'APIVersions', apiVersion: 'v1', metadata: {}, versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] } as unknown as KubeObject
}

export function apiGroupList(types: readonly ResourceType[]): KubeObject {
  const groups = [...groupVersions(types)].filter(([g]) => g !== '').map(([name, versions]) => ({
    name, versions: versions.map((version) => ({ groupVersion: `${name}/${version}`, version })),
    preferredVersion: { groupVersion: `${name}/${versions[0]!}`, version: versions[0]! },
  }))
  return { kind: 'APIGroupList', apiVersion: 'v1', metadata: {}, groups } as unknown as KubeObject
}

export function apiGroup(types: readonly ResourceType[], group: string): KubeObject | undefined {
  const versions = groupVersions(types).get(group)
  if (versions === undefined || group === '') return undefined
  return {
    kind: 'APIGroup', apiVersion: 'v1', metadata: {}, name: group,
    versions: versions.map((version) => ({ groupVersion: `${group}/${version}`, version })),
    preferredVersion: { groupVersion: `${group}/${versions[0]!}`, version: versions[0]! },
  } as unknown as KubeObject
}

export function apiResourceList(types: readonly ResourceType[], group: string, version: string): KubeObject | undefined {
  const of = types.filter((t) => t.group === group && t.version === version)
  if (of.length === 0) return undefined
  const resources: unknown[] = []
  for (const t of of) {
    resources.push({
      name: t.resource, singularName: t.singular, namespaced: t.namespaced, kind: t.kind, verbs: t.verbs,
      ...(t.shortNames === undefined ? {} : { shortNames: t.shortNames }),
      ...(t.group === 'apps' ? { categories: ['all'] } : t.resource === 'pods' || t.resource === 'services' ? { categories: ['all'] } : {}),
      storageVersionHash: '',
    })
    for (const sub of t.subresources) {
      const k = subresourceKind(t, sub)
      resources.push({ name: `${t.resource}/${sub}`, singularName: '', namespaced: t.namespaced, kind: k.kind, verbs: subresourceVerbs(sub), ...(k.group === undefined ? {} : { group: k.group, version: k.version }) })
    }
  }
  return { kind: 'APIResourceList', apiVersion: 'v1', metadata: {}, groupVersion: apiVersionOf({ group, version }), resources } as unknown as KubeObject
}

/** The aggregated discovery document for `/api` (core) or `/apis` (the named groups). */
export function aggregatedDiscovery(types: readonly ResourceType[], core: boolean): KubeObject {
  const items = [...groupVersions(types)].filter(([g]) => (g === '') === core).map(([group, versions]) => ({
    metadata: { name: group, creationTimestamp: null },
    versions: versions.map((version) => ({
      version, freshness: 'Current',
      resources: types.filter((t) => t.group === group && t.version === version).map((t) => ({
        resource: t.resource, singularResource: t.singular, scope: t.namespaced ? 'Namespaced' : 'Cluster',
        responseKind: { group: t.group, version: t.version, kind: t.kind }, verbs: t.verbs,
        ...(t.shortNames === undefined ? {} : { shortNames: t.shortNames }),
        ...(t.group === 'apps' || t.resource === 'pods' || t.resource === 'services' ? { categories: ['all'] } : {}),
        subresources: t.subresources.map((sub) => {
          const k = subresourceKind(t, sub)
          return { subresource: sub, responseKind: { group: k.group ?? t.group, version: k.version ?? t.version, kind: k.kind }, verbs: subresourceVerbs(sub) }
        }),
      })),
    })),
  }))
  return { kind: 'APIGroupDiscoveryList', apiVersion: 'apidiscovery.k8s.io/v2', metadata: {}, items } as unknown as KubeObject
}
