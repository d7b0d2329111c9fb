/**
 * A container's environment and argv as the kubelet builds them (issue 10): `envFrom` (ConfigMaps and Secrets,
 * with prefixes), then `env` in order — `value` with `$(VAR)` expansion, `valueFrom` fieldRef (metadata.name,
 * namespace, uid, labels['k'], annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP(s),
 * status.hostIP(s)), resourceFieldRef, configMapKeyRef, secretKeyRef. Then the stand-in's rewrites (the brief):
 * `0.0.0.0` becomes the pod's IP (every pod has its own loopback address), a value starting with a volume
 * mount's path starts with the mount's host directory instead (containers share the host's filesystem),
 * `TMPDIR` is the `/tmp` mount's directory, `KINDLING_CODE_DIR` the `/code` mount's. The same rewrites apply to
 * args and the working directory.
 */
import type { KubeObject } from '../types.js'
import { bytesOf, cpuMilli } from '../scheduling/quantity.js'

/** A mount as the container sees it (`mountPath`) and where it is on the host. */
export interface HostMount {
  mountPath: string
  hostPath: string
}

export interface EnvSources {
  configMap(namespace: string, name: string): KubeObject | undefined
  secret(namespace: string, name: string): KubeObject | undefined
}

/** A missing ConfigMap, Secret or key that is not optional: the container waits in CreateContainerConfigError. */
export class ContainerConfigError extends Error {
  override name = 'ContainerConfigError'
}

export interface EnvContext {
  pod: KubeObject
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  container: any
  podIP: string
  hostIP: string
  mounts: readonly HostMount[]
  sources: EnvSources
  /** Below everything the pod says: PATH, HOSTNAME, the image's ENV, the API server's service variables. */
  base: Record<string, string>
}

