import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CoreV1Api, KubeConfig, VersionApi } from '@kubernetes/client-node'
import { AgentClient } from '../backends/kubernetes/agents.js'
import type { Logger } from 'pino'
import { CodeServer } from '../backends/kubernetes/code-server.js'
import { KubernetesBackend } from '../backends/kubernetes/kubernetes.js'
import type { Config } from '../common/config.js'
import { KdlError } from '../common/errors.js'

export interface KubernetesPart {
  backend: KubernetesBackend
  /** Closed after the backend (the pool manager closes that): grants die with the platform. */
  codeServer: CodeServer
  /** The node agents (KINDLING_AGENT_SELECTOR set): the load guard's reader on this backend. Closed with the backend. */
  agents: AgentClient | undefined
}

/** `key=value` of a node role (KINDLING_KUBE_RUNTIME_NODES, KINDLING_KUBE_QUARANTINE_NODES). */
function nodeRole(value: string): { key: string; value: string } {
  const eq = value.indexOf('=')
  return { key: value.slice(0, eq), value: value.slice(eq + 1) }
}

/** KINDLING_KUBECONFIG, else client-node's default search ($KUBECONFIG, the in-cluster service account, ~/.kube/config). */
export function loadKubeConfig(config: Config): KubeConfig {
  const kubeConfig = new KubeConfig()
  try {
    if (config.KINDLING_KUBECONFIG !== undefined) kubeConfig.loadFromString(readFileSync(config.KINDLING_KUBECONFIG, 'utf8'))
    else kubeConfig.loadFromDefault()
  } catch (err) {
    throw new KdlError('KDL_ERR_BAD_REQUEST', `cannot read the kubeconfig ${config.KINDLING_KUBECONFIG ?? '(default)'}: ${(err as Error).message}`, { cause: err })
  }
  return kubeConfig
}

/**
 * The kubernetes backend (issue 10): a client of the cluster of KINDLING_KUBECONFIG (else client-node's default
 * search: $KUBECONFIG, the in-cluster service account, ~/.kube/config) and the code server its pods fetch their
 * function's code from. The API server is asked once here, so a wrong kubeconfig fails `kindling up` at once.
 */
export async function createKubernetesBackend(config: Config, platformId: string, runDir: string, codeRoot: string, version: string, log: Logger): Promise<KubernetesPart> {
  const kubeConfig = loadKubeConfig(config)
  const server = kubeConfig.getCurrentCluster()?.server
  if (server === undefined) {
    throw new KdlError('KDL_ERR_BAD_REQUEST', `the kubeconfig ${config.KINDLING_KUBECONFIG ?? '(default)'} has no current cluster (set KINDLING_KUBECONFIG, or run \`kindling kube-sim\` for a local stand-in)`)
  }
  let gitVersion: string
  try {
    gitVersion = (await kubeConfig.makeApiClient(VersionApi).getCode()).gitVersion
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `no Kubernetes API server answers at ${server}: ${(err as Error).message}`, { cause: err })
  }
  const codeServer = new CodeServer({
    secret: randomBytes(32),
    workDir: join(runDir, 'code-archives'),
    codeRoot,
    maxBytes: config.KINDLING_MAX_UNPACKED_BYTES,
    log: log.child({ component: 'code-server' }),
  })
  const colon = config.KINDLING_KUBE_CODE_LISTEN.lastIndexOf(':')
  const host = config.KINDLING_KUBE_CODE_LISTEN.slice(0, colon)
  const port = Number(config.KINDLING_KUBE_CODE_LISTEN.slice(colon + 1))
  const codeUrl = await codeServer.start({ host, port, ...(config.KINDLING_KUBE_CODE_HOST === undefined ? {} : { advertiseHost: config.KINDLING_KUBE_CODE_HOST }) })
  // Issue 13: the node agents sample and throttle the pods' cgroups for the load guard (the chart sets the selector).
  const agents = config.KINDLING_AGENT_SELECTOR === undefined ? undefined : new AgentClient({
    kubeConfig, core: kubeConfig.makeApiClient(CoreV1Api), namespace: config.KINDLING_KUBE_NAMESPACE, selector: config.KINDLING_AGENT_SELECTOR,
    port: config.KINDLING_AGENT_PORT, token: config.KINDLING_AGENT_TOKEN, log: log.child({ component: 'agents' }),
  })
  // The first list of the agent pods; one that fails is retried at the first sample (the guard skips until then).
  await agents?.start().catch((err: unknown) => log.warn({ err }, 'cannot list the node agent pods yet'))
  const backend = new KubernetesBackend({
    platformId,
    kubeConfig,
    namespace: config.KINDLING_KUBE_NAMESPACE,
    runtimeImage: config.KINDLING_KUBE_RUNTIME_IMAGE ?? `kindling/runtime-node:${version}`,
    runtimeNodes: nodeRole(config.KINDLING_KUBE_RUNTIME_NODES),
    quarantineNodes: nodeRole(config.KINDLING_KUBE_QUARANTINE_NODES),
    codeServer,
    // Pods fetch code from this origin only (KINDLING_CODE_ORIGIN): whoever else reaches a pool pod cannot make it download.
    codeOrigin: codeUrl,
    startTimeoutMs: config.KINDLING_START_TIMEOUT_MS,
    log: log.child({ component: 'backend', backend: 'kubernetes' }),
    agents,
  })
  log.info({ cluster: server, version: gitVersion, namespace: config.KINDLING_KUBE_NAMESPACE, codeUrl, agents: config.KINDLING_AGENT_SELECTOR ?? null }, 'kubernetes backend')
  return { backend, codeServer, agents }
}
