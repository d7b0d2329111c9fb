import type { V1Deployment, V1EnvVar, V1Pod, V1PodSpec } from '@kubernetes/client-node'
import { LABEL, POOL_ANNOTATION, poolKind } from './kube-common.js'

/** The runtime server's port in every pod (fixed name of issue 10). */
export const RUNTIME_PORT = 8888
/** Where the runtime unpacks the code it fetches (an emptyDir), and its scratch space. */
export const CODE_DIR = '/code'
const TMP_DIR = '/tmp'
/** The uid/gid of the runtime (nobody): the pods never run as root. */
const RUNTIME_UID = 65534

/** A node pool as the pods select it: the nodes' label (nodeSelector) and the taint they carry (toleration). */
export interface NodeRole {
  key: string
  value: string
}

/** Everything a runtime pod's spec depends on. */
export interface RuntimePodShape {
  platformId: string
  runtime: string
  image: string
  memoryMb: number
  cpu: number
  /** The nodes it may run on (their label and NoSchedule taint). */
  role: NodeRole
  /** The code server's origin (`http://host:port`): the runtime fetches code from there only (KINDLING_CODE_ORIGIN). */
  codeOrigin?: string | undefined
  /** Extra environment (a bare pod started for a known function; KINDLING_WARMUP). */
  env?: Record<string, string> | undefined
  /** Size bounds of the two emptyDirs, MiB. */
  tmpMb: number
  codeMb: number
  /** Pool pods restart in place (a Deployment's pods must); a bare pod never does (its end is the instance's end). */
  restartPolicy: 'Always' | 'Never'
}

/** Kubernetes quantities of an instance's limits: requests = limits (Guaranteed QoS), so the scheduler places what the limit allows. */
export function resourcesOf(memoryMb: number, cpu: number): { memory: string; cpu: string } {
  return { memory: `${Math.max(1, Math.round(memoryMb))}Mi`, cpu: `${Math.max(1, Math.round(cpu * 1000))}m` }
}

/**
 * The runtime pod: the runtime image on TCP 8888, ready once `GET /_/health` answers (probed every second, so a
 * pool fills fast), non-root with a read-only root, no capabilities, no privilege escalation, seccomp
 * RuntimeDefault; `/tmp` and `/code` are bounded emptyDirs; no service account token, no service links (the
 * function sees no cluster); placed on the role's nodes by nodeSelector and tolerating their taint.
 */
export function runtimePodSpec(shape: RuntimePodShape): V1PodSpec {
  const env: Record<string, string> = {
    ...shape.env,
    // The kubelet gives each pod its IP here (the stand-in rewrites 0.0.0.0 to it, a real one binds every address).
    KINDLING_LISTEN: `tcp:0.0.0.0:${RUNTIME_PORT}`,
    KINDLING_CODE_DIR: CODE_DIR,
    ...(shape.codeOrigin === undefined ? {} : { KINDLING_CODE_ORIGIN: shape.codeOrigin }),
    HOME: TMP_DIR,
    TMPDIR: TMP_DIR,
  }
  const res = resourcesOf(shape.memoryMb, shape.cpu)
  const envVars: V1EnvVar[] = Object.entries(env).map(([name, value]) => ({ name, value }))
  return {
    restartPolicy: shape.restartPolicy,
    automountServiceAccountToken: false,
    enableServiceLinks: false,
    terminationGracePeriodSeconds: 2,
    nodeSelector: { [shape.role.key]: shape.role.value },
    tolerations: [{ key: shape.role.key, operator: 'Equal', value: shape.role.value, effect: 'NoSchedule' }],
    securityContext: { runAsNonRoot: true, runAsUser: RUNTIME_UID, runAsGroup: RUNTIME_UID, seccompProfile: { type: 'RuntimeDefault' } },
    containers: [{
      name: 'runtime',
      image: shape.image,
      imagePullPolicy: 'IfNotPresent',
      env: envVars,
      ports: [{ name: 'runtime', containerPort: RUNTIME_PORT, protocol: 'TCP' }],
      readinessProbe: { httpGet: { path: '/_/health', port: RUNTIME_PORT }, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 },
      resources: { requests: { ...res }, limits: { ...res } },
      securityContext: {
        runAsNonRoot: true, runAsUser: RUNTIME_UID, runAsGroup: RUNTIME_UID,
        readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, privileged: false, capabilities: { drop: ['ALL'] },
      },
      volumeMounts: [{ name: 'tmp', mountPath: TMP_DIR }, { name: 'code', mountPath: CODE_DIR }],
    }],
    volumes: [
      { name: 'tmp', emptyDir: { sizeLimit: `${shape.tmpMb}Mi` } },
      { name: 'code', emptyDir: { sizeLimit: `${shape.codeMb}Mi` } },
    ],
  }
}

