import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import type { CgroupDriver, CgroupDriverCommonOptions, CgroupLimits, CgroupRef, CgroupStats, EnsureParentOptions } from './types.js'
import {
  CFS_PERIOD_US, backendError, checkCores, checkLimits, checkRelPath, defaultRemoveDir, errno, exists, integralLimit,
  killPids, killUntilEmpty, mkdirp, parseKeyed, parseValue, quotaUs, readOptional, readProcs, readSmallSync, readText,
  removeGroup,
  subdirs, writeText,
} from './fs-util.js'

/** The v1 controllers Kindling uses; cpu, memory and pids are required, cpuacct and freezer optional. */
export const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'cpuacct', 'freezer'] as const
export type V1Controller = (typeof V1_CONTROLLERS)[number]

export type V1Mounts = Partial<Record<V1Controller, string>> & Record<'cpu' | 'memory' | 'pids', string>

export interface CgroupV1Options extends CgroupDriverCommonOptions {
  /**
   * Mount directory of each controller's hierarchy (realpaths). Joint hierarchies (`cpu,cpuacct`)
   * give both controllers the same directory; the group is then created and joined once.
   */
  mounts: V1Mounts
}

/** How long one freeze may stay in FREEZING before the kill round goes ahead anyway. */
const FREEZE_WAIT_MS = 1_000

/** cgroup v1: one directory per hierarchy (`<mount>/<parent>/<name>`). */
export class CgroupV1Driver implements CgroupDriver {
  readonly version = 1 as const
  readonly #mounts: V1Mounts
  readonly #removeDir: (dir: string) => Promise<void>
  readonly #destroyTimeoutMs: number
  readonly #selfPid: number
  /** Scratch buffer of the synchronous stats reads (grown on demand). */
  readonly #scratch = { buf: Buffer.allocUnsafe(4096) }

  constructor(options: CgroupV1Options) {
    this.#mounts = { ...options.mounts }
    this.#removeDir = options.removeDir ?? defaultRemoveDir
    this.#destroyTimeoutMs = options.destroyTimeoutMs ?? 5_000
    this.#selfPid = options.selfPid ?? process.pid
  }

  refFor(parent: string, name: string): CgroupRef {
    checkRelPath(parent, 'parent')
    checkRelPath(name, 'name')
    const paths: Record<string, string> = {}
    for (const c of V1_CONTROLLERS) {
      const mount = this.#mounts[c]
      if (mount !== undefined) paths[c] = join(mount, parent, name)
    }
    return { version: 1, paths }
  }

