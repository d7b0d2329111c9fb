/** Shapes shared by every component. Validation lives in `common/spec.ts`; these are the validated forms. */

export type PersistenceMode = 'ephemeral' | 'recycle' | 'persistent'
export type NetworkMode = 'none' | 'egress'

/** How a call was served; sent as `x-kindling-start`. */
export type StartKind = 'warm' | 'prewarmed' | 'specialized' | 'cold'

/** A runtime (`PUT /v1/runtimes/:name`). */
export interface RuntimeSpec {
  name: string
  /** Generic (code-less) instances kept started. @default 2 */
  poolSize: number
  /** Memory limit of one instance, MiB. @default 128 */
  memoryMb: number
  /** CPU quota of one instance, in cores. @default 1 */
  cpu: number
  /** Container image (docker / kubernetes backends). */
  image?: string | undefined
}

/** What a deployer sends (`PUT /v1/functions/:name`), after defaults. */
export interface FunctionSpec {
  runtime: string
  entrypoint: string
  mode: PersistenceMode
  prewarm: number
  concurrency: number
  maxInstances: number
  queueTimeoutMs: number
  timeoutMs: number
  memoryMb?: number | undefined
  cpu?: number | undefined
  env: Record<string, string>
  network: NetworkMode
  maxInvocations: number
  maxAgeMs: number
  idleTimeoutMs: number
  /** Async invocations (issue 11): retries of a failed attempt. Absent on records older than issue 11: 2. */
  asyncRetries?: number | undefined
  /** Async invocations: the longest a job may wait for a successful attempt, ms. Absent on older records: 6 h. */
  asyncMaxAgeMs?: number | undefined
}

/**
 * What an alias routes to (issue 15): one version, or several by weight — `{ "3": 90, "4": 10 }` sends a call to
 * version 3 with probability 90/100.
 */
export type AliasTarget = { version: number } | { weights: Record<string, number> }

/** One step of a canary's history: the weight it ran at and the verdict on its window. */
export interface CanaryStep {
  step: number
  weight: number
  result: 'pass' | 'hold' | 'breach'
  at: string
  reasons: string[]
  canary: { calls: number; errors: number; errorRate: number; p50Ms: number; p99Ms: number }
  baseline: { calls: number; errors: number; errorRate: number; p50Ms: number; p99Ms: number }
  latency?: { u: number; z: number; p: number } | undefined
}

/** A canary release of one alias (`PUT /v1/functions/:name/canary`), kept on the function after it ends. */
export interface CanaryState {
  alias: string
  /** The version the alias served when the canary began: what a breach rolls back to. */
  baseline: number
  /** The version being released. */
  to: number
  /** The canary's weight at each step, in percent; the last is 100. */
  steps: number[]
  intervalMs: number
  minCalls: number
  maxErrorRate: number
  maxP99Ms?: number | undefined
  /** Index into `steps` of the step running now (or the last one run). */
  step: number
  state: 'running' | 'promoted' | 'rolled-back' | 'aborted'
  startedAt: string
  stepStartedAt: string
  endedAt?: string | undefined
  /** Why it ended, in words. */
  reason?: string | undefined
  /** Verdicts, oldest first (the last 50). */
  history: CanaryStep[]
}

/**
 * A function version (issue 15): its spec, its code and its number — immutable once stored. The function's own
 * record (`functions/<name>.json`) is the version its `latest` alias serves, plus the fields marked *head*.
 */
export interface FunctionRecord extends FunctionSpec {
  name: string
  /** The version number; the head's is the version `latest` serves. */
  version: number
  /** sha256 of the deployed code; names the content-addressed code directory. */
  codeHash: string
  /** The build that installed its dependencies (code with a package.json), when there was one. */
  build?: { id: string; inputsHash: string } | undefined
  createdAt: string
  /** When this version was deployed (on the head: when the function last changed). */
  updatedAt: string
  /** Who deployed this version: the `x-kindling-actor` header, else the caller's address. */
  deployedBy?: string | undefined
  /** Head: the function's aliases. Absent on records older than issue 15: `latest` is `version`. */
  aliases?: Record<string, AliasTarget> | undefined
  /** Head: the highest version number given so far (numbers are never reused, even after a rollback). */
  lastVersion?: number | undefined
  /** Head: the function's running or last canary. */
  canary?: CanaryState | undefined
}

/** Where an instance's runtime server listens: a Unix socket path or a TCP host:port. */
export type InstanceAddress = { socketPath: string } | { host: string; port: number }
