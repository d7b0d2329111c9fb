import t from 'tap'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Secret } from 'kubernetes-models/v1/Secret'
import { Service } from 'kubernetes-models/v1/Service'
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role'
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding'
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole'
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { resourceTypes } from '../../kube-sim/resources.js'
import { validateObject } from '../../kube-sim/validate.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { CUSTOM, render, type Obj } from './chart.js'

// Issue 13: every object `helm template` renders, with the defaults and with a non-default install, is valid against
// the Kubernetes schemas (kubernetes-models, as kube-sim/validate.ts validates writes) and passes the stand-in API
// server's own rules (names, labels, selectors matching templates) — and is a kind the stand-in serves, so the chart
// applies to `kindling kube-sim`. A kind without a validator here fails the test: a new kind needs its schema.
// (`kubectl apply --dry-run=client` is not used: kubectl needs a server's discovery and OpenAPI even then.)

type Validator = (data: never) => { validate(): void }
const MODELS: Record<string, Validator> = {
  'v1/ConfigMap': (d) => new ConfigMap(d), 'v1/Secret': (d) => new Secret(d), 'v1/Service': (d) => new Service(d),
  'v1/ServiceAccount': (d) => new ServiceAccount(d),
  'apps/v1/Deployment': (d) => new Deployment(d), 'apps/v1/DaemonSet': (d) => new DaemonSet(d),
  'rbac.authorization.k8s.io/v1/Role': (d) => new Role(d), 'rbac.authorization.k8s.io/v1/RoleBinding': (d) => new RoleBinding(d),
  'rbac.authorization.k8s.io/v1/ClusterRole': (d) => new ClusterRole(d), 'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (d) => new ClusterRoleBinding(d),
  'policy/v1/PodDisruptionBudget': (d) => new PodDisruptionBudget(d), 'networking.k8s.io/v1/NetworkPolicy': (d) => new NetworkPolicy(d),
}

/** What is wrong with an object, in words (empty: nothing). */
function problems(o: Obj): string[] {
  const id = `${o.apiVersion}/${o.kind} ${o.metadata?.name}`
  const make = MODELS[`${o.apiVersion}/${o.kind}`]
  if (make === undefined) return [`${id}: no validator for this kind in test/chart/validate.test.ts`]
  const out: string[] = []
  try {
    const { apiVersion: _a, kind: _k, ...data } = o
    make(data as never).validate()
  } catch (err) {
    const errors = (err as { errors?: Array<{ instancePath: string; message?: string }> }).errors
    out.push(`${id}: ${Array.isArray(errors) ? errors.map((e) => `${e.instancePath} ${e.message}`).join('; ') : (err as Error).message}`)
  }
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') as [string, string] : ['', o.apiVersion]
  const type = resourceTypes().find((r) => r.group === group && r.version === version && r.kind === o.kind)
  if (type === undefined) out.push(`${id}: a kind kube-sim does not serve`)
  else {
    try { validateObject(type, o as unknown as KubeObject) } catch (err) { out.push(`${id}: ${(err as Error).message}`) }
    if (type.namespaced && typeof o.metadata.namespace !== 'string') out.push(`${id}: a namespaced kind without metadata.namespace`)
    if (!type.namespaced && o.metadata.namespace !== undefined) out.push(`${id}: a cluster-scoped kind with a namespace`)
  }
  return out
}

const RENDERS: Array<[string, () => Promise<Obj[]>]> = [
  ['the defaults', () => render()],
  ['values-custom.yaml', () => render({ files: [CUSTOM] })],
  ['a functions namespace of its own, release "edge" in "platform"', () => render({ release: 'edge', namespace: 'platform', set: ['functionsNamespace=functions'] })],
  ['Redis, PDBs and NetworkPolicies off', () => render({ set: ['redis.enabled=false', 'redis.externalUrl=redis://r:6379', 'controller.pdb.enabled=false', 'router.pdb.enabled=false', 'networkPolicy.enabled=false'] })],
]

t.test('every rendered object is valid against its Kubernetes schema and the stand-in API server\'s rules', async (t) => {
  const kinds = new Set<string>()
  for (const [what, make] of RENDERS) {
    const objs = await make()
    t.ok(objs.length >= 10, `${what}: ${objs.length} objects rendered`)
    t.same(objs.flatMap(problems), [], `${what}: every object valid`)
    const names = objs.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`)
    t.same(names.filter((n, i) => names.indexOf(n) !== i), [], `${what}: no two objects share kind, namespace and name`)
    for (const o of objs) kinds.add(`${o.apiVersion}/${o.kind}`)
  }
  t.same([...kinds].sort(), Object.keys(MODELS).sort(), 'the renders cover every kind the chart has, and each has a validator')
})

t.test('the check fails on what it should: a bad field, a selector off its template, an unknown kind', async (t) => {
  const objs = await render()
  const deploy = structuredClone(objs.find((o) => o.kind === 'Deployment')!)
  deploy.spec.replicas = 'two'
  t.match(problems(deploy).join('\n'), /\/spec\/replicas must be integer/)
  const off = structuredClone(objs.find((o) => o.kind === 'DaemonSet')!)
  off.spec.selector.matchLabels['app.kubernetes.io/component'] = 'other'
  t.match(problems(off).join('\n'), /`selector` does not match template `labels`/)
  const svc = structuredClone(objs.find((o) => o.kind === 'Service')!)
  svc.metadata.name = '9-starts-with-a-digit'
  t.match(problems(svc).join('\n'), /DNS-1035 label/)
  t.match(problems({ apiVersion: 'batch/v1', kind: 'Job', metadata: { name: 'x', namespace: 'n' } }).join('\n'), /no validator for this kind/)
})
