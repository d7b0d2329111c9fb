import t from 'tap'
import { barePod, poolDeployment, RUNTIME_PORT } from '../../backends/kubernetes/pod-spec.js'
import { matchesLabelSelector, type LabelSelector } from '../../kube-sim/selectors.js'
import { CUSTOM, one, render, workloads, type Obj } from './chart.js'

// Issue 13, what the chart allows: RBAC rules exactly the contract's, no API token where no API is spoken, the
// NetworkPolicies evaluated against the labels of the real pods (the chart's pod templates and the pods
// backends/kubernetes/pod-spec.ts makes), every container's security context, and the contract's ports, probes,
// Services, labels, disruption budgets and rollout strategies.

const CONTRACT_RBAC = {
  controller: [
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'list', 'watch', 'create', 'update'] },
    { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', 'create', 'delete', 'patch', 'update'] },
    { apiGroups: ['apps'], resources: ['deployments'], verbs: ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'] },
    { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
    { apiGroups: [''], resources: ['namespaces'], verbs: ['get'] },
  ],
  agent: [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] }],
}

type Rule = { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }
/** Rules as a set of `group/resource:verb` grants, so their order and grouping do not matter. */
const grants = (rules: readonly Rule[]): string[] => rules.flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g}/${res}:${v}${r.resourceNames ? `[${r.resourceNames.join(',')}]` : ''}`)))).sort()

t.test('RBAC: the Roles grant exactly the contract\'s verbs, bound to their own ServiceAccounts; nothing cluster-wide by default', async (t) => {
  const objs = await render()
  t.same(grants(one(objs, 'Role', 'kindling-controller').rules), grants(CONTRACT_RBAC.controller), 'the controller\'s Role')
  t.same(grants(one(objs, 'Role', 'kindling-agent').rules), grants(CONTRACT_RBAC.agent), 'the agent\'s Role')
  t.same(objs.filter((o) => o.kind === 'Role').map((o) => o.metadata.name).sort(), ['kindling-agent', 'kindling-controller'], 'no Role for the router or Redis')
  t.same(objs.filter((o) => o.kind.startsWith('Cluster')), [], 'no ClusterRole when the functions live in the release namespace')
  for (const c of ['controller', 'agent']) {
    const b = one(objs, 'RoleBinding', `kindling-${c}`)
    t.same(b.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `kindling-${c}` })
    t.same(b.subjects, [{ kind: 'ServiceAccount', name: `kindling-${c}`, namespace: 'kindling' }])
  }
  const w = workloads(objs)
  for (const c of ['controller', 'router', 'agent', 'redis']) {
    t.equal(w.get(c)!.spec.template.spec.serviceAccountName, `kindling-${c}`, `${c} runs as its own ServiceAccount`)
    // The service-link variables of Services named kindling-* would be KINDLING_* names in every pod.
    t.equal(w.get(c)!.spec.template.spec.enableServiceLinks, false, `${c} gets no service-link variables`)
  }
  for (const c of ['router', 'redis']) {
    t.equal(one(objs, 'ServiceAccount', `kindling-${c}`).automountServiceAccountToken, false, `${c}'s ServiceAccount mounts no token`)
    t.equal(w.get(c)!.spec.template.spec.automountServiceAccountToken, false, `nor does its pod`)
  }
  for (const c of ['controller', 'agent']) t.equal(one(objs, 'ServiceAccount', `kindling-${c}`).automountServiceAccountToken, true, `${c} talks to the API server`)
})

t.test('RBAC with a functions namespace of its own: the work Role there, the Lease at home, namespaces get/create cluster-wide', async (t) => {
  const objs = await render({ release: 'edge', namespace: 'platform', set: ['functionsNamespace=functions'] })
  const home = one(objs, 'Role', 'edge-kindling-controller')
  t.equal(home.metadata.namespace, 'platform')
  t.same(grants(home.rules), grants(CONTRACT_RBAC.controller.slice(0, 1)), 'the Lease rule in the release namespace')
  const work = one(objs, 'Role', 'edge-kindling-controller-functions')
  t.equal(work.metadata.namespace, 'functions')
  t.same(grants(work.rules), grants(CONTRACT_RBAC.controller.slice(1)), 'pods, deployments, events, its namespace there')
  t.equal(one(objs, 'RoleBinding', 'edge-kindling-controller-functions').subjects[0].namespace, 'platform', 'bound to the controller in the release namespace')
  t.same(grants(one(objs, 'ClusterRole', 'platform-edge-kindling-namespaces').rules), ['/namespaces:create', '/namespaces:get'])
  t.same(one(objs, 'ClusterRoleBinding', 'platform-edge-kindling-namespaces').subjects, [{ kind: 'ServiceAccount', name: 'edge-kindling-controller', namespace: 'platform' }])
  t.equal(one(objs, 'Role', 'edge-kindling-agent').metadata.namespace, 'functions', 'the agent reads pods where they are')
  t.equal(one(objs, 'NetworkPolicy', 'edge-kindling-runtime').metadata.namespace, 'functions', 'the functions\' fence where they are')
})

