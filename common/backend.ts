import type { InstanceAddress, NetworkMode } from './types.js'

/** What the pool manager asks a backend to start: one generic runtime server. */
export interface InstanceRequest {
  /** Unique, also used as the container / process label. */
  id: string
  runtime: string
  /** Pool this instance is started for (`generic:<runtime>` or `fn:<name>`); a label only. */
  pool: string
  /** The function version it is started for, when known (a label only: `kindling.io/version` on kubernetes). */
  version?: number | undefined
  memoryMb: number
  cpu: number
  /** Max processes/threads in the instance. */
  pidsLimit: number
  network: NetworkMode
  /** Starts the instance in the quarantine group (load guard). */
  quarantine?: boolean
  image?: string | undefined
  /**
   * Started by a background refill: runs with a small CPU share until `setPriority(id, 'serving')`, so
   * starting and loading pool instances never competes with the calls being served.
   */
  background?: boolean
  /** Function environment visible from the start (only when started for a known function). */
  env?: Record<string, string>
}

/** A started instance as the backend describes it. */
export interface InstanceHandle {
  id: string
  runtime: string
  pool: string
  address: InstanceAddress
  /** Host pid of the runtime server process (process backend) or container main pid, when known. */
  pid?: number | undefined
  /** Backend-specific cgroup locations, for the load guard. */
  cgroup?: CgroupRef | undefined
  startedAt: number
  /** Taken from a generic pool the backend keeps itself (ownsGenericPools): a warm start, not a cold one. */
  pooled?: boolean | undefined
}

/** A runtime's generic pool as the pool manager asks a backend that keeps pools itself (ownsGenericPools) to keep it. */
export interface GenericPoolSpec {
  runtime: string
  /** Started, code-less instances kept (the runtime's poolSize). */
  size: number
  memoryMb: number
  cpu: number
  image?: string | undefined
}

/** cpu.shares of an instance started by a background refill, and of one serving calls (the default). */
export const BACKGROUND_SHARES = 64
export const SERVING_SHARES = 1024

/**
 * Host-wide cgroup roots (one directory per controller; docker's cgroupfs parent of quarantined containers
 * is `/<QUARANTINE_ROOT>`): each platform's instances live one level down, under its platform id.
 */
export const CGROUP_ROOT = 'kindling'
export const QUARANTINE_ROOT = 'kindling-quarantine'
/** cpu.shares of the quarantine root: quarantined instances of every platform share this small weight. */
export const QUARANTINE_SHARES = 64

export interface CgroupRef {
  version: 1 | 2
  /** v1: controller name → absolute directory; v2: `unified` → absolute directory. */
  paths: Record<string, string>
}

/**
 * An instance ended by SIGKILL that was not its memory limit: killed from outside the platform (an operator,
 * a node going away, chaos). Unlike an instance that exits or never gets healthy by itself, it says nothing
 * about the next instance, so a call that had not reached it is retried until its deadline (issue 8).
 */
export function killedFromOutside(code: number | null | undefined, signal: string | null | undefined): boolean {
  return signal === 'SIGKILL' || code === 137
}

/** `details` of a KDL_ERR_BACKEND whose instance was killed from outside (see killedFromOutside). */
export const KILLED_DETAILS = { lost: 'killed' } as const

/** True for a KDL_ERR_BACKEND that carries KILLED_DETAILS. */
export function lostToKill(err: unknown): boolean {
  return (err as { details?: { lost?: unknown } } | undefined)?.details?.lost === KILLED_DETAILS.lost
}

/**
 * One build (issue 9): the runtime's build step (`runtimes/<kind>/build.mjs`: npm for node) run once in a
 * sandboxed build instance — its own cgroup (CPU, memory, pids), a wall-clock limit, no network but the
 * registry proxy's socket in `dir`, none of the platform's data.
 */
export interface BuildJob {
  /** Unique; also the instance id of the build (its cgroup, its container), so an orphan is reaped like one. */
  id: string
  runtime: string
  /**
   * Host directory of the build: `app/` (package.json, lockfile; node_modules lands here), `tmp/`, and
   * `proxy.sock`. The only host directory the build can write.
   */
  dir: string
  /** Host directory of the npm package (its `bin/npm-cli.js` runs the install). */
  npmDir: string
  registry: string
  command: 'ci' | 'install'
  memoryMb: number
  cpu: number
  pidsLimit: number
  timeoutMs: number
  /** Each line the build prints, as it prints it. */
  onLine: (stream: 'stdout' | 'stderr', line: string) => void
  /** Aborting stops the build (platform shutdown). */
  signal?: AbortSignal | undefined
}

