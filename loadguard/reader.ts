import { closeSync, openSync, readSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import type { CgroupRef } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import type { CgroupDriver, CgroupStats } from '../cgroups/index.js'

/** The limits the kernel enforces on a group, read once per instance. `Infinity` = none. */
export interface GroupLimits {
  /** CFS quota in cores; the host's core count when the group has no quota. */
  cpuCores: number
  memoryBytes: number
  pids: number
}

/** What the guard reads from a group: counters every tick, limits once. */
export interface CgroupReader {
  stats(ref: CgroupRef): Promise<CgroupStats>
  limits(ref: CgroupRef): Promise<GroupLimits>
  /**
   * Time each process of the group (up to {@link MAX_PROCESSES}) has spent running or runnable-and-waiting
   * (its main thread's `/proc/<pid>/schedstat`), ns by pid. Unlike cpuacct usage this measures demand:
   * a CPU-bound process shows ~1 s per second whether it runs or waits — for a busy host or for its own
   * CFS quota (a throttled task keeps accruing wait time).
   */
  demand(ref: CgroupRef): Map<number, number>
  /**
   * Called once per pass, before the reads, with the refs of every instance the pass reads: a reader whose reads
   * are remote (the kubernetes node agents, backends/kubernetes/agents.ts) fetches them all in one batch here.
   */
  prefetch?(refs: readonly CgroupRef[]): Promise<void>
}

/** Processes whose schedstat a sample reads; a fork bomb's first few already show its demand. */
export const MAX_PROCESSES = 16

/** v1 reports "no memory limit" as a page-rounded LONG_MAX; anything this large is none. */
const NO_LIMIT_V1 = 2 ** 62

/**
 * A reader over the cgroups library: `driver.stats(ref)` reads counters from the ref's own paths (so it
 * serves refs of groups the driver did not create, such as Docker's), and the limit files are read here.
 * Refs of the other cgroup version than the driver's are refused (a host runs one of them).
 */
export function createCgroupReader(driver: Pick<CgroupDriver, 'version' | 'stats'>): CgroupReader {
  return {
    stats(ref) {
      if (ref.version !== driver.version) throw new KdlError('KDL_ERR_BACKEND', `cgroup v${ref.version} ref on a v${driver.version} host`)
      return driver.stats(ref)
    },
    limits: readLimits,
    demand: readDemand,
  }
}

const scratch = Buffer.allocUnsafe(4096)

/** Synchronous open/read/close of a small procfs/cgroupfs file (generated in memory: never waits on I/O). */
function readSmall(file: string): string | undefined {
  let fd: number
  try {
    fd = openSync(file, 'r')
  } catch {
    return undefined
  }
  try {
    return scratch.toString('utf8', 0, readSync(fd, scratch, 0, scratch.length, 0))
  } catch {
    return undefined
  } finally {
    closeSync(fd)
  }
}

export function readDemand(ref: CgroupRef): Map<number, number> {
  const dir = ref.version === 2 ? ref.paths['unified'] : ref.paths['cpu']
  const out = new Map<number, number>()
  const procs = dir === undefined ? undefined : readSmall(join(dir, 'cgroup.procs'))
  if (procs === undefined) return out
  for (const line of procs.split('\n')) {
    const pid = Number.parseInt(line, 10)
    if (!(pid > 0)) continue
    // "<run ns> <wait ns> <timeslices>"; a process gone meanwhile is skipped.
    const stat = readSmall(`/proc/${pid}/schedstat`)?.split(' ')
    if (stat === undefined || stat.length < 2) continue
    out.set(pid, Number(stat[0]) + Number(stat[1]))
    if (out.size >= MAX_PROCESSES) break
  }
  return out
}

/** Reads the cpu quota, memory limit and pids limit of a v1 or v2 group. */
export async function readLimits(ref: CgroupRef): Promise<GroupLimits> {
  const host = availableParallelism()
  if (ref.version === 2) {
    const dir = path(ref, 'unified')
    const [quota = 'max', period = '100000'] = (await text(join(dir, 'cpu.max'))).split(/\s+/)
    return {
      cpuCores: quota === 'max' ? host : Number(quota) / Number(period),
      memoryBytes: limitValue(await text(join(dir, 'memory.max')), Infinity),
      pids: limitValue(await text(join(dir, 'pids.max')), Infinity),
    }
  }
  const cpu = path(ref, 'cpu')
  const quota = Number(await text(join(cpu, 'cpu.cfs_quota_us')))
  const period = Number(await text(join(cpu, 'cpu.cfs_period_us')))
  const memory = limitValue(await text(join(path(ref, 'memory'), 'memory.limit_in_bytes')), Infinity)
  return {
    cpuCores: quota > 0 && period > 0 ? quota / period : host,
    memoryBytes: memory >= NO_LIMIT_V1 ? Infinity : memory,
    pids: limitValue(await text(join(path(ref, 'pids'), 'pids.max')), Infinity),
  }
}

function limitValue(t: string, none: number): number {
  if (t === 'max' || t === '') return none
  const n = Number(t)
  return Number.isFinite(n) && n >= 0 ? n : none
}

function path(ref: CgroupRef, controller: string): string {
  const dir = ref.paths[controller]
  if (dir === undefined) throw new KdlError('KDL_ERR_BACKEND', `cgroup ref has no ${controller} path`)
  return dir
}

async function text(file: string): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trim()
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `cannot read ${file}`, { cause: err })
  }
}