/** The labels of every kind of pod there is: the chart's templates and the controller's pods (pod-spec.ts). */
function podsOf(objs: readonly Obj[]): Record<string, Record<string, string>> {
  const w = workloads(objs)
  const shape = { platformId: 'kindling', runtime: 'node', image: 'kindling/runtime-node:0.1.0', memoryMb: 128, cpu: 0.5, tmpMb: 64, codeMb: 64, role: { key: 'kindling.io/node-role', value: 'runtime' } }
  const pool = poolDeployment('kindling-kindling-node', 'kindling', 1, shape)
  return {
    controller: w.get('controller')!.spec.template.metadata.labels, router: w.get('router')!.spec.template.metadata.labels,
    agent: w.get('agent')!.spec.template.metadata.labels, redis: w.get('redis')!.spec.template.metadata.labels,
    pool: pool.spec!.template.metadata!.labels!, bare: barePod('b', 'kindling', 'i', 'fn:f', 1, shape).metadata!.labels!,
    egress: barePod('e', 'kindling', 'i', 'fn:f', 1, shape, 'egress').metadata!.labels!,
    otherPlatform: barePod('o', 'kindling', 'i', 'fn:f', 1, { ...shape, platformId: 'another' }).metadata!.labels!,
    stranger: { app: 'something-else' },
  }
}

type Peer = { podSelector?: LabelSelector; namespaceSelector?: LabelSelector; ipBlock?: unknown }
type PolicyRule = { from?: Peer[]; to?: Peer[]; ports?: Array<{ port: number; protocol: string }> }
/** The pods (by kind) a policy selects. */
const selects = (p: Obj, pods: Record<string, Record<string, string>>): string[] => Object.keys(pods).filter((k) => matchesLabelSelector(p.spec.podSelector, pods[k])).sort()
/** The pods (by kind) a rule's peers admit, on a port: every pod when the rule names no peers. */
function admits(rule: PolicyRule, pods: Record<string, Record<string, string>>): string[] {
  const peers = rule.from ?? rule.to
  if (peers === undefined || peers.length === 0) return ['*']
  if (!peers.every((p) => p.ipBlock === undefined && p.namespaceSelector === undefined)) throw new Error(`a peer outside the namespace: ${JSON.stringify(peers)}`)
  return Object.keys(pods).filter((k) => peers.some((p) => p.podSelector !== undefined && matchesLabelSelector(p.podSelector, pods[k]))).sort()
}
const ports = (rule: PolicyRule): string[] => (rule.ports ?? []).map((p) => `${p.protocol}/${p.port}`).sort()

