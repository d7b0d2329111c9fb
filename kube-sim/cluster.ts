/**
 * The cluster stand-in's entry point (issue 10): one MemoryStore served by the HTTP API, the controllers
 * (Deployment, ReplicaSet, DaemonSet, pod GC), the scheduler, and one kubelet per node. Nodes are named
 * `kindling-<role>-<i>` and labelled `kindling.io/node-role=<role>`, `node-role.kubernetes.io/<role>=""` and
 * `kubernetes.io/hostname`; runtime and quarantine nodes carry the taint `kindling.io/node-role=<role>:NoSchedule`.
 * Containers run as local processes in cgroups under `kube-sim/<clusterId>/<node>/<pod uid>/<container>` (when
 * the host lets us create groups; without, they run unlimited and OOMKilled is never reported). Services (issue 13)
 * get cluster IPs in a loopback subnet of their own, Endpoints (controllers/endpoints.ts), a kube-proxy stand-in
 * (proxy.ts) and names in every pod's hosts file (kubelet/services.ts).
 */
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Logger } from 'pino'
import { detectCgroups, type CgroupDriver } from '../cgroups/index.js'
import { startApiServer, type ApiServer } from './api-server.js'
import { DaemonSetController } from './controllers/daemonset.js'
import { DeploymentController } from './controllers/deployment.js'
import { EndpointsController } from './controllers/endpoints.js'
import { EventTtl } from './controllers/event-ttl.js'
import { PodGarbageCollector } from './controllers/podgc.js'
import { ReplicaSetController } from './controllers/replicaset.js'
import { kindsOf, type Kinds } from './controllers/shared.js'
import { defaultImages, type ImageMap } from './kubelet/images.js'
import { Kubelet } from './kubelet/kubelet.js'
import { reserveNodeSubnet, type NodeSubnet } from './kubelet/subnet.js'
import { kubeconfigYaml } from './kubeconfig.js'
import { ServiceProxy } from './proxy.js'
import { Scheduler } from './scheduler.js'
import type { Taint } from './scheduling/node-fit.js'
import { MemoryStore } from './store.js'
import { ApiError, type ObjectStore } from './types.js'

export const NODE_ROLES = ['management', 'runtime', 'quarantine'] as const
export type NodeRole = (typeof NODE_ROLES)[number]

export interface ClusterOptions {
  /** Where nodes keep their pods' directories (emptyDir volumes, working directories). */
  dataDir: string
  /** How many nodes of each role. */
  nodes: Partial<Record<NodeRole, number>>
  /** CPU cores each node offers. @default 4 */
  nodeCpu?: number
  /** Memory each node offers (MiB). @default 8192 */
  nodeMemoryMi?: number
  /** Image → command, over the defaults (`kindling/runtime-node`, `kindling/platform`). */
  images?: ImageMap
  /** The API's bearer token. @default random */
  token?: string
  /** @default '127.0.0.1' */
  host?: string
  /** @default 0 (any free port) */
  port?: number
  /** The kubelets' restart back-off base (ms; capped at 10×). @default 1000 */
  backoffBaseMs?: number
  /**
   * Tasks a container may run (a real kubelet's podPidsLimit, `--pod-max-pids`): Kubernetes has no per-pod field for it,
   * so on the kubernetes backend the runtime nodes' kubelets hold a fork bomb. @default 64 (KINDLING_PIDS_LIMIT's default)
   */
  podPidsLimit?: number
  log?: Logger
  /** The cgroup driver; `null` runs containers without cgroups. @default detectCgroups() */
  cgroups?: CgroupDriver | null
  /** The repository the default images run from. @default this checkout */
  repoRoot?: string
}

/** The cluster's API server (`pause()`/`resume()`: an outage as its clients see it). */
export type ClusterApi = ApiServer

export interface Cluster {
  store: ObjectStore
  api: ClusterApi
  url: string
  token: string
  /** This stand-in's id (its cgroup parent is `kube-sim/<id>`). */
  id: string
  kubeconfig(): string
  writeKubeconfig(path: string): Promise<void>
  addNode(role: NodeRole): Promise<string>
  /** The machine vanishes: its kubelet kills every container at once, then the Node object is deleted. */
  removeNode(name: string): Promise<void>
  /** The kubelet of a node (tests: its container pids). */
  kubelet(name: string): Kubelet | undefined
  stop(): Promise<void>
}

