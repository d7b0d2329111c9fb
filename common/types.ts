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
}

/** A stored function: its spec, its code and its version. */
export interface FunctionRecord extends FunctionSpec {
  name: string
  /** Increases by one on every successful PUT. */
  version: number
  /** sha256 of the deployed code; names the content-addressed code directory. */
  codeHash: string
  /** The build that installed its dependencies (code with a package.json), when there was one. */
  build?: { id: string; inputsHash: string } | undefined
  createdAt: string
  updatedAt: string
}

/** Where an instance's runtime server listens: a Unix socket path or a TCP host:port. */
export type InstanceAddress = { socketPath: string } | { host: string; port: number }
