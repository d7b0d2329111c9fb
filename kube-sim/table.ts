import { labelSelectorString } from './selectors.js'
import type { KubeObject, ResourceType } from './types.js'

/**
 * Server-side printing (issue 10): the `Table` (meta.k8s.io/v1) kubectl asks for with
 * `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, with the real server's columns for pods, nodes, the
 * workloads, services, namespaces, config maps and secrets, and `NAME AGE` for the rest. Wide columns
 * (`-o wide`) have priority 1. Rows carry the object (`includeObject=Object`) or its metadata (the default).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any

interface Column { name: string; type: string; format?: string; priority?: number; description?: string }
type Cell = string | number
interface Printer { columns: Column[]; row(o: Any, now: number): Cell[] }

const name: Column = { name: 'Name', type: 'string', format: 'name', description: 'Name must be unique within a namespace.' }
const age: Column = { name: 'Age', type: 'string', description: 'CreationTimestamp is a timestamp representing the server time when this object was created.' }
const col = (n: string, type = 'string', priority = 0): Column => ({ name: n, type, ...(priority === 0 ? {} : { priority }), description: '' })

/** Kubernetes' HumanDuration: `45s`, `3m12s`, `5h`, `2d3h`, `12d`, `2y`. */
export function humanDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000))
  if (s < 120) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 10) return s % 60 === 0 ? `${m}m` : `${m}m${s % 60}s`
  if (m < 180) return `${m}m`
  const h = Math.floor(m / 60)
  if (h < 8) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`
  if (h < 48) return `${h}h`
  const d = Math.floor(h / 24)
  if (h < 24 * 8) return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`
  if (d < 365 * 2) return `${d}d`
  if (d < 365 * 8) return d % 365 === 0 ? `${Math.floor(d / 365)}y` : `${Math.floor(d / 365)}y${d % 365}d`
  return `${Math.floor(d / 365)}y`
}

function ageOf(o: Any, now: number): string {
  const t = Date.parse(o.metadata?.creationTimestamp ?? '')
  return Number.isNaN(t) ? '<unknown>' : humanDuration(now - t)
}

function podStatus(p: Any): string {
  let reason: string = p.status?.reason ?? p.status?.phase ?? 'Pending'
  for (const [i, cs] of (p.status?.initContainerStatuses ?? []).entries()) {
    if (cs.state?.terminated?.exitCode === 0) continue
    if (cs.state?.terminated) reason = `Init:${cs.state.terminated.reason ?? `ExitCode:${cs.state.terminated.exitCode}`}`
    else if (cs.state?.waiting?.reason && cs.state.waiting.reason !== 'PodInitializing') reason = `Init:${cs.state.waiting.reason}`
    else reason = `Init:${i}/${(p.spec?.initContainers ?? []).length}`
    return p.metadata?.deletionTimestamp ? 'Terminating' : reason
  }
  let running = false
  for (const cs of [...(p.status?.containerStatuses ?? [])].reverse()) {
    if (cs.state?.waiting?.reason) reason = cs.state.waiting.reason
    else if (cs.state?.terminated?.reason) reason = cs.state.terminated.reason
    else if (cs.state?.terminated) reason = cs.state.terminated.signal ? `Signal:${cs.state.terminated.signal}` : `ExitCode:${cs.state.terminated.exitCode}`
    else if (cs.state?.running && cs.ready) running = true
  }
  if (reason === 'Completed' && running) reason = 'Running'
  if (p.metadata?.deletionTimestamp) reason = p.status?.reason === 'NodeLost' ? 'Unknown' : 'Terminating'
  return reason
}

function containersAndImages(spec: Any): [string, string] {
  const cs: Any[] = spec?.template?.spec?.containers ?? []
  return [cs.map((c) => c.name).join(','), cs.map((c) => c.image).join(',')]
}