const CGROUP_ROOT = 'kube-sim'

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  // The Services' cluster IPs: a loopback subnet of their own, held host-wide like a node's (kubelet/subnet.ts).
  const serviceSubnet = await reserveNodeSubnet()
  let nextServiceIP = 1
  const store = new MemoryStore({
    allocateServiceIP: () => {
      // 127.S.0.1 is the reservation itself; .0.y and x.255 are skipped as a network's edges would be.
      const k = nextServiceIP++
      if (k >= 254 * 254) throw new ApiError(500, 'InternalError', 'the service subnet is exhausted')
      return `127.${serviceSubnet.octet}.${1 + Math.floor(k / 254)}.${1 + (k % 254)}`
    },
  })
  const kinds = kindsOf(store)
  const id = randomBytes(4).toString('hex')
  const token = opts.token ?? randomBytes(24).toString('hex')
  const log = opts.log
  // From kube-sim/cluster.ts one level up; from dist/kube-sim/cluster.js (the built CLI) two.
  const here = dirname(fileURLToPath(import.meta.url))
  const repoRoot = opts.repoRoot ?? resolve(here, basename(dirname(here)) === 'dist' ? '../..' : '..')
  const images: ImageMap = { ...defaultImages(repoRoot), ...(opts.images ?? {}) }
  const cgroups = opts.cgroups === null ? undefined : opts.cgroups ?? await detectCgroups()
  if (cgroups === undefined) log?.warn('kube-sim: no writable cgroup hierarchy; containers run without limits')
  const cgroupParent = `${CGROUP_ROOT}/${id}`
  if (cgroups !== undefined) await cgroups.ensureParent(cgroupParent)
  await mkdir(opts.dataDir, { recursive: true })

  const loops = [
    new ReplicaSetController({ store, kinds, log }), new DeploymentController({ store, kinds, log }),
    new DaemonSetController({ store, kinds, log }), new PodGarbageCollector({ store, kinds, log }), new Scheduler({ store, kinds, log }),
    new EventTtl({ store, kinds, log }), new EndpointsController({ store, kinds, log }),
  ]
  for (const l of loops) l.start()
  const proxy = new ServiceProxy({ store, kinds, log: log?.child({ component: 'kube-proxy' }) })
  proxy.start()

  const kubelets = new Map<string, Kubelet>()
  const api = await startApiServer({
    store, host: opts.host ?? '127.0.0.1', port: opts.port ?? 0, token,
    logs: (namespace, pod, container) => {
      const p = store.get(kinds.pod, namespace, pod)
      const k = typeof p?.spec?.nodeName === 'string' ? kubelets.get(p.spec.nodeName) : undefined
      return k?.logs(namespace, pod, container)?.read() ?? ''
    },
  })
  const kubeconfigPath = `${opts.dataDir}/kubeconfig`
  const kubeconfig = (): string => kubeconfigYaml({ server: api.url, token, ca: api.ca, name: 'kindling-sim' })
  await writeFile(kubeconfigPath, kubeconfig(), { mode: 0o600 })

  const subnets = new Map<string, NodeSubnet>()
  const addNode = async (role: NodeRole): Promise<string> => {
    if (!NODE_ROLES.includes(role)) throw new Error(`unknown node role "${String(role)}" (${NODE_ROLES.join(', ')})`)
    let i = 0
    while (kubelets.has(`kindling-${role}-${i}`) || store.get(kinds.node, undefined, `kindling-${role}-${i}`) !== undefined) i++
    const name = `kindling-${role}-${i}`
    const subnet = await reserveNodeSubnet()
    subnets.set(name, subnet)
    const kubelet = new Kubelet({
      store, kinds, nodeName: name, subnet: subnet.octet, labels: nodeLabels(name, role), taints: nodeTaints(role),
      dataDir: opts.dataDir, images, cgroups, cgroupParent, cpu: opts.nodeCpu ?? 4, memoryMi: opts.nodeMemoryMi ?? 8192,
      backoffBaseMs: opts.backoffBaseMs ?? 1000, podPidsLimit: opts.podPidsLimit ?? 64, log: log?.child({ node: name }),
      baseEnv: () => ({ KUBERNETES_SERVICE_HOST: new URL(api.url).hostname, KUBERNETES_SERVICE_PORT: String(api.port) }),
      kubeconfig,
    })
    kubelets.set(name, kubelet)
    await kubelet.start()
    return name
  }

  let stopped: Promise<void> | undefined
  const cluster: Cluster = {
    store, api, url: api.url, token, id,
    kubeconfig,
    writeKubeconfig: (path) => writeFile(path, kubeconfig(), { mode: 0o600 }),
    addNode,
    removeNode: async (name) => {
      const k = kubelets.get(name)
      if (k === undefined) throw new Error(`no node ${name}`)
      kubelets.delete(name)
      await k.vanish()
      deleteNode(store, kinds, name)
      await subnets.get(name)?.release()
      subnets.delete(name)
    },
    kubelet: (name) => kubelets.get(name),
    stop: () => (stopped ??= (async () => {
      for (const l of loops) l.stop()
      await proxy.stop()
      await Promise.all([...kubelets.values()].map((k) => k.stop()))
      kubelets.clear()
      await Promise.all([...subnets.values()].map((s) => s.release()))
      subnets.clear()
      await serviceSubnet.release()
      await api.close()
      if (cgroups !== undefined) await cgroups.destroy(cgroups.refFor(CGROUP_ROOT, id)).catch((err: unknown) => log?.warn({ err }, 'cannot remove the stand-in\'s cgroup'))
    })()),
  }
  try {
    for (const role of NODE_ROLES) for (let i = 0; i < (opts.nodes[role] ?? 0); i++) await addNode(role)
  } catch (err) {
    await cluster.stop()
    throw err
  }
  return cluster
}

function nodeLabels(name: string, role: NodeRole): Record<string, string> {
  return {
    'kindling.io/node-role': role, [`node-role.kubernetes.io/${role}`]: '', 'kubernetes.io/hostname': name,
    'kubernetes.io/os': 'linux', 'kubernetes.io/arch': process.arch === 'x64' ? 'amd64' : process.arch,
  }
}

function nodeTaints(role: NodeRole): Taint[] {
  return role === 'management' ? [] : [{ key: 'kindling.io/node-role', value: role, effect: 'NoSchedule' }]
}

function deleteNode(store: ObjectStore, kinds: Kinds, name: string): void {
  try {
    store.delete(kinds.node, undefined, name)
  } catch (err) {
    if ((err as { code?: unknown }).code !== 404) throw err
  }
}
