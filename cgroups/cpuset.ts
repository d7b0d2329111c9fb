import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { QUARANTINE_ROOT } from '../common/backend.js'
import { errno, exists, mkdirp, readText, writeText } from './fs-util.js'

/**
 * The quarantine CPU set (cgroup v1 `cpuset`): quarantined instances run on their own CPUs only, so a
 * noisy function cannot take the cores that calm functions and the router run on — a smaller cpu.shares
 * alone still lets it run at full speed whenever it is scheduled. Running instances are moved in and out
 * by writing their pids to `cgroup.procs` (v1 moves whole processes; their children follow on fork).
 */
export class QuarantineCpuset {
  readonly cpus: string
  readonly #root: string
  readonly #dir: string

  private constructor(root: string, dir: string, cpus: string) {
    this.#root = root
    this.#dir = dir
    this.cpus = cpus
  }

  /**
   * Creates `<root>/<name>` pinned to `cpus` (default: the host's last CPU, when it has more than one).
   * Undefined when there is no writable v1 cpuset hierarchy or only one CPU.
   */
  static async create(opts: { root?: string; name?: string; cpus?: string | undefined } = {}): Promise<QuarantineCpuset | undefined> {
    const root = opts.root ?? '/sys/fs/cgroup/cpuset'
    const n = availableParallelism()
    const cpus = opts.cpus !== undefined && opts.cpus !== '' ? opts.cpus : n > 1 ? String(n - 1) : undefined
    if (cpus === undefined) return undefined
    if (!(await exists(join(root, 'cpuset.cpus')))) return undefined
    const dir = join(root, opts.name ?? QUARANTINE_ROOT)
    await mkdirp(dir)
    // A new v1 cpuset group starts empty: memory nodes first (copied from the root), then the CPUs.
    await writeText(join(dir, 'cpuset.mems'), (await readText(join(root, 'cpuset.mems'))).trim())
    await writeText(join(dir, 'cpuset.cpus'), cpus)
    return new QuarantineCpuset(root, dir, cpus)
  }

  /** The file a process writes its pid to, to start inside the set. */
  get procsFile(): string {
    return join(this.#dir, 'cgroup.procs')
  }

  /** Moves processes into the set (`on`) or back to all CPUs; processes gone meanwhile are skipped. */
  async move(pids: readonly number[], on: boolean): Promise<void> {
    const file = join(on ? this.#dir : this.#root, 'cgroup.procs')
    for (const pid of pids) {
      try {
        await writeText(file, String(pid))
      } catch (err) {
        if (errno((err as { cause?: unknown }).cause) !== 'ESRCH') throw err
      }
    }
  }
}
