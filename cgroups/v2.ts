import { join } from 'node:path'
import type { CgroupDriver, CgroupDriverCommonOptions, CgroupLimits, CgroupRef, CgroupStats, EnsureParentOptions } from './types.js'
import {
  CFS_PERIOD_US, backendError, checkCores, checkLimits, checkRelPath, defaultRemoveDir, exists, integralLimit, killPids,
  killUntilEmpty, mkdirp, parseKeyed, parseValue, quotaUs, readOptional, readProcs, readSmallSync, removeGroup, subdirs,
  writeText,
} from './fs-util.js'

/** Controllers every Kindling parent enables for its children. */
export const V2_CONTROLLERS = ['cpu', 'memory', 'pids'] as const

export interface CgroupV2Options extends CgroupDriverCommonOptions {
  /**
   * The unified hierarchy directory groups are created under: the cgroup2 mount (`/sys/fs/cgroup` or
   * `/sys/fs/cgroup/unified`), or a delegated subtree of it.
   */
  root: string
}

/** cgroup v2: one directory per group (`<root>/<parent>/<name>`), `ref.paths.unified`. */
export class CgroupV2Driver implements CgroupDriver {
  readonly version = 2 as const
  readonly #root: string
  readonly #removeDir: (dir: string) => Promise<void>
  readonly #destroyTimeoutMs: number
  readonly #selfPid: number
  /** Scratch buffer of the synchronous stats reads (grown on demand). */
  readonly #scratch = { buf: Buffer.allocUnsafe(4096) }

  constructor(options: CgroupV2Options) {
    this.#root = options.root
    this.#removeDir = options.removeDir ?? defaultRemoveDir
    this.#destroyTimeoutMs = options.destroyTimeoutMs ?? 5_000
    this.#selfPid = options.selfPid ?? process.pid
  }