  async ensureParent(parent: string, opts: EnsureParentOptions = {}): Promise<void> {
    checkRelPath(parent, 'parent')
    for (const mount of unique(Object.values(this.#mounts))) await mkdirp(join(mount, parent))
    if (opts.cpuShares !== undefined) {
      await writeText(join(this.#mounts.cpu, parent, 'cpu.shares'), String(Math.max(2, Math.round(opts.cpuShares))))
    }
  }

  async create(parent: string, name: string, limits: CgroupLimits): Promise<CgroupRef> {
    checkLimits(limits)
    const ref = this.refFor(parent, name)
    await this.ensureParent(parent)
    try {
      for (const dir of groupDirs(ref)) await mkdirp(dir)
      await this.#writeCpu(ref, limits.cpu, true)
      await this.#writeMemory(need(ref, 'memory'), limits.memoryBytes)
      const pids = integralLimit(limits.pidsLimit)
      await writeText(join(need(ref, 'pids'), 'pids.max'), pids === undefined ? 'max' : String(pids))
    } catch (err) {
      await this.destroy(ref).catch(() => undefined)
      throw backendError(`cannot create cgroup ${parent}/${name}`, err)
    }
    return ref
  }

  procsFiles(ref: CgroupRef): string[] {
    return groupDirs(ref).map((dir) => join(dir, 'cgroup.procs'))
  }

  async pids(ref: CgroupRef): Promise<number[]> {
    return readProcs(join(need(ref, 'pids'), 'cgroup.procs'))
  }

  async setCpu(ref: CgroupRef, cores: number): Promise<void> {
    checkCores(cores)
    await this.#writeCpu(ref, cores, false)
  }

  async setShares(ref: CgroupRef, shares: number): Promise<void> {
    await writeText(join(need(ref, 'cpu'), 'cpu.shares'), String(Math.max(2, Math.round(shares))))
  }

  async stats(ref: CgroupRef): Promise<CgroupStats> {
    const cpu = need(ref, 'cpu')
    const memory = need(ref, 'memory')
    const cpuacct = ref.paths.cpuacct
    const read = (file: string): string => readSmallSync(file, this.#scratch)
    const value = (file: string): number => parseValue(read(file), file)
    const usage = cpuacct === undefined ? 0 : value(join(cpuacct, 'cpuacct.usage'))
    const cs = parseKeyed(read(join(cpu, 'cpu.stat')))
    const memBytes = value(join(memory, 'memory.usage_in_bytes'))
    const memPeak = value(join(memory, 'memory.max_usage_in_bytes'))
    const oomControl = read(join(memory, 'memory.oom_control'))
    const pids = value(join(need(ref, 'pids'), 'pids.current'))
    return {
      cpuUsageNs: usage,
      throttledPeriods: cs.get('nr_throttled') ?? 0,
      throttledNs: cs.get('throttled_time') ?? 0,
      nrPeriods: cs.get('nr_periods') ?? 0,
      memoryBytes: memBytes,
      memoryPeakBytes: memPeak,
      oomKills: parseKeyed(oomControl).get('oom_kill') ?? (await this.#limitHit(memory)),
      pids,
    }
  }

  async list(parent: string): Promise<string[]> {
    checkRelPath(parent, 'parent')
    const names = new Set<string>()
    for (const mount of unique(Object.values(this.#mounts))) {
      for (const name of await subdirs(join(mount, parent))) names.add(name)
    }
    return [...names].sort()
  }

  async destroy(ref: CgroupRef): Promise<void> {
    const dirs = groupDirs(ref)
    const deadline = Date.now() + this.#destroyTimeoutMs
    try {
      const present = await Promise.all(dirs.map((d) => exists(d)))
      if (!present.includes(true)) return
      const freezer = ref.paths.freezer
      const listAll = async (): Promise<number[]> =>
        unique((await Promise.all(dirs.map((d) => readProcs(join(d, 'cgroup.procs'))))).flat())
      // Frozen tasks cannot fork between the listing and the SIGKILL, so a fork bomb empties in a round
      // or two; the signals take effect when the group is thawed.
      await killUntilEmpty(listAll, async () => {
        const frozen = freezer !== undefined && (await this.#freeze(freezer, deadline))
        try {
          killPids(await listAll(), this.#selfPid)
        } finally {
          if (frozen) await writeText(join(freezer, 'freezer.state'), 'THAWED')
        }
      }, deadline, dirs[0] ?? '')
      for (const dir of dirs) await removeGroup(dir, this.#removeDir, deadline)
    } catch (err) {
      // Removed meanwhile by someone else (ENOENT/ENODEV on a file of a vanishing group): destroyed is destroyed.
      const left = await Promise.all(dirs.map((d) => exists(d).catch(() => true)))
      if (!left.includes(true)) return
      throw backendError(`cannot destroy cgroup ${dirs[0] ?? ''}`, err)
    }
  }

  async #writeCpu(ref: CgroupRef, cores: number, setPeriod: boolean): Promise<void> {
    const dir = need(ref, 'cpu')
    if (setPeriod) await writeText(join(dir, 'cpu.cfs_period_us'), String(CFS_PERIOD_US))
    await writeText(join(dir, 'cpu.cfs_quota_us'), String(quotaUs(cores) ?? -1))
  }

  /**
   * limit_in_bytes first, then memsw at the same value (no swap escape). memsw must stay ≥ the memory
   * limit, so raising a limit (EINVAL on the first write) goes the other way round.
   */
  async #writeMemory(dir: string, bytes: number): Promise<void> {
    const value = String(integralLimit(bytes) ?? -1)
    const limitFile = join(dir, 'memory.limit_in_bytes')
    const memswFile = join(dir, 'memory.memsw.limit_in_bytes')
    const hasMemsw = await exists(memswFile)
    try {
      await writeText(limitFile, value)
    } catch (err) {
      if (!hasMemsw || errno((err as { cause?: unknown }).cause) !== 'EINVAL') throw err
      await writeText(memswFile, value)
      await writeText(limitFile, value)
      return
    }
    if (hasMemsw) await writeText(memswFile, value)
  }

  /** Pre-4.13 kernels have no oom_kill counter: report 1 when either limit was ever hit. */
  async #limitHit(memory: string): Promise<number> {
    const counts = await Promise.all(
      ['memory.failcnt', 'memory.memsw.failcnt'].map(async (f) => Number((await readOptional(join(memory, f)))?.trim() ?? 0)),
    )
    return counts.some((n) => n > 0) ? 1 : 0
  }

  async #freeze(freezer: string, deadline: number): Promise<boolean> {
    const stateFile = join(freezer, 'freezer.state')
    if (!(await exists(stateFile))) return false
    await writeText(stateFile, 'FROZEN')
    const until = Math.min(deadline, Date.now() + FREEZE_WAIT_MS)
    for (let attempt = 0; Date.now() < until; attempt++) {
      if ((await readText(stateFile)).trim() === 'FROZEN') break
      await delay(Math.min(10, 2 ** attempt))
    }
    return true
  }
}

function need(ref: CgroupRef, controller: V1Controller): string {
  const dir = ref.paths[controller]
  if (ref.version !== 1 || dir === undefined) throw backendError(`cgroup ref has no v1 ${controller} path`, undefined)
  return dir
}

/** The group's directories, each once (joint hierarchies share one), in V1_CONTROLLERS order. */
function groupDirs(ref: CgroupRef): string[] {
  const known = V1_CONTROLLERS.map((c) => ref.paths[c]).filter((d): d is string => d !== undefined)
  return unique([...known, ...Object.values(ref.paths)])
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)]
}