/** The selector of a runtime's pool: pool pods only (`managed=true`); a claimed pod leaves it by its relabelling. */
export function poolSelector(platformId: string, runtime: string): Record<string, string> {
  return { [LABEL.managed]: 'true', [LABEL.runtime]: runtime, [LABEL.platform]: platformId }
}

/** On every runtime pod (pool and bare): what the chart's NetworkPolicies select runtime pods by. */
export const MANAGED_BY = 'app.kubernetes.io/managed-by'

/** The Deployment of a runtime's generic pool: `kindling-<platformId>-<runtime>`, `size` replicas of the pool pod (KINDLING_WARMUP=1). */
export function poolDeployment(name: string, namespace: string, size: number, shape: Omit<RuntimePodShape, 'restartPolicy' | 'env'>): V1Deployment {
  const selector = poolSelector(shape.platformId, shape.runtime)
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {
      name, namespace,
      labels: { [LABEL.platform]: shape.platformId, [LABEL.runtime]: shape.runtime, 'app.kubernetes.io/managed-by': 'kindling' },
    },
    spec: {
      replicas: size,
      revisionHistoryLimit: 2,
      selector: { matchLabels: selector },
      template: {
        metadata: { labels: { ...selector, [LABEL.pool]: 'generic', [MANAGED_BY]: 'kindling' }, annotations: { [POOL_ANNOTATION]: `generic:${shape.runtime}` } },
        // A pool pod waits for its claim: its runtime warms its request path meanwhile (PROTOCOL §4.5).
        spec: runtimePodSpec({ ...shape, restartPolicy: 'Always', env: { KINDLING_WARMUP: '1' } }),
      },
    },
  }
}

/** A pod of one instance, owned by nobody: a start that no pool pod fits (other limits, egress, quarantine), or an empty pool. */
export function barePod(name: string, namespace: string, instance: string, pool: string, version: number | undefined, shape: Omit<RuntimePodShape, 'restartPolicy'>, network: 'none' | 'egress' = 'none'): V1Pod {
  const labels: Record<string, string> = { [LABEL.runtime]: shape.runtime, [LABEL.platform]: shape.platformId, [MANAGED_BY]: 'kindling', ...claimLabels(instance, pool, version) }
  // Issue 13: the chart's NetworkPolicy lets only pods labelled so reach out (every other runtime pod has no egress).
  if (network === 'egress') labels[LABEL.network] = 'egress'
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels, annotations: { [POOL_ANNOTATION]: pool } },
    spec: runtimePodSpec({ ...shape, restartPolicy: 'Never' }),
  }
}

/** The labels a claim puts on a pool pod: out of its Deployment's selector, named for its instance and function. */
export function claimLabels(instance: string, pool: string, version?: number): Record<string, string> {
  const labels: Record<string, string> = { [LABEL.managed]: 'false', [LABEL.instance]: instance, [LABEL.pool]: poolKind(pool) }
  if (pool.startsWith('fn:')) labels[LABEL.fn] = pool.slice(3)
  if (version !== undefined) labels[LABEL.version] = String(version)
  return labels
}
