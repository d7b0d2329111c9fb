import type { ResourceType } from './types.js'

/**
 * The kinds the stand-in serves (issue 10), as discovery describes them: core/v1, apps/v1 and the groups the
 * platform's RBAC, leases and disruption budgets use. Short names are kubectl's.
 */
const VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']

function kind(group: string, version: string, resource: string, k: string, namespaced: boolean, shortNames: string[], subresources: ResourceType['subresources'] = []): ResourceType {
  return {
    group, version, resource, kind: k, listKind: `${k}List`, singular: k.toLowerCase(), namespaced,
    ...(shortNames.length > 0 ? { shortNames } : {}), verbs: VERBS, subresources,
  }
}

/** A fresh copy of the table (each store owns its own). */
export function resourceTypes(): ResourceType[] {
  return [
    kind('', 'v1', 'namespaces', 'Namespace', false, ['ns'], ['status']),
    kind('', 'v1', 'pods', 'Pod', true, ['po'], ['status', 'binding', 'eviction', 'log']),
    kind('', 'v1', 'nodes', 'Node', false, ['no'], ['status']),
    kind('', 'v1', 'services', 'Service', true, ['svc'], ['status']),
    kind('', 'v1', 'events', 'Event', true, ['ev']),
    kind('', 'v1', 'configmaps', 'ConfigMap', true, ['cm']),
    kind('', 'v1', 'secrets', 'Secret', true, []),
    kind('', 'v1', 'serviceaccounts', 'ServiceAccount', true, ['sa']),
    kind('', 'v1', 'endpoints', 'Endpoints', true, ['ep']),
    kind('apps', 'v1', 'deployments', 'Deployment', true, ['deploy'], ['status', 'scale']),
    kind('apps', 'v1', 'replicasets', 'ReplicaSet', true, ['rs'], ['status', 'scale']),
    kind('apps', 'v1', 'daemonsets', 'DaemonSet', true, ['ds'], ['status']),
    kind('coordination.k8s.io', 'v1', 'leases', 'Lease', true, []),
    kind('rbac.authorization.k8s.io', 'v1', 'roles', 'Role', true, []),
    kind('rbac.authorization.k8s.io', 'v1', 'rolebindings', 'RoleBinding', true, []),
    kind('rbac.authorization.k8s.io', 'v1', 'clusterroles', 'ClusterRole', false, []),
    kind('rbac.authorization.k8s.io', 'v1', 'clusterrolebindings', 'ClusterRoleBinding', false, []),
    kind('policy', 'v1', 'poddisruptionbudgets', 'PodDisruptionBudget', true, ['pdb'], ['status']),
    kind('networking.k8s.io', 'v1', 'networkpolicies', 'NetworkPolicy', true, ['netpol']),
  ]
}

/** `apps/v1` for a group and version, `v1` for the core group. */
export function apiVersionOf(t: Pick<ResourceType, 'group' | 'version'>): string {
  return t.group === '' ? t.version : `${t.group}/${t.version}`
}
