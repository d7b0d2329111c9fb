import { readFile } from 'node:fs/promises'
import t from 'tap'
import { parse } from 'yaml'
import { ConfigSchema, loadConfig } from '../../common/config.js'
import { barePod, poolDeployment } from '../../backends/kubernetes/pod-spec.js'
import { effectiveTaints, matchesNodeSelectorAndAffinity, untoleratedTaint } from '../../kube-sim/scheduling/node-fit.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { CUSTOM, one, render, workloads, type Obj } from './chart.js'

// Issue 13, where things run: the rendered pod templates, and the pods the controller will create from the rendered
// configuration (backends/kubernetes/pod-spec.ts), placed on nodes labelled and tainted as the values say, with the
// stand-in scheduler's own filters (taints vs tolerations, nodeSelector, required node affinity). The control plane
// lands on management nodes only, the agent on runtime and quarantine nodes only, the functions on theirs — so no
// user pod lands on a management node. And every key the chart configures is one common/config.ts reads.

interface Role { labels: Record<string, string | null>; taint: { key: string; value?: string; effect: string } | null }
interface Nodes { management: Role; runtime: Role; quarantine: Role }

/** Two nodes of each role, labelled and tainted as the values say, plus an unlabelled, untainted node. */
function nodesOf(values: Nodes): KubeObject[] {
  const out: KubeObject[] = []
  for (const role of ['management', 'runtime', 'quarantine'] as const) {
    const r = values[role]
    const labels = Object.fromEntries(Object.entries(r.labels).filter((e): e is [string, string] => e[1] !== null))
    for (const i of [0, 1]) {
      out.push({
        apiVersion: 'v1', kind: 'Node',
        metadata: { name: `${role}-${i}`, labels: { ...labels, 'kubernetes.io/hostname': `${role}-${i}` } },
        spec: r.taint === null ? {} : { taints: [r.taint] },
        status: { conditions: [{ type: 'Ready', status: 'True' }] },
      })
    }
  }
  out.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'other-0', labels: { 'kubernetes.io/hostname': 'other-0' } }, spec: {}, status: { conditions: [{ type: 'Ready', status: 'True' }] } })
  return out
}

/** The roles of the nodes a pod spec may run on (sorted, each once). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function placed(spec: any, nodes: readonly KubeObject[]): string[] {
  const fit = nodes.filter((n) => untoleratedTaint(spec, effectiveTaints(n)) === undefined && matchesNodeSelectorAndAffinity(spec, n))
  return [...new Set(fit.map((n) => n.metadata.name!.replace(/-\d+$/, '')))].sort()
}

async function valuesOf(file?: string): Promise<Nodes> {
  const defaults = parse(await readFile('charts/kindling/values.yaml', 'utf8')) as { nodes: Nodes }
  if (file === undefined) return defaults.nodes
  const over = parse(await readFile(file, 'utf8')) as { nodes: Nodes }
  const merged = structuredClone(defaults.nodes)
  for (const role of ['management', 'runtime', 'quarantine'] as const) {
    merged[role].labels = { ...merged[role].labels, ...over.nodes[role].labels }
    if ('taint' in over.nodes[role]) merged[role].taint = over.nodes[role].taint
  }
  return merged
}

/** The ConfigMap's and the Secret's data together, decoded: the environment of the controller. */
function config(objs: readonly Obj[], fullname = 'kindling'): Record<string, string> {
  const cm = one(objs, 'ConfigMap', `${fullname}-config`)
  const secret = one(objs, 'Secret', `${fullname}-secret`)
  const data: Record<string, string> = { ...cm.data }
  for (const [k, v] of Object.entries(secret.data as Record<string, string>)) data[k] = Buffer.from(v, 'base64').toString('utf8')
  return data
}

/** The pods the controller creates from this configuration: a pool pod (runtime nodes) and a quarantined bare pod. */
function runtimePods(cfg: Record<string, string>): { pool: Obj; quarantined: Obj } {
  const role = (s: string): { key: string; value: string } => ({ key: s.slice(0, s.indexOf('=')), value: s.slice(s.indexOf('=') + 1) })
  const shape = { platformId: cfg.KINDLING_PLATFORM_ID!, runtime: 'node', image: cfg.KINDLING_KUBE_RUNTIME_IMAGE!, memoryMb: 128, cpu: 0.5, tmpMb: 64, codeMb: 64 }
  const pool = poolDeployment('kindling-kindling-node', cfg.KINDLING_KUBE_NAMESPACE!, 2, { ...shape, role: role(cfg.KINDLING_KUBE_RUNTIME_NODES!) }) as unknown as Obj
  const quarantined = barePod('q-1', cfg.KINDLING_KUBE_NAMESPACE!, 'i-1', 'fn:hog', 1, { ...shape, role: role(cfg.KINDLING_KUBE_QUARANTINE_NODES!) }) as unknown as Obj
  return { pool, quarantined }
}