const PRINTERS: Record<string, Printer> = {
  '/pods': {
    columns: [name, col('Ready'), col('Status'), col('Restarts'), age, col('IP', 'string', 1), col('Node', 'string', 1), col('Nominated Node', 'string', 1), col('Readiness Gates', 'string', 1)],
    row: (p, now) => {
      const statuses: Any[] = p.status?.containerStatuses ?? []
      const total = (p.spec?.containers ?? []).length
      const ready = statuses.filter((c) => c.ready).length
      const restarts = statuses.reduce((n, c) => n + (c.restartCount ?? 0), 0)
      const gates: Any[] = p.spec?.readinessGates ?? []
      const conds: Any[] = p.status?.conditions ?? []
      const gatesCell = gates.length === 0 ? '<none>' : `${gates.filter((g) => conds.some((c) => c.type === g.conditionType && c.status === 'True')).length}/${gates.length}`
      return [p.metadata.name, `${ready}/${total}`, podStatus(p), restarts, ageOf(p, now), p.status?.podIP ?? '<none>', p.spec?.nodeName ?? '<none>', p.status?.nominatedNodeName ?? '<none>', gatesCell]
    },
  },
  '/nodes': {
    columns: [name, col('Status'), col('Roles'), age, col('Version'), col('Internal-IP', 'string', 1), col('External-IP', 'string', 1), col('OS-Image', 'string', 1), col('Kernel-Version', 'string', 1), col('Container-Runtime', 'string', 1)],
    row: (n, now) => {
      const ready = (n.status?.conditions ?? []).find((c: Any) => c.type === 'Ready')
      let status = ready?.status === 'True' ? 'Ready' : ready === undefined ? 'Unknown' : 'NotReady'
      if (n.spec?.unschedulable) status += ',SchedulingDisabled'
      const roles = Object.keys(n.metadata.labels ?? {}).filter((k) => k.startsWith('node-role.kubernetes.io/')).map((k) => k.slice('node-role.kubernetes.io/'.length)).sort()
      const addr = (t: string) => (n.status?.addresses ?? []).find((a: Any) => a.type === t)?.address ?? '<none>'
      const info = n.status?.nodeInfo ?? {}
      return [n.metadata.name, status, roles.length === 0 ? '<none>' : roles.join(','), ageOf(n, now), info.kubeletVersion ?? '', addr('InternalIP'), addr('ExternalIP'), info.osImage ?? '<unknown>', info.kernelVersion ?? '<unknown>', info.containerRuntimeVersion ?? '<unknown>']
    },
  },
  'apps/deployments': {
    columns: [name, col('Ready'), col('Up-to-date', 'integer'), col('Available', 'integer'), age, col('Containers', 'string', 1), col('Images', 'string', 1), col('Selector', 'string', 1)],
    row: (d, now) => {
      const [cs, images] = containersAndImages(d.spec)
      return [d.metadata.name, `${d.status?.readyReplicas ?? 0}/${d.spec?.replicas ?? 0}`, d.status?.updatedReplicas ?? 0, d.status?.availableReplicas ?? 0, ageOf(d, now), cs, images, selector(d)]
    },
  },
  'apps/replicasets': {
    columns: [name, col('Desired', 'integer'), col('Current', 'integer'), col('Ready', 'integer'), age, col('Containers', 'string', 1), col('Images', 'string', 1), col('Selector', 'string', 1)],
    row: (r, now) => {
      const [cs, images] = containersAndImages(r.spec)
      return [r.metadata.name, r.spec?.replicas ?? 0, r.status?.replicas ?? 0, r.status?.readyReplicas ?? 0, ageOf(r, now), cs, images, selector(r)]
    },
  },
  'apps/daemonsets': {
    columns: [name, col('Desired', 'integer'), col('Current', 'integer'), col('Ready', 'integer'), col('Up-to-date', 'integer'), col('Available', 'integer'), col('Node Selector'), age, col('Containers', 'string', 1), col('Images', 'string', 1), col('Selector', 'string', 1)],
    row: (d, now) => {
      const [cs, images] = containersAndImages(d.spec)
      const ns = Object.entries(d.spec?.template?.spec?.nodeSelector ?? {}).map(([k, v]) => `${k}=${v}`).join(',')
      const s = d.status ?? {}
      return [d.metadata.name, s.desiredNumberScheduled ?? 0, s.currentNumberScheduled ?? 0, s.numberReady ?? 0, s.updatedNumberScheduled ?? 0, s.numberAvailable ?? 0, ns === '' ? '<none>' : ns, ageOf(d, now), cs, images, selector(d)]
    },
  },
  '/services': {
    columns: [name, col('Type'), col('Cluster-IP'), col('External-IP'), col('Port(s)'), age, col('Selector', 'string', 1)],
    row: (s, now) => {
      const ports = (s.spec?.ports ?? []).map((p: Any) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol ?? 'TCP'}`).join(',')
      const sel = Object.entries(s.spec?.selector ?? {}).map(([k, v]) => `${k}=${v}`).join(',')
      return [s.metadata.name, s.spec?.type ?? 'ClusterIP', s.spec?.clusterIP ?? '<none>', (s.spec?.externalIPs ?? []).join(',') || '<none>', ports === '' ? '<none>' : ports, ageOf(s, now), sel === '' ? '<none>' : sel]
    },
  },
  '/events': {
    columns: [col('Last Seen'), col('Type'), col('Reason'), col('Object'), col('Message'), col('Source', 'string', 1), col('First Seen', 'string', 1), col('Count', 'integer', 1), { ...name, priority: 1 }],
    row: (e, now) => {
      const last = Date.parse(e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? '')
      const first = Date.parse(e.firstTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? '')
      const io = e.involvedObject ?? {}
      return [Number.isNaN(last) ? '<unknown>' : humanDuration(now - last), e.type ?? '', e.reason ?? '', `${String(io.kind ?? '').toLowerCase()}/${io.name ?? ''}`, e.message ?? '', e.source?.component ?? e.reportingComponent ?? '', Number.isNaN(first) ? '<unknown>' : humanDuration(now - first), e.count ?? 1, e.metadata.name]
    },
  },
  '/namespaces': {
    columns: [name, col('Status'), age],
    row: (n, now) => [n.metadata.name, n.status?.phase ?? 'Active', ageOf(n, now)],
  },
  '/configmaps': {
    columns: [name, col('Data', 'integer'), age],
    row: (c, now) => [c.metadata.name, Object.keys(c.data ?? {}).length + Object.keys(c.binaryData ?? {}).length, ageOf(c, now)],
  },
  '/secrets': {
    columns: [name, col('Type'), col('Data', 'integer'), age],
    row: (s, now) => [s.metadata.name, s.type ?? 'Opaque', Object.keys(s.data ?? {}).length, ageOf(s, now)],
  },
}
const DEFAULT_PRINTER: Printer = { columns: [name, age], row: (o, now) => [o.metadata.name, ageOf(o, now)] }

function selector(o: Any): string {
  try { return o.spec?.selector ? labelSelectorString(o.spec.selector) || '<none>' : '<none>' } catch { return '<invalid>' }
}

/** Whether an Accept header asks for a Table. */
export function wantsTable(accept: string | undefined): boolean {
  return accept !== undefined && /as=Table/.test(accept) && /g=meta\.k8s\.io/.test(accept)
}

function rowObject(o: KubeObject, includeObject: string | undefined): unknown {
  if (includeObject === 'None') return undefined
  if (includeObject === 'Object') return o
  return { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata }
}

/** The Table of `items` (a list's, or one object's). */
export function toTable(type: ResourceType, items: readonly KubeObject[], resourceVersion: string, includeObject: string | undefined, now = Date.now()): KubeObject {
  const p = PRINTERS[`${type.group}/${type.resource}`] ?? DEFAULT_PRINTER
  return {
    kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion },
    columnDefinitions: p.columns.map((c) => ({ name: c.name, type: c.type, format: c.format ?? '', description: c.description ?? '', priority: c.priority ?? 0 })),
    rows: items.map((o) => {
      const obj = rowObject(o, includeObject)
      return { cells: p.row(o, now), ...(obj === undefined ? {} : { object: obj }) }
    }),
  }
}
