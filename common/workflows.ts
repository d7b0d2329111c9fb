/**
 * Workflows (issue 12): what is stored of them, and the store that keeps it. `file` (embedded default) and
 * `redis` implement WorkflowStore (store/file-workflows.ts, store/redis-workflows.ts); the engine in
 * workflows/ is the only writer of runs.
 */

/** One stored version of a workflow definition (immutable once written); the head is the newest. */
export interface WorkflowRecord {
  name: string
  /** 1, 2, …: a changed definition gets the next number; an identical one none. */
  version: number
  /** The validated, normalised definition (workflows/definition.ts), as JSON. */
  definition: unknown
  /** sha256 of the definition's canonical JSON: an identical apply is recognised by it. */
  digest: string
  createdAt: string
}

export type RunStatus = 'running' | 'succeeded' | 'failed' | 'cancelled'

/** A run's summary: what listing and the sync answer read. The log (RunEvent[]) is the truth it is derived from. */
export interface RunRecord {
  /** Unique over the store; sorts by start time (`<ms base36>-<random>`). */
  id: string
  workflow: string
  /** The definition version the run follows, to its end. */
  version: number
  status: RunStatus
  startedAt: string
  endedAt?: string | undefined
  /** The run's result, once succeeded. */
  output?: unknown
  /** Why it failed or was cancelled. */
  error?: { error: string; cause: string } | undefined
  /** Epoch ms at which a run that only waits (a `wait`, a retry's back-off) is due again; absent when it runs now. */
  wakeAt?: number | undefined
  /** A cancel was asked for; the owner stops the run at its next step and marks it cancelled. */
  cancelRequested?: boolean | undefined
}

/** One entry of a run's append-only log: a JSON object the engine writes and replays. Stores keep it opaque. */
export type RunEvent = Record<string, unknown>

/** An unfinished run, and when it is next due (absent: now). */
export interface OpenRun {
  id: string
  wakeAt?: number | undefined
}

export interface WorkflowStore {
  /** Writes a version and makes it the head (version first, head last: the head is the commit). */
  putWorkflow(record: WorkflowRecord): Promise<void>
  getWorkflow(name: string): Promise<WorkflowRecord | undefined>
  getWorkflowVersion(name: string, version: number): Promise<WorkflowRecord | undefined>
  /** Every workflow's head, by name. */
  listWorkflows(): Promise<WorkflowRecord[]>
  /** Every stored version, oldest first. */
  listWorkflowVersions(name: string): Promise<WorkflowRecord[]>
  /** Removes the head and its versions (runs stay: each carries its definition in its log); true when there was one. */
  deleteWorkflow(name: string): Promise<boolean>

  /** Writes a new run's summary and its first log entries, and makes it open (due now) — atomically. */
  createRun(run: RunRecord, log: RunEvent[]): Promise<void>
  getRun(id: string): Promise<RunRecord | undefined>
  /**
   * Rewrites a run's summary; a finished status also takes the run off the open set. Fenced: refused with
   * KDL_ERR_WF_RUN_LOST unless `owner` holds the run's claim (Redis; the file store has one owner).
   */
  putRun(run: RunRecord, owner: string): Promise<void>
  /** Runs of one workflow, newest first; `before` (a run id) pages on. */
  listRuns(workflow: string, page: { limit: number; before?: string | undefined; status?: RunStatus | undefined }): Promise<RunRecord[]>
  /** Appends to a run's log, in order, durably before resolving. Fenced like putRun. */
  append(id: string, owner: string, events: RunEvent[]): Promise<void>
  /** The whole log, in append order (a torn last entry of a crash is dropped). */
  readLog(id: string): Promise<RunEvent[]>
  /** Every run not finished, with when each is due. */
  openRuns(): Promise<OpenRun[]>
  /**
   * Takes a run for `owner` for `ttlMs` (only one owner at a time; renewed with `renew`): true when taken,
   * or already held by `owner`. The file store's single process always gets it.
   */
  claim(id: string, owner: string, ttlMs: number): Promise<boolean>
  /** Renews the claims `owner` still holds among `ids`; resolves the ids whose claim was lost. */
  renew(ids: readonly string[], owner: string, ttlMs: number): Promise<string[]>
  /** Gives a claim up (a clean stop, a parked or finished run). */
  release(id: string, owner: string): Promise<void>
  /** Marks `cancelRequested` on an unfinished run; resolves the run as it now is (undefined: no such run). */
  requestCancel(id: string): Promise<RunRecord | undefined>
  close(): Promise<void>
}