export function buildEnv(ctx: EnvContext): Record<string, string> {
  const { pod, container, sources } = ctx
  const ns = String(pod.metadata.namespace)
  const env: Record<string, string> = { ...ctx.base }
  for (const from of (container.envFrom ?? []) as Array<{ prefix?: string; configMapRef?: { name: string; optional?: boolean }; secretRef?: { name: string; optional?: boolean } }>) {
    const ref = from.configMapRef ?? from.secretRef
    if (ref === undefined) continue
    const isSecret = from.secretRef !== undefined
    const obj = isSecret ? sources.secret(ns, ref.name) : sources.configMap(ns, ref.name)
    if (obj === undefined) {
      if (ref.optional === true) continue
      throw new ContainerConfigError(`${isSecret ? 'secret' : 'configmap'} "${ref.name}" not found`)
    }
    for (const [k, v] of Object.entries(dataOf(obj, isSecret))) env[`${from.prefix ?? ''}${k}`] = v
  }
  for (const e of (container.env ?? []) as Array<{ name: string; value?: string; valueFrom?: Record<string, any> }>) { // eslint-disable-line @typescript-eslint/no-explicit-any
    if (e.valueFrom === undefined) {
      env[e.name] = expand(e.value ?? '', env)
      continue
    }
    const v = valueFrom(e.valueFrom, ctx, ns)
    if (v !== undefined) env[e.name] = v
  }
  // The base (PATH, the image's ENV) holds host values: only what the pod's spec set is rewritten.
  for (const [k, v] of Object.entries(env)) if (ctx.base[k] !== v) env[k] = rewrite(v, ctx.podIP, ctx.mounts)
  const tmp = ctx.mounts.find((m) => m.mountPath === '/tmp')
  if (tmp !== undefined) env.TMPDIR = tmp.hostPath
  const code = ctx.mounts.find((m) => m.mountPath === '/code')
  if (code !== undefined) env.KINDLING_CODE_DIR = code.hostPath
  return env
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function valueFrom(from: Record<string, any>, ctx: EnvContext, ns: string): string | undefined {
  if (from.fieldRef !== undefined) return fieldValue(String(from.fieldRef.fieldPath), ctx)
  if (from.resourceFieldRef !== undefined) return resourceValue(from.resourceFieldRef, ctx.container)
  const ref = from.configMapKeyRef ?? from.secretKeyRef
  if (ref === undefined) return undefined
  const isSecret = from.secretKeyRef !== undefined
  const obj = isSecret ? ctx.sources.secret(ns, ref.name) : ctx.sources.configMap(ns, ref.name)
  const what = isSecret ? 'Secret' : 'ConfigMap'
  if (obj === undefined) {
    if (ref.optional === true) return undefined
    throw new ContainerConfigError(`${isSecret ? 'secret' : 'configmap'} "${String(ref.name)}" not found`)
  }
  const data = dataOf(obj, isSecret)
  if (!Object.hasOwn(data, ref.key)) {
    if (ref.optional === true) return undefined
    throw new ContainerConfigError(`couldn't find key ${String(ref.key)} in ${what} ${ns}/${String(ref.name)}`)
  }
  return data[ref.key]
}

function fieldValue(path: string, ctx: EnvContext): string {
  const { pod } = ctx
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path)
  if (m !== null) return String((pod.metadata[m[1] as 'labels' | 'annotations'] ?? {})[m[2] as string] ?? '')
  switch (path) {
    case 'metadata.name': return String(pod.metadata.name)
    case 'metadata.namespace': return String(pod.metadata.namespace)
    case 'metadata.uid': return String(pod.metadata.uid)
    case 'metadata.labels': return formatMap(pod.metadata.labels)
    case 'metadata.annotations': return formatMap(pod.metadata.annotations)
    case 'spec.nodeName': return String(pod.spec?.nodeName ?? '')
    case 'spec.serviceAccountName': return String(pod.spec?.serviceAccountName ?? 'default')
    case 'status.podIP':
    case 'status.podIPs': return ctx.podIP
    case 'status.hostIP':
    case 'status.hostIPs': return ctx.hostIP
    default: throw new ContainerConfigError(`unsupported fieldPath: ${path}`)
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function resourceValue(ref: { resource: string; containerName?: string; divisor?: string }, container: any): string {
  const [kind, name] = ref.resource.split('.') as [string, string]
  const raw = container.resources?.[kind]?.[name]
  if (name === 'cpu') {
    const divisor = cpuMilli(ref.divisor ?? '1') || 1000
    return String(Math.ceil((raw === undefined ? 0 : cpuMilli(raw)) / divisor))
  }
  const divisor = bytesOf(ref.divisor ?? '1') || 1
  return String(Math.ceil((raw === undefined ? 0 : bytesOf(raw)) / divisor))
}

function dataOf(obj: KubeObject, isSecret: boolean): Record<string, string> {
  const out: Record<string, string> = {}
  if (isSecret) {
    for (const [k, v] of Object.entries((obj.data ?? {}) as Record<string, string>)) out[k] = Buffer.from(v, 'base64').toString('utf8')
    for (const [k, v] of Object.entries((obj.stringData ?? {}) as Record<string, string>)) out[k] = v
  } else {
    for (const [k, v] of Object.entries((obj.data ?? {}) as Record<string, string>)) out[k] = v
  }
  return out
}

function formatMap(m: Record<string, string> | undefined): string {
  return Object.entries(m ?? {}).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}="${v}"`).join('\n')
}

/** `$(VAR)` → the variable when defined, kept as written otherwise; `$$(VAR)` → `$(VAR)`. */
export function expand(value: string, env: Record<string, string>): string {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (whole, name: string | undefined) => {
    if (whole === '$$') return '$'
    return name !== undefined && Object.hasOwn(env, name) ? env[name] as string : whole
  })
}

/** The stand-in's rewrites of one value: `0.0.0.0` → the pod IP, a mount path prefix → its host directory. */
export function rewrite(value: string, podIP: string, mounts: readonly HostMount[]): string {
  let v = value.includes('0.0.0.0') ? value.split('0.0.0.0').join(podIP) : value
  const byLength = [...mounts].sort((a, b) => b.mountPath.length - a.mountPath.length)
  for (const m of byLength) {
    const mp = m.mountPath.replace(/\/+$/, '')
    if (mp === '') continue
    if (v === mp || v.startsWith(`${mp}/`)) {
      v = m.hostPath + v.slice(mp.length)
      break
    }
  }
  return v
}
