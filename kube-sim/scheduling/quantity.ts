/**
 * Kubernetes resource quantities (issue 10): `500m`, `2`, `128Mi`, `1G`, `1e3`, as the scheduler and the kubelet
 * read requests, limits and node capacity. CPU in millicores, everything else in base units (bytes).
 */
const SUFFIX: Record<string, number> = {
  '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
}

/** The quantity's value in base units (`500m` → 0.5, `1Ki` → 1024); NaN when it does not parse. */
export function parseQuantity(q: unknown): number {
  if (typeof q === 'number') return q
  if (typeof q !== 'string') return Number.NaN
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?)$/.exec(q.trim())
  if (m === null) return Number.NaN
  const n = Number(m[1])
  if (m[2] !== undefined) return n * 10 ** Number(m[2].slice(1))
  return n * (SUFFIX[m[3] ?? ''] as number)
}

export function cpuMilli(q: unknown): number {
  const v = parseQuantity(q)
  return Number.isFinite(v) ? Math.round(v * 1000) : 0
}

export function bytesOf(q: unknown): number {
  const v = parseQuantity(q)
  return Number.isFinite(v) ? Math.ceil(v) : 0
}

export interface Resources {
  cpuMilli: number
  memoryBytes: number
}

interface ContainerLike {
  resources?: { requests?: Record<string, unknown>; limits?: Record<string, unknown> }
}

/** A container's request of one resource; its limit stands in when the request is absent, as the API server defaults it. */
function requestOf(c: ContainerLike, resource: 'cpu' | 'memory'): unknown {
  return c.resources?.requests?.[resource] ?? c.resources?.limits?.[resource]
}

/**
 * What a pod asks of a node: the sum over its containers, or the largest init container when that is more
 * (init containers run one at a time, before the others), plus the pod's overhead.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function podRequests(spec: any, nonZero = false): Resources {
  const cpu = (c: ContainerLike): number => {
    const v = requestOf(c, 'cpu')
    return v === undefined && nonZero ? DEFAULT_CPU_MILLI : cpuMilli(v)
  }
  const mem = (c: ContainerLike): number => {
    const v = requestOf(c, 'memory')
    return v === undefined && nonZero ? DEFAULT_MEMORY_BYTES : bytesOf(v)
  }
  const containers: ContainerLike[] = spec?.containers ?? []
  const inits: ContainerLike[] = spec?.initContainers ?? []
  const sum = { cpuMilli: 0, memoryBytes: 0 }
  for (const c of containers) {
    sum.cpuMilli += cpu(c)
    sum.memoryBytes += mem(c)
  }
  for (const c of inits) {
    sum.cpuMilli = Math.max(sum.cpuMilli, cpu(c))
    sum.memoryBytes = Math.max(sum.memoryBytes, mem(c))
  }
  sum.cpuMilli += cpuMilli(spec?.overhead?.cpu ?? 0)
  sum.memoryBytes += bytesOf(spec?.overhead?.memory ?? 0)
  return sum
}

/** What the real scheduler's scoring assumes for a container that requests nothing (so such pods still spread). */
export const DEFAULT_CPU_MILLI = 100
export const DEFAULT_MEMORY_BYTES = 200 * 2 ** 20
