import { randomBytes } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { pino } from 'pino'
import { startCluster } from '../kube-sim/cluster.js'

export interface KubeSimStartOptions {
  nodes: { management: number; runtime: number; quarantine: number }
  port?: number | undefined
  host?: string | undefined
  /** @default ./.kindling-sim */
  dataDir?: string | undefined
  /** @default <dataDir>/kubeconfig */
  kubeconfig?: string | undefined
  nodeCpu?: number | undefined
  nodeMemoryMi?: number | undefined
  /** KINDLING_LOG_LEVEL (default `info`). */
  env?: Record<string, string | undefined>
}

export interface RunningKubeSim {
  url: string
  nodes: string[]
  kubeconfigPath: string
  stop(): Promise<void>
}

/**
 * `kindling kube-sim`: the cluster stand-in (kube-sim/) as one process, with a fresh bearer token and its
 * kubeconfig written for kubectl and for `kindling up --backend kubernetes --kubeconfig F`.
 */
export async function startKubeSim(opts: KubeSimStartOptions): Promise<RunningKubeSim> {
  const dataDir = resolve(opts.dataDir ?? '.kindling-sim')
  await mkdir(dataDir, { recursive: true, mode: 0o755 })
  const log = pino({ level: opts.env?.['KINDLING_LOG_LEVEL'] ?? 'info' }).child({ component: 'kube-sim' })
  const cluster = await startCluster({
    dataDir,
    nodes: opts.nodes,
    nodeCpu: opts.nodeCpu,
    nodeMemoryMi: opts.nodeMemoryMi,
    token: randomBytes(24).toString('base64url'),
    host: opts.host ?? '127.0.0.1',
    port: opts.port ?? 0,
    log,
  })
  const kubeconfigPath = resolve(opts.kubeconfig ?? join(dataDir, 'kubeconfig'))
  await cluster.writeKubeconfig(kubeconfigPath)
  const nodeType = cluster.store.type('', 'v1', 'nodes')!
  const nodes = cluster.store.list(nodeType).items.map((n) => n.metadata.name!)
  return { url: cluster.url, nodes, kubeconfigPath, stop: () => cluster.stop() }
}