for (const [what, file] of [['the defaults', undefined], ['values-custom.yaml (own labels, a tainted management pool)', CUSTOM]] as const) {
  t.test(`placement with ${what}`, async (t) => {
    const values = await valuesOf(file)
    const nodes = nodesOf(values)
    const objs = await render(file === undefined ? {} : { files: [file] })
    const w = workloads(objs)
    const spec = (c: string): Obj => w.get(c)!.spec.template.spec
    const management = Object.fromEntries(Object.entries(values.management.labels).filter((e) => e[1] !== null))

    t.same(placed(spec('controller'), nodes), ['management'], 'the controller runs on management nodes only')
    t.same(spec('controller').nodeSelector, management, 'its nodeSelector is the management labels')
    t.same(placed(spec('router'), nodes), ['management'], 'the routers too (by default)')
    t.same(spec('router').nodeSelector, management)
    if (w.has('redis')) t.same(placed(spec('redis'), nodes), ['management'], 'and Redis')
    for (const c of ['controller', 'router', 'redis']) {
      if (!w.has(c)) continue
      const tolerated = (spec(c).tolerations ?? []) as Array<{ key: string; value: string }>
      for (const role of [values.runtime, values.quarantine]) {
        t.notOk(tolerated.some((x) => x.key === role.taint!.key && x.value === role.taint!.value), `${c} does not tolerate ${role.taint!.key}=${role.taint!.value}`)
      }
    }

    t.same(placed(spec('agent'), nodes), ['quarantine', 'runtime'], 'the agent runs on every runtime and quarantine node, nowhere else')
    const agentTolerations = spec('agent').tolerations as unknown[]
    t.same(agentTolerations, [values.runtime.taint, values.quarantine.taint].map((x) => ({ key: x!.key, operator: 'Equal', value: x!.value, effect: x!.effect })), 'it tolerates exactly the runtime and quarantine taints')
    const terms = spec('agent').affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms as Array<{ matchExpressions: Array<{ key: string; operator: string; values: string[] }> }>
    const selected = terms.flatMap((x) => x.matchExpressions.flatMap((e) => e.values.map((v) => `${e.key}=${v}`))).sort()
    const roleLabel = (r: Role): string => Object.entries(r.labels).filter((e) => e[1] !== null).map(([k, v]) => `${k}=${v}`).join(',')
    t.same(selected, [roleLabel(values.runtime), roleLabel(values.quarantine)].sort(), 'its affinity selects exactly the two roles\' labels')
    t.ok(terms.every((x) => x.matchExpressions.every((e) => e.operator === 'In')))

    const cfg = config(objs)
    t.equal(cfg.KINDLING_KUBE_RUNTIME_NODES, roleLabel(values.runtime), 'KINDLING_KUBE_RUNTIME_NODES is the runtime label')
    t.equal(cfg.KINDLING_KUBE_QUARANTINE_NODES, roleLabel(values.quarantine), 'KINDLING_KUBE_QUARANTINE_NODES is the quarantine label')
    const { pool, quarantined } = runtimePods(cfg)
    t.same(placed(pool.spec.template.spec, nodes), ['runtime'], 'the functions\' pool pods the controller will create land on runtime nodes only')
    t.same(placed(quarantined.spec, nodes), ['quarantine'], 'a quarantined function\'s pod on quarantine nodes only')
  })
}

t.test('a management taint is tolerated by the control plane only; a router nodeSelector of its own moves the routers', async (t) => {
  const values = await valuesOf(CUSTOM)
  const nodes = nodesOf(values)
  const w = workloads(await render({ files: [CUSTOM] }))
  t.same(w.get('agent')!.spec.template.spec.tolerations.filter((x: { key: string }) => x.key === 'dedicated'), [], 'the agent does not tolerate the management taint')
  t.same(placed(w.get('controller')!.spec.template.spec, nodes.map((n) => ({ ...n, spec: {} }))), ['management'], 'untainted, the nodeSelector alone keeps it there')
  const moved = workloads(await render({ set: ['router.nodeSelector.kindling\\.io/node-role=runtime', 'router.tolerations[0].key=kindling.io/node-role', 'router.tolerations[0].value=runtime', 'router.tolerations[0].effect=NoSchedule', 'router.tolerations[0].operator=Equal'] }))
  t.same(placed(moved.get('router')!.spec.template.spec, nodesOf(await valuesOf())), ['runtime'], 'routers on runtime nodes when the values say so')
  t.same(placed(moved.get('controller')!.spec.template.spec, nodesOf(await valuesOf())), ['management'], 'the controller stays')
})

