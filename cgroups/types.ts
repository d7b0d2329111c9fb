import type { CgroupRef } from '../common/backend.js'

export type { CgroupRef }

/**
 * Limits applied when a group is created. `0` or `Infinity` means "no limit" for each field
 * (`-1` / `max` in the kernel files); negative or NaN values are rejected.
 */
export interface CgroupLimits {
  /** CPU cores; 0.5 → a CFS quota of 50000 µs per 100000 µs period. */
  cpu: number
  /** Memory limit in bytes; swap is pinned to the same limit (v1 memsw) or to 0 (v2 swap.max). */
  memoryBytes: number
  /** Max tasks in the group. The kernel counts threads, not processes: a bare `node` uses 7, 11 once the libuv thread pool starts. */
  pidsLimit: number
}

/** One sample of a group's counters, in the same units on v1 and v2. */
export interface CgroupStats {
  /** Total CPU time consumed (ns); 0 on v1 hosts without a cpuacct hierarchy. */
  cpuUsageNs: number
  /** CFS periods in which the group ran out of quota. */
  throttledPeriods: number
  /** Total time the group spent throttled (ns). */
  throttledNs: number
  /** CFS periods elapsed while the group was runnable. */
  nrPeriods: number
  /** Current memory charge (v1: usage_in_bytes, includes page cache; v2: memory.current). */
  memoryBytes: number
  /** High-water mark of the memory charge; equals `memoryBytes` when the kernel keeps none (v2 < 5.19). */
  memoryPeakBytes: number
  /**
   * Processes the kernel OOM killer killed in the group. On v1 kernels older than 4.13 (no `oom_kill`
   * line in memory.oom_control) this is a hint only: 1 when the limit was ever hit, else 0.
   */
  oomKills: number
  /** Tasks (threads) charged to the group, including not-yet-reaped zombies. */
  pids: number
}

export interface EnsureParentOptions {
  /**
   * Relative CPU share of the parent against its siblings (v1 `cpu.shares`, default 1024; on v2 mapped
   * linearly onto `cpu.weight`, 1024 → 100). The quarantine parent gets a small share.
   */
  cpuShares?: number
}

/**
 * A cgroup hierarchy Kindling may create groups in. Parents and names are relative to the controller
 * roots (`kindling`, `kindling-quarantine`, or nested `a/b`); segments are `[A-Za-z0-9][A-Za-z0-9._-]*`.
 * Filesystem failures reject with `KdlError('KDL_ERR_BACKEND', …, {cause})`.
 */
export interface CgroupDriver {
  readonly version: 1 | 2
  /** Create `<parent>/<name>` in every controller used (the parent is ensured first), with limits. */
  create(parent: string, name: string, limits: CgroupLimits): Promise<CgroupRef>
  /** The ref a group of that name has or would have, without touching the filesystem (orphan reaping). */
  refFor(parent: string, name: string): CgroupRef
  /**
   * Files a process writes its own pid into to join the group: one per v1 hierarchy (joint mounts
   * counted once), one `cgroup.procs` on v2. See {@link wrapCommand}.
   */
  procsFiles(ref: CgroupRef): string[]
  /** Pids of the processes in the group (not threads); `[]` when the group does not exist. */
  pids(ref: CgroupRef): Promise<number[]>
  /**
   * SIGKILL every process in the group until it is empty (v1: frozen first when a freezer hierarchy is
   * mounted; v2: `cgroup.kill` when present, else `cgroup.freeze`), then remove the group directories.
   * Idempotent: a missing group resolves.
   */
  destroy(ref: CgroupRef): Promise<void>
  /** Read the group's counters; rejects (cause ENOENT) when the group is gone. */
  stats(ref: CgroupRef): Promise<CgroupStats>
  /** Change the CPU quota (load guard throttle); `0`/`Infinity` removes it. */
  setCpu(ref: CgroupRef, cores: number): Promise<void>
  /** Relative CPU share against sibling groups (v1 `cpu.shares`, default 1024; v2 `cpu.weight`, mapped). */
  setShares(ref: CgroupRef, shares: number): Promise<void>
  /** Names of the groups directly under a parent (orphan reaping at start-up); `[]` when it is missing. */
  list(parent: string): Promise<string[]>
  /** Ensure a parent exists (v2: with cpu, memory and pids enabled for its children). */
  ensureParent(parent: string, opts?: EnsureParentOptions): Promise<void>
}

/** Options shared by both drivers. */
export interface CgroupDriverCommonOptions {
  /**
   * Removes one (empty) group directory. Defaults to `rmdir`; fixture trees, whose directories hold
   * regular files where the kernel would have control files, pass a recursive remove.
   */
  removeDir?: (dir: string) => Promise<void>
  /** How long `destroy()` keeps killing and retrying `rmdir` before it gives up. @default 5000 */
  destroyTimeoutMs?: number
  /** Pid of the calling process, never killed (a group holding it cannot be destroyed). @default process.pid */
  selfPid?: number
}
