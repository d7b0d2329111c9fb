import type { FunctionRecord, RuntimeSpec } from './types.js'

/**
 * Durable platform state: function specs and runtimes (later: versions, async jobs, workflow runs).
 * `file` (embedded default) and `redis` implement it; writes are atomic per record.
 */
export interface Store {
  getFunction(name: string): Promise<FunctionRecord | undefined>
  listFunctions(): Promise<FunctionRecord[]>
  putFunction(record: FunctionRecord): Promise<void>
  /** Resolves true when a record was removed. */
  deleteFunction(name: string): Promise<boolean>
  getRuntime(name: string): Promise<RuntimeSpec | undefined>
  listRuntimes(): Promise<RuntimeSpec[]>
  putRuntime(spec: RuntimeSpec): Promise<void>
  close(): Promise<void>
}