t.test('NetworkPolicy: the functions\' pods take the controller and routers only and reach the code port and DNS only', async (t) => {
  const objs = await render()
  const pods = podsOf(objs)
  const runtime = one(objs, 'NetworkPolicy', 'kindling-runtime')
  t.same(selects(runtime, pods), ['bare', 'egress', 'pool'], 'it selects every runtime pod of this platform (pool and bare), nothing else')
  t.same(runtime.spec.policyTypes, ['Ingress', 'Egress'], 'both directions, so an empty side is a deny')
  t.equal(runtime.spec.ingress.length, 1)
  t.same(admits(runtime.spec.ingress[0], pods), ['controller', 'router'], 'ingress only from the controller and the routers')
  t.same(ports(runtime.spec.ingress[0]), [`TCP/${RUNTIME_PORT}`], 'on the runtime port')
  t.equal(runtime.spec.egress.length, 2)
  t.same(admits(runtime.spec.egress[0], pods), ['controller'], 'egress to the controller')
  t.same(ports(runtime.spec.egress[0]), ['TCP/8083'], 'on its code port only')
  t.same(admits(runtime.spec.egress[1], pods), ['*'], 'and DNS anywhere')
  t.same(ports(runtime.spec.egress[1]), ['TCP/53', 'UDP/53'], 'on port 53 only')

  const egress = one(objs, 'NetworkPolicy', 'kindling-runtime-egress')
  t.same(selects(egress, pods), ['egress'], 'the second policy selects the `network: egress` pods only')
  t.same(egress.spec.policyTypes, ['Egress'])
  t.same(egress.spec.egress, [{}], 'and lets them out anywhere')
  t.notOk('ingress' in egress.spec, 'it opens no ingress')

  const byPolicy = (name: string): Obj => one(objs, 'NetworkPolicy', `kindling-${name}`)
  t.same(selects(byPolicy('controller'), pods), ['controller'])
  const ctrl = byPolicy('controller').spec.ingress as PolicyRule[]
  t.same(ctrl.map((r) => [ports(r), admits(r, pods)]), [[['TCP/8080'], ['*']], [['TCP/8081'], ['router']], [['TCP/8083'], ['bare', 'egress', 'pool']]], 'controller: the API from anywhere, the executor from routers, code to runtime pods')
  t.same(selects(byPolicy('router'), pods), ['router'])
  t.same((byPolicy('router').spec.ingress as PolicyRule[]).map((r) => [ports(r), admits(r, pods)]), [[['TCP/8080'], ['*']]], 'router: the function URLs from anywhere')
  t.same(selects(byPolicy('agent'), pods), ['agent'])
  t.same((byPolicy('agent').spec.ingress as PolicyRule[]).map((r) => [ports(r), admits(r, pods)]), [[['TCP/8082'], ['controller']]], 'agent: the controller only')
  t.same(selects(byPolicy('redis'), pods), ['redis'])
  t.same((byPolicy('redis').spec.ingress as PolicyRule[]).map((r) => [ports(r), admits(r, pods)]), [[['TCP/6379'], ['controller']]], 'redis: the controller only (a cluster router uses no store)')
  for (const name of ['controller', 'router', 'agent', 'redis']) t.same(byPolicy(name).spec.policyTypes, ['Ingress'], `${name}: an ingress fence`)
  t.same(objs.filter((o) => o.kind === 'NetworkPolicy').length, 6, 'six policies')
  const off = await render({ set: ['networkPolicy.enabled=false'] })
  t.same(off.filter((o) => o.kind === 'NetworkPolicy'), [], 'networkPolicy.enabled=false renders none')
})