/** How a build instance ended: `ok` (exit 0), `failed` (another exit), over its `memory` limit or its `timeout`, or `aborted`. */
export interface BuildJobResult {
  outcome: 'ok' | 'failed' | 'memory' | 'timeout' | 'aborted'
  code: number | null
  signal: string | null
}

/** Why an instance went away, as far as the backend can tell. */
export type ExitReason = 'exited' | 'crashed' | 'oom' | 'killed' | 'stopped'

export interface InstanceExit {
  id: string
  reason: ExitReason
  code?: number | null
  signal?: string | null
}

/**
 * What an instance printed (issue 14): one line of its stdout or stderr, or how many lines over its output rate
 * the backend counted instead of passing on. Who the instance runs for is the platform's to say, not the line's.
 */
export type InstanceOutput =
  | { id: string; stream: 'stdout' | 'stderr'; line: string; truncated: boolean }
  | { id: string; stream: 'stdout' | 'stderr'; dropped: number }

/** Bounds a backend puts on each instance's output before it reaches the platform. */
export interface OutputLimits {
  /** Longest line passed on, characters; the rest of a longer line is cut. */
  maxLine: number
  /** Lines a second an instance may print (both streams); more are counted as dropped. */
  linesPerSec: number
  /** Lines an instance may print at once above its rate. */
  burst: number
}

export const DEFAULT_OUTPUT_LIMITS: OutputLimits = { maxLine: 16_384, linesPerSec: 1000, burst: 2000 }

/**
 * A place instances run: `process` (child processes + cgroups), `docker`, `kubernetes`.
 * Implementations wrap their client's failures as `KdlError('KDL_ERR_BACKEND', …, {cause})`.
 */
export interface ContainerBackend {
  readonly name: string
  /**
   * Starts worth running at once: past it a start only gets slower (the engine's rate is fixed), and a herd
   * of them would each be late by the whole herd (the pool manager's start gate; KINDLING_MAX_STARTING).
   */
  readonly parallelStarts?: number
  /**
   * The backend keeps each runtime's generic pool itself (kubernetes: a Deployment per runtime, issue 10): the pool
   * manager then hands it the pool's spec through `setGenericPool` and keeps no generic instances of its own, so
   * every take goes to `start()`, which claims one of the backend's pooled instances when it fits.
   */
  readonly ownsGenericPools?: boolean
  /** Creates or resizes a runtime's generic pool (backends that own their pools); idempotent. */
  setGenericPool?(pool: GenericPoolSpec): Promise<void>
  /** Instances of the runtime's own pool ready to be claimed now, as far as the backend knows (pool snapshots and metrics). */
  genericPoolIdle?(runtime: string): number
  /** Start one generic instance; resolves once its runtime server answers `GET /_/health`. */
  start(req: InstanceRequest): Promise<InstanceHandle>
  /** Stop and remove an instance. Idempotent: stopping an unknown or dead instance resolves. */
  stop(id: string): Promise<void>
  /** Instances this backend can see that carry Kindling's labels (including ones left by an earlier run). */
  list(): Promise<Array<{ id: string; pool: string; runtime: string }>>
  /**
   * Issue 13: takes over an instance an earlier controller of this platform started and handed to a router (a
   * leader failover): its handle when it still runs (started, reachable, not being removed), else undefined. Only
   * backends whose instances outlive their platform process have it (kubernetes).
   */
  adopt?(id: string): Promise<InstanceHandle | undefined>
  /**
   * Make a content-addressed code directory (on the platform's host) readable by the instance;
   * returns the path the runtime server must load it from.
   */
  prepareCode(id: string, hostCodeDir: string): Promise<string>
  /** Subscribe to instance exits that the platform did not ask for (crash, OOM). */
  onExit(listener: (exit: InstanceExit) => void): void
  /** Subscribe to what instances print (bounded by the backend's OutputLimits). */
  onOutput?(listener: (output: InstanceOutput) => void): void
  /** Why an instance died, when the call that was running on it failed. */
  exitReason(id: string): Promise<ExitReason | undefined>
  /** Confine a running instance to the quarantine CPUs (load guard), or release it. */
  setQuarantine?(id: string, on: boolean): Promise<void>
  /** Raise a background instance to a full CPU share (it is about to serve a call), or lower it. */
  setPriority?(id: string, priority: 'background' | 'serving'): Promise<void>
  /** Change an instance's CPU quota (load guard throttle). */
  setCpu?(id: string, cpu: number): Promise<void>
  /** Runs one build in a sandboxed build instance (issue 9); absent on a backend that cannot build. */
  runBuild?(job: BuildJob): Promise<BuildJobResult>
  /** Stop everything this backend started and release its clients. */
  /** `keep`: instances left running for another platform process to adopt (issue 13; backends whose instances can outlive it). */
  close(keep?: ReadonlySet<string>): Promise<void>
}