t.test('every ConfigMap and Secret key (and env var) is a variable of common/config.ts, and their values load', async (t) => {
  const known = new Set(Object.keys(ConfigSchema.properties))
  for (const [what, opts] of [['the defaults', {}], ['values-custom.yaml', { files: [CUSTOM] }]] as const) {
    const objs = await render(opts)
    const cfg = config(objs)
    const envNames = [...workloads(objs).values()].flatMap((w) => (w.spec.template.spec.containers as Array<{ env?: Array<{ name: string }> }>).flatMap((c) => (c.env ?? []).map((e) => e.name)))
    const unknown = [...Object.keys(cfg), ...envNames].filter((k) => !known.has(k))
    t.same(unknown, [], `${what}: no key common/config.ts does not know`)
    t.ok(Object.keys(cfg).length >= 20, `${what}: ${Object.keys(cfg).length} keys read`)
    // The values pass the same schema `kindling up` checks its environment with.
    const loaded = loadConfig(cfg)
    t.equal(loaded.KINDLING_BACKEND, 'kubernetes')
    t.equal(loaded.KINDLING_STORE, 'redis')
    t.equal(loaded.KINDLING_PORT, 8080)
    t.equal(loaded.KINDLING_HOST, '0.0.0.0')
    t.equal(loaded.KINDLING_KUBE_CODE_LISTEN, '0.0.0.0:8083')
    t.equal(loaded.KINDLING_KUBE_CODE_HOST, 'kindling-controller.kindling.svc')
    t.equal(loaded.KINDLING_DATA_DIR, '/var/lib/kindling')
    t.equal(loaded.KINDLING_KUBE_NAMESPACE, 'kindling')
  }
  const custom = config(await render({ files: [CUSTOM] }))
  t.equal(custom.KINDLING_POOL_SIZE, '4', 'extra config reaches the ConfigMap')
  t.equal(custom.KINDLING_LOADGUARD_CPU_CEILING, '0.7')
  t.equal(custom.KINDLING_LOG_LEVEL, 'debug')
  t.equal(custom.KINDLING_API_TOKEN, 'a-token-set-by-the-operator-0123456789', 'the token set is the token')
  t.equal(custom.KINDLING_REDIS_URL, 'rediss://redis.example.com:6380/0', 'the external Redis')
  t.equal(custom.KINDLING_KUBE_RUNTIME_IMAGE, 'registry.example.com/kindling/runtime-node:0.1.0-rc1')
  const defaults = config(await render())
  t.equal(defaults.KINDLING_REDIS_URL, 'redis://kindling-redis.kindling.svc:6379', 'the chart\'s Redis')
  t.match(defaults.KINDLING_API_TOKEN, /^[A-Za-z0-9]{32}$/, 'a generated API token')
  t.match(defaults.KINDLING_AGENT_TOKEN, /^[A-Za-z0-9]{32}$/, 'a generated agent token')
  t.match(defaults.KINDLING_EXECUTOR_TOKEN, /^[A-Za-z0-9]{32}$/, 'a generated executor token')
  t.not(defaults.KINDLING_API_TOKEN, defaults.KINDLING_AGENT_TOKEN, 'each its own')
})

t.test('the contract\'s names: fullname, Services, the configuration each role reads', async (t) => {
  const objs = await render({ release: 'edge', namespace: 'platform', set: ['functionsNamespace=functions'] })
  const cfg = config(objs, 'edge-kindling')
  t.same(objs.filter((o) => o.kind === 'Service').map((o) => o.metadata.name).sort(), ['edge-kindling-api', 'edge-kindling-controller', 'edge-kindling-redis', 'edge-kindling-router'], 'a release without "kindling" in its name: <release>-kindling-*')
  t.equal(cfg.KINDLING_PLATFORM_ID, 'edge')
  t.equal(cfg.KINDLING_KUBE_NAMESPACE, 'functions')
  t.equal(cfg.KINDLING_LEADER_LEASE, 'edge-kindling-controller')
  t.equal(cfg.KINDLING_EXECUTOR_URL, 'http://edge-kindling-controller.platform.svc:8081')
  t.equal(cfg.KINDLING_KUBE_CODE_HOST, 'edge-kindling-controller.platform.svc')
  t.equal(cfg.KINDLING_AGENT_SELECTOR, 'app.kubernetes.io/instance=edge,app.kubernetes.io/component=agent')
  t.equal(cfg.KINDLING_REDIS_URL, 'redis://edge-kindling-redis.platform.svc:6379')
  t.equal(cfg.KINDLING_EXECUTOR_PORT, '8081')
  t.equal(cfg.KINDLING_AGENT_PORT, '8082')
  const mine = await render({ release: 'my-kindling' })
  t.ok(mine.some((o) => o.kind === 'Service' && o.metadata.name === 'my-kindling-api'), 'a release with "kindling" in its name is the fullname')
})