t.test('security: non-root, read-only root, no privilege escalation, no capability, seccomp RuntimeDefault; the agent uid 0', async (t) => {
  for (const opts of [{}, { files: [CUSTOM] }]) {
    const w = workloads(await render(opts))
    for (const [c, d] of w) {
      const spec = d.spec.template.spec
      t.equal(spec.securityContext.seccompProfile.type, 'RuntimeDefault', `${c}: the pod's seccomp`)
      t.notOk(spec.hostNetwork, `${c}: not on the host network`)
      for (const k of spec.containers) {
        const s = k.securityContext
        t.equal(s.allowPrivilegeEscalation, false, `${c}/${k.name}: no privilege escalation`)
        t.equal(s.readOnlyRootFilesystem, true, `${c}/${k.name}: read-only root`)
        t.same(s.capabilities, { drop: ['ALL'] }, `${c}/${k.name}: every capability dropped, none added`)
        t.equal(s.seccompProfile.type, 'RuntimeDefault', `${c}/${k.name}: seccomp RuntimeDefault`)
        t.notOk(s.privileged, `${c}/${k.name}: not privileged`)
        if (c === 'agent') {
          t.equal(s.runAsUser, 0, 'agent: uid 0 (it writes cgroup files)')
          t.equal(s.runAsNonRoot, false)
        } else {
          t.equal(s.runAsNonRoot, true, `${c}/${k.name}: runAsNonRoot`)
          t.ok(s.runAsUser > 0, `${c}/${k.name}: uid ${s.runAsUser}`)
        }
      }
      if (c === 'controller' || c === 'router') {
        t.equal(spec.containers[0].securityContext.runAsUser, 65534, `${c}: uid 65534`)
        const mounts = Object.fromEntries(spec.containers[0].volumeMounts.map((m: { name: string; mountPath: string }) => [m.mountPath, m.name]))
        t.same(Object.keys(mounts).sort(), ['/tmp', '/var/lib/kindling'], `${c}: writes only its emptyDirs`)
        t.ok(spec.volumes.every((v: { emptyDir?: unknown }) => v.emptyDir !== undefined), `${c}: emptyDir volumes only`)
      }
    }
    const agent = w.get('agent')!.spec.template.spec
    t.equal(agent.hostPID, true, 'the agent sees the node\'s processes')
    t.same(agent.volumes.find((v: { name: string }) => v.name === 'cgroup').hostPath, { path: '/sys/fs/cgroup', type: 'Directory' })
    t.same(agent.containers[0].volumeMounts.find((m: { name: string }) => m.name === 'cgroup'), { name: 'cgroup', mountPath: '/sys/fs/cgroup' })
    t.same(agent.volumes.filter((v: { hostPath?: unknown }) => v.hostPath !== undefined).length, 1, 'and no other host path')
    const env = agent.containers[0].env as Array<{ name: string; valueFrom: Record<string, { fieldPath?: string; key?: string }> }>
    t.same(Object.fromEntries(env.map((e) => [e.name, e.valueFrom.fieldRef?.fieldPath ?? e.valueFrom.secretKeyRef?.key])), { KINDLING_AGENT_TOKEN: 'KINDLING_AGENT_TOKEN', KINDLING_NODE_NAME: 'spec.nodeName', KINDLING_POD_IP: 'status.podIP' })
    t.same(agent.containers[0].envFrom, [{ configMapRef: { name: 'kindling-config' } }], 'the agent gets the ConfigMap, not the Secret (no API token, no Redis URL)')
  }
})

