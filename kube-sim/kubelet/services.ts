/**
 * What a pod learns of the cluster's Services (issue 13), as a real kubelet and cluster DNS give it:
 * - **Names:** the stand-in has no DNS server; each pod gets its own hosts file, bound over `/etc/hosts` in the
 *   container's mount namespace (root only, like the volume mounts), with `localhost`, the pod's own name, and
 *   every Service with a cluster IP as `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`, `<svc>.<ns>` — and the
 *   bare `<svc>` for Services of the pod's own namespace (what the search path `<ns>.svc.cluster.local` gives).
 *   The file is rewritten in place when Services change, so a name created after the pod resolves too.
 * - **Service links:** `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT>]` and the Docker-link `<SVC>_PORT*`
 *   variables of the Services of its namespace that exist when a container starts (`enableServiceLinks`, default
 *   true), below the container's own env.
 * Headless Services (clusterIP None) get no name here: the stand-in has no per-pod DNS records.
 */
import { open } from 'node:fs/promises'
import { clusterIPOf } from '../controllers/shared.js'
import type { KubeObject } from '../types.js'

export const CLUSTER_DOMAIN = 'cluster.local'

/** The hosts file of one pod. */
export function hostsFile(pod: KubeObject, podIP: string, services: readonly KubeObject[]): string {
  const ns = String(pod.metadata.namespace)
  const name = String(pod.spec?.hostname ?? pod.metadata.name)
  const sub = pod.spec?.subdomain
  const lines = [
    '# Kubernetes-managed hosts file (kindling kube-sim: the cluster\'s Services stand in for cluster DNS).',
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    `${podIP}\t${typeof sub === 'string' && sub !== '' ? `${name}.${sub}.${ns}.svc.${CLUSTER_DOMAIN} ` : ''}${name}`,
  ]
  // Oldest first: a new Service appends lines, so the file grows at its end (see writeInPlace).
  const sorted = [...services].sort((a, b) => String(a.metadata.creationTimestamp).localeCompare(String(b.metadata.creationTimestamp)) || String(a.metadata.uid).localeCompare(String(b.metadata.uid)))
  for (const svc of sorted) {
    const ip = clusterIPOf(svc)
    if (ip === undefined) continue
    const s = String(svc.metadata.name)
    const sns = String(svc.metadata.namespace)
    const names = [`${s}.${sns}.svc.${CLUSTER_DOMAIN}`, `${s}.${sns}.svc`, `${s}.${sns}`, ...(sns === ns ? [s] : [])]
    lines.push(`${ip}\t${names.join(' ')}`)
  }
  return `${lines.join('\n')}\n`
}

/**
 * Writes `content` into the file without replacing it (a bind mount holds the inode): from offset 0, then the
 * file is cut to the new length. A reader between the two sees the new text followed by the old tail — never an
 * empty file, which a truncate-then-write would show.
 */
export async function writeInPlace(path: string, content: string): Promise<void> {
  const fh = await open(path, 'r+').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? open(path, 'w+') : Promise.reject(err)))
  try {
    const buf = Buffer.from(content)
    await fh.write(buf, 0, buf.length, 0)
    await fh.truncate(buf.length)
  } finally {
    await fh.close()
  }
}

/** The service-link variables of a namespace's Services (`enableServiceLinks`). */
export function serviceLinkEnv(services: readonly KubeObject[]): Record<string, string> {
  const env: Record<string, string> = {}
  for (const svc of services) {
    const ip = clusterIPOf(svc)
    if (ip === undefined) continue
    const prefix = String(svc.metadata.name).toUpperCase().replace(/-/g, '_')
    const ports = (svc.spec?.ports ?? []) as Array<{ name?: string; port: number; protocol?: string }>
    if (ports.length === 0) continue
    env[`${prefix}_SERVICE_HOST`] = ip
    env[`${prefix}_SERVICE_PORT`] = String(ports[0]!.port)
    for (const p of ports) if (p.name !== undefined && p.name !== '') env[`${prefix}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, '_')}`] = String(p.port)
    const first = ports[0]!
    env[`${prefix}_PORT`] = `${(first.protocol ?? 'TCP').toLowerCase()}://${ip}:${first.port}`
    for (const p of ports) {
      const proto = (p.protocol ?? 'TCP').toUpperCase()
      const base = `${prefix}_PORT_${p.port}_${proto}`
      env[base] = `${proto.toLowerCase()}://${ip}:${p.port}`
      env[`${base}_PROTO`] = proto.toLowerCase()
      env[`${base}_PORT`] = String(p.port)
      env[`${base}_ADDR`] = ip
    }
  }
  return env
}
