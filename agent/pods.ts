/**
 * What the node agent does to a pod's cgroups (issue 13): read them (the cgroups library's `driver.stats`, the load
 * guard's `readLimits` and `readDemand`, as the guard reads a group on the other backends) and set the CPU quota of
 * its container groups (`driver.setCpu`: `cpu.cfs_quota_us` on v1, `cpu.max` on v2).
 */
import type { CgroupRef } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import { CgroupV1Driver, CgroupV2Driver, type CgroupDriver, type CgroupStats } from '../cgroups/index.js'
import { MAX_PROCESSES, readDemand, readLimits, type GroupLimits } from '../loadguard/reader.js'
import { bareContainerId, type CgroupLocator, type Layout, type PodGroups } from './locate.js'

/** A pod (and optionally one of its containers) a sample asks for. */
export interface PodQuery {
  uid: string
  containerId?: string | undefined
}

/** Limits on the wire: JSON has no Infinity, so "none" is `null`. */
export interface WireLimits {
  cpuCores: number
  memoryBytes: number | null
  pids: number | null
}

export type PodSample =
  | { uid: string; containerId?: string; stats: CgroupStats; limits: WireLimits; demand: Array<[number, number]> }
  | { uid: string; error: { code: string; message: string } }

export interface CpuResult {
  uid: string
  cores: number
  /** Container ids whose group got the quota (the pod group itself when it has none). */
  containers: string[]
}

export class PodCgroups {
  readonly #locator: CgroupLocator
  #driver: Promise<CgroupDriver> | undefined

  constructor(locator: CgroupLocator) {
    this.#locator = locator
  }

  #drv(): Promise<CgroupDriver> {
    this.#driver ??= this.#locator.layout().then(driverOf)
    this.#driver.catch(() => { this.#driver = undefined })
    return this.#driver
  }

  /** One sample per pod, in order; a pod not on this node answers KDL_ERR_AGENT_POD_NOT_FOUND in its place. */
  async sample(pods: readonly PodQuery[]): Promise<PodSample[]> {
    const driver = await this.#drv()
    const uids = pods.map((p) => p.uid)
    const out: PodSample[] = []
    for (const q of pods) {
      try {
        out.push(await this.#sampleOne(driver, q, uids))
      } catch (err) {
        const e = err as { code?: unknown; message?: unknown }
        if (e.code !== 'KDL_ERR_AGENT_POD_NOT_FOUND' && e.code !== 'KDL_ERR_BAD_REQUEST') throw err
        out.push({ uid: q.uid, error: { code: String(e.code), message: String(e.message) } })
      }
    }
    return out
  }

  async #sampleOne(driver: CgroupDriver, q: PodQuery, batch: readonly string[]): Promise<PodSample> {
    const g = await this.#find(q.uid, batch)
    const cid = q.containerId === undefined ? undefined : bareContainerId(q.containerId)
    let ref: CgroupRef
    let demandRefs: CgroupRef[]
    let sampled: string | undefined
    if (cid !== undefined) {
      const c = g.containers.get(cid)
      if (c === undefined) throw notFound(`pod ${q.uid} has no container ${cid} on this node`)
      ref = c
      demandRefs = [c]
      sampled = cid
    } else if (g.containers.size === 1) {
      const [[id, c]] = [...g.containers] as [[string, CgroupRef]]
      ref = c
      demandRefs = [c]
      sampled = id
    } else {
      // The pod group counts all of its containers; its own cgroup.procs lists none (v1 and v2 alike), so the
      // demand is read from its containers' groups.
      ref = g.pod
      demandRefs = [...g.containers.values()]
    }
    try {
      const stats = await driver.stats(ref)
      const limits = await readLimits(ref)
      const demand = new Map<number, number>()
      for (const r of demandRefs) {
        for (const [pid, ns] of readDemand(r)) if (demand.size < MAX_PROCESSES) demand.set(pid, ns)
      }
      return { uid: q.uid, ...(sampled === undefined ? {} : { containerId: sampled }), stats, limits: wire(limits), demand: [...demand] }
    } catch (err) {
      // The pod (or container) went between the lookup and the reads.
      this.#locator.forget(q.uid)
      throw notFound(`pod ${q.uid}'s cgroup went while it was read`, err)
    }
  }

  /** Sets the CFS quota (cores; 0: none) of the pod's container groups, or of one of them. */
  async setCpu(uid: string, cores: number, containerId?: string): Promise<CpuResult> {
    if (!(Number.isFinite(cores) && cores >= 0)) throw new KdlError('KDL_ERR_BAD_REQUEST', `cores must be a number ≥ 0, not ${String(cores)}`)
    const driver = await this.#drv()
    const g = await this.#find(uid, [])
    let targets: Array<[string | undefined, CgroupRef]>
    if (containerId !== undefined) {
      const cid = bareContainerId(containerId)
      const c = g.containers.get(cid)
      if (c === undefined) throw notFound(`pod ${uid} has no container ${cid} on this node`)
      targets = [[cid, c]]
    } else {
      targets = g.containers.size > 0 ? [...g.containers] : [[undefined, g.pod]]
    }
    try {
      for (const [, ref] of targets) await driver.setCpu(ref, cores)
    } catch (err) {
      this.#locator.forget(uid)
      throw new KdlError('KDL_ERR_BACKEND', `cannot set the CPU quota of pod ${uid}: ${(err as Error).message}`, { cause: err })
    }
    return { uid, cores, containers: targets.map(([id]) => id).filter((id): id is string => id !== undefined) }
  }

  async #find(uid: string, batch: readonly string[]): Promise<PodGroups> {
    const g = await this.#locator.locate(uid, batch)
    if (g === undefined) throw notFound(`no cgroup of pod ${uid} on this node`)
    return g
  }
}

/** The cgroups library's driver for a located hierarchy: stats and setCpu work on any ref's own paths. */
export function driverOf(layout: Layout): CgroupDriver {
  return layout.version === 2 ? new CgroupV2Driver({ root: layout.unified }) : new CgroupV1Driver({ mounts: layout.mounts })
}

function notFound(message: string, cause?: unknown): KdlError {
  return new KdlError('KDL_ERR_AGENT_POD_NOT_FOUND', message, cause === undefined ? {} : { cause })
}

function wire(l: GroupLimits): WireLimits {
  return { cpuCores: l.cpuCores, memoryBytes: Number.isFinite(l.memoryBytes) ? l.memoryBytes : null, pids: Number.isFinite(l.pids) ? l.pids : null }
}

/** Back from the wire: `null` is no limit. */
export function unwire(l: WireLimits): GroupLimits {
  return { cpuCores: l.cpuCores, memoryBytes: l.memoryBytes ?? Infinity, pids: l.pids ?? Infinity }
}