t.test('the contract\'s workloads: args, ports, probes, Services, labels, replicas, rollout, disruption budgets', async (t) => {
  const objs = await render()
  const w = workloads(objs)
  const c = (n: string): Obj => w.get(n)!.spec.template.spec.containers[0]
  t.same(c('controller').args, ['up', '--role', 'controller'])
  t.same(c('router').args, ['up', '--role', 'router'])
  t.same(c('agent').args, ['agent'])
  t.equal(c('redis').image, 'redis:7')
  t.same(c('redis').args, ['--bind', '0.0.0.0', '--port', '6379', '--protected-mode', 'no', '--appendonly', 'yes', '--dir', '/data'], 'Redis: every pod address, its AOF on the /data emptyDir')
  t.same(w.get('redis')!.spec.template.spec.volumes, [{ name: 'data', emptyDir: {} }], 'an emptyDir, no PVC')
  const portsOf = (n: string): Record<string, number> => Object.fromEntries(c(n).ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]))
  t.same(portsOf('controller'), { http: 8080, executor: 8081, code: 8083 })
  t.same(portsOf('router'), { http: 8080 })
  t.same(portsOf('agent'), { agent: 8082 })
  t.same(portsOf('redis'), { redis: 6379 })
  const probe = (n: string, which: string): unknown => { const p = c(n)[which]; return p.httpGet ? `GET ${p.httpGet.path} :${p.httpGet.port}` : `tcp :${p.tcpSocket.port}` }
  t.same([probe('controller', 'livenessProbe'), probe('controller', 'readinessProbe')], ['GET /healthz :http', 'GET /readyz :http'])
  t.same([probe('router', 'livenessProbe'), probe('router', 'readinessProbe')], ['GET /healthz :http', 'GET /readyz :http'])
  t.same([probe('agent', 'livenessProbe'), probe('agent', 'readinessProbe')], ['GET /healthz :agent', 'GET /healthz :agent'])
  t.same([probe('redis', 'livenessProbe'), probe('redis', 'readinessProbe')], ['tcp :redis', 'tcp :redis'])
  for (const n of ['controller', 'router', 'agent', 'redis']) {
    t.ok(c(n).resources.requests.cpu && c(n).resources.requests.memory && c(n).resources.limits.cpu && c(n).resources.limits.memory, `${n}: requests and limits`)
  }
  t.same(c('controller').envFrom, [{ configMapRef: { name: 'kindling-config' } }, { secretRef: { name: 'kindling-secret' } }], 'controller: the ConfigMap and the Secret')
  t.same(c('router').envFrom, [{ configMapRef: { name: 'kindling-config' } }], 'router: the ConfigMap')
  t.same(c('router').env, [{ name: 'KINDLING_EXECUTOR_TOKEN', valueFrom: { secretKeyRef: { name: 'kindling-secret', key: 'KINDLING_EXECUTOR_TOKEN' } } }], 'and the executor bearer only: no API token, no Redis URL')

  const svc = (name: string): Obj => one(objs, 'Service', name)
  const svcPorts = (name: string): unknown => svc(name).spec.ports.map((p: { name: string; port: number; targetPort: string }) => `${p.name} ${p.port}→${p.targetPort}`)
  t.same(svcPorts('kindling-api'), ['http 80→http'])
  t.same(svcPorts('kindling-controller'), ['executor 8081→executor', 'code 8083→code'])
  t.same(svcPorts('kindling-router'), ['http 80→http'])
  t.same(svcPorts('kindling-redis'), ['redis 6379→redis'])
  const labelsOf = (n: string): Record<string, string> => w.get(n)!.spec.template.metadata.labels
  for (const [name, comp] of [['kindling-api', 'controller'], ['kindling-controller', 'controller'], ['kindling-router', 'router'], ['kindling-redis', 'redis']]) {
    t.ok(matchesLabelSelector({ matchLabels: svc(name!).spec.selector }, labelsOf(comp!)), `${name} selects the ${comp} pods`)
    for (const other of ['controller', 'router', 'agent', 'redis'].filter((x) => x !== comp)) t.notOk(matchesLabelSelector({ matchLabels: svc(name!).spec.selector }, labelsOf(other)), `${name} does not select ${other}`)
  }

  for (const o of objs) {
    const l = o.metadata.labels ?? {}
    t.ok(l['app.kubernetes.io/name'] === 'kindling' && l['app.kubernetes.io/instance'] === 'kindling' && l['app.kubernetes.io/managed-by'] === 'Helm' && /^kindling-/.test(l['helm.sh/chart'] ?? '') &&
      ['controller', 'router', 'agent', 'redis'].includes(l['app.kubernetes.io/component'] ?? ''), `${o.kind}/${o.metadata.name}: the contract's labels`)
  }

  const ctrl = one(objs, 'Deployment', 'kindling-controller').spec
  t.equal(ctrl.replicas, 2)
  t.equal(one(objs, 'Deployment', 'kindling-router').spec.replicas, 2)
  t.equal((await render({ files: [CUSTOM] })).find((o) => o.kind === 'Deployment' && o.metadata.name === 'kindling-router')!.spec.replicas, 3)
  // Only the leader is Ready: a rollout can replace it only if maxUnavailable covers every replica.
  t.same(ctrl.strategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: '100%' } }, 'the controller\'s rollout may take the leader')
  t.same(one(objs, 'Deployment', 'kindling-router').spec.strategy.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 }, 'routers roll one at a time, never below their count')
  t.equal(one(objs, 'Deployment', 'kindling-redis').spec.strategy.type, 'Recreate', 'one Redis at a time')

  const pdb = (name: string): Obj => one(objs, 'PodDisruptionBudget', name)
  t.same(pdb('kindling-controller').spec.minAvailable, 1)
  t.equal(pdb('kindling-controller').spec.unhealthyPodEvictionPolicy, 'AlwaysAllow', 'a drain may evict the not-Ready standby')
  t.same(pdb('kindling-router').spec.maxUnavailable, 1)
  t.ok(matchesLabelSelector(pdb('kindling-controller').spec.selector, labelsOf('controller')) && !matchesLabelSelector(pdb('kindling-controller').spec.selector, labelsOf('router')))
  t.ok(matchesLabelSelector(pdb('kindling-router').spec.selector, labelsOf('router')) && !matchesLabelSelector(pdb('kindling-router').spec.selector, labelsOf('controller')))
  t.equal(objs.filter((o) => o.kind === 'PodDisruptionBudget').length, 2, 'no budget for Redis')
  t.same(objs.filter((o) => o.kind === 'Namespace'), [], 'no Namespace: helm --create-namespace makes it')

  const external = await render({ files: [CUSTOM] })
  t.same(external.filter((o) => o.metadata.labels?.['app.kubernetes.io/component'] === 'redis'), [], 'an external Redis: no Redis objects at all')
})