  refFor(parent: string, name: string): CgroupRef {
    checkRelPath(parent, 'parent')
    checkRelPath(name, 'name')
    return { version: 2, paths: { unified: join(this.#root, parent, name) } }
  }

  /** Creates each level of the parent and enables cpu, memory and pids in its subtree_control. */
  async ensureParent(parent: string, opts: EnsureParentOptions = {}): Promise<void> {
    checkRelPath(parent, 'parent')
    let dir = this.#root
    await this.#enableControllers(dir)
    for (const segment of parent.split('/')) {
      dir = join(dir, segment)
      await mkdirp(dir)
      await this.#enableControllers(dir)
    }
    if (opts.cpuShares !== undefined) await writeText(join(dir, 'cpu.weight'), String(sharesToWeight(opts.cpuShares)))
  }

  async create(parent: string, name: string, limits: CgroupLimits): Promise<CgroupRef> {
    checkLimits(limits)
    const ref = this.refFor(parent, name)
    const dir = need(ref)
    await this.ensureParent(parent)
    try {
      await mkdirp(dir)
      await this.#writeCpu(dir, limits.cpu)
      const memory = integralLimit(limits.memoryBytes)
      await writeText(join(dir, 'memory.max'), memory === undefined ? 'max' : String(memory))
      // Absent when the kernel has no swap accounting; then there is no swap to escape to.
      if (await exists(join(dir, 'memory.swap.max'))) await writeText(join(dir, 'memory.swap.max'), '0')
      const pids = integralLimit(limits.pidsLimit)
      await writeText(join(dir, 'pids.max'), pids === undefined ? 'max' : String(pids))
    } catch (err) {
      await this.destroy(ref).catch(() => undefined)
      throw backendError(`cannot create cgroup ${parent}/${name}`, err)
    }
    return ref
  }

  procsFiles(ref: CgroupRef): string[] {
    return [join(need(ref), 'cgroup.procs')]
  }

  async pids(ref: CgroupRef): Promise<number[]> {
    return readProcs(join(need(ref), 'cgroup.procs'))
  }

  async setCpu(ref: CgroupRef, cores: number): Promise<void> {
    checkCores(cores)
    await this.#writeCpu(need(ref), cores)
  }

  async setShares(ref: CgroupRef, shares: number): Promise<void> {
    await writeText(join(need(ref), 'cpu.weight'), String(sharesToWeight(shares)))
  }

  async stats(ref: CgroupRef): Promise<CgroupStats> {
    const dir = need(ref)
    const read = (file: string): string => readSmallSync(join(dir, file), this.#scratch)
    const cpuStat = read('cpu.stat')
    const current = parseValue(read('memory.current'), 'memory.current')
    const peak = readSmallSync(join(dir, 'memory.peak'), this.#scratch, true)
    const events = read('memory.events')
    const pids = parseValue(read('pids.current'), 'pids.current')
    const cs = parseKeyed(cpuStat)
    const peakBytes = peak === undefined ? undefined : Number(peak.trim())
    return {
      cpuUsageNs: (cs.get('usage_usec') ?? 0) * 1000,
      throttledPeriods: cs.get('nr_throttled') ?? 0,
      throttledNs: (cs.get('throttled_usec') ?? 0) * 1000,
      nrPeriods: cs.get('nr_periods') ?? 0,
      memoryBytes: current,
      memoryPeakBytes: peakBytes === undefined || Number.isNaN(peakBytes) ? current : peakBytes,
      oomKills: parseKeyed(events).get('oom_kill') ?? 0,
      pids,
    }
  }

  async list(parent: string): Promise<string[]> {
    checkRelPath(parent, 'parent')
    return subdirs(join(this.#root, parent))
  }

  async destroy(ref: CgroupRef): Promise<void> {
    const dir = need(ref)
    const deadline = Date.now() + this.#destroyTimeoutMs
    try {
      if (!(await exists(dir))) return
      const killFile = join(dir, 'cgroup.kill')
      const freezeFile = join(dir, 'cgroup.freeze')
      const [hasKill, hasFreeze] = await Promise.all([exists(killFile), exists(freezeFile)])
      const listAll = (): Promise<number[]> => subtreeProcs(dir)
      if (hasKill) await writeText(killFile, '1')
      await killUntilEmpty(listAll, async () => {
        // cgroup.kill (5.14+) kills the whole subtree atomically, forks in flight included.
        if (hasKill) return writeText(killFile, '1')
        if (hasFreeze) await writeText(freezeFile, '1')
        try {
          killPids(await listAll(), this.#selfPid)
        } finally {
          if (hasFreeze) await writeText(freezeFile, '0')
        }
      }, deadline, dir)
      await removeGroup(dir, this.#removeDir, deadline)
    } catch (err) {
      // Removed meanwhile by someone else (ENOENT/ENODEV on a file of a vanishing group): destroyed is destroyed.
      if (!(await exists(dir).catch(() => true))) return
      throw backendError(`cannot destroy cgroup ${dir}`, err)
    }
  }

  async #writeCpu(dir: string, cores: number): Promise<void> {
    await writeText(join(dir, 'cpu.max'), `${quotaUs(cores) ?? 'max'} ${CFS_PERIOD_US}`)
  }

  async #enableControllers(dir: string): Promise<void> {
    const file = join(dir, 'cgroup.subtree_control')
    const enabled = new Set(((await readOptional(file)) ?? '').split(/\s+/).map((t) => t.replace(/^\+/, '')))
    const missing = V2_CONTROLLERS.filter((c) => !enabled.has(c))
    if (missing.length > 0) await writeText(file, missing.map((c) => `+${c}`).join(' '))
  }
}

/** v1 shares (2…262144, default 1024) → v2 weight (1…10000, default 100), linear around the defaults. */
export function sharesToWeight(shares: number): number {
  return Math.min(10_000, Math.max(1, Math.round((shares * 100) / 1024)))
}

function need(ref: CgroupRef): string {
  const dir = ref.paths.unified
  if (ref.version !== 2 || dir === undefined) throw backendError('cgroup ref has no v2 unified path', undefined)
  return dir
}

/** Pids in a group and its descendants (an instance may not create child groups, but be sure). */
async function subtreeProcs(dir: string): Promise<number[]> {
  const own = await readProcs(join(dir, 'cgroup.procs'))
  const children = await Promise.all((await subdirs(dir)).map((c) => subtreeProcs(join(dir, c))))
  return [...new Set([...own, ...children.flat()])]
}
