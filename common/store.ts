import type { FunctionRecord, RuntimeSpec } from './types.js'

/**
 * Durable platform state: function specs, their versions, runtimes (later: async jobs, workflow runs).
 * `file` (embedded default) and `redis` implement it; writes are atomic per record.
 *
 * A function is its *head* (`putFunction`: the version `latest` serves, with its aliases) and its versions
 * (`putVersion`, immutable). A deploy writes the version first and the head last: the head is the commit, so
 * a crash between the two leaves a version above the head's `lastVersion`, which readers ignore.
 */
export interface Store {
  getFunction(name: string): Promise<FunctionRecord | undefined>
  /** Every function by name; with `page`, at most `limit` of those named after `after` (names sort as strings). */
  listFunctions(page?: { after?: string | undefined; limit: number }): Promise<FunctionRecord[]>
  putFunction(record: FunctionRecord): Promise<void>
  /** Removes the head and every version; resolves true when a head was removed. */
  deleteFunction(name: string): Promise<boolean>
  getVersion(name: string, version: number): Promise<FunctionRecord | undefined>
  /** Every stored version of the function, oldest first. */
  listVersions(name: string): Promise<FunctionRecord[]>
  putVersion(record: FunctionRecord): Promise<void>
  deleteVersion(name: string, version: number): Promise<boolean>
  getRuntime(name: string): Promise<RuntimeSpec | undefined>
  listRuntimes(): Promise<RuntimeSpec[]>
  putRuntime(spec: RuntimeSpec): Promise<void>
  /**
   * Changes other writers made (several replicas on one Redis): `function`/`runtime` name the record that
   * changed; `resync` means changes may have been missed (a reconnect) and everything should be read again.
   * Undefined on stores only one process writes (the file store).
   */
  readonly changes?: ((listener: (change: StoreChange) => void) => () => void) | undefined
  close(): Promise<void>
}

export type StoreChange = { kind: 'function' | 'runtime'; name: string } | { kind: 'resync' }
