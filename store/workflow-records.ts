import { KdlError } from '../common/errors.js'
import { assertName, NAME_PATTERN } from '../common/spec.js'
import type { RunRecord, RunStatus, WorkflowRecord } from '../common/workflows.js'

/**
 * What both workflow stores (store/file-workflows.ts, store/redis-workflows.ts) check of the records they
 * are handed and read back, so that the two answer alike.
 */

const nameRe = new RegExp(NAME_PATTERN)
/**
 * A run id as the engine makes them (`<ms base36>-<random>`), kept loose on the alphabet but never a path
 * (no `/`, no leading dot): the file store names a directory after it, and a caller's id comes from a URL.
 */
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/

/** A workflow's name is a DNS label, like a function's (checked by common/spec.ts assertName). */
export function isWorkflowName(name: string): boolean {
  return nameRe.test(name)
}

export function assertWorkflowName(name: string): void {
  assertName('workflow', name)
}

export function assertWorkflowVersion(version: number): void {
  if (!Number.isInteger(version) || version < 1) throw new KdlError('KDL_ERR_WF_NOT_FOUND', `version ${String(version).slice(0, 20)} is not a version number`)
}

export function isRunId(id: string): boolean {
  return RUN_ID.test(id)
}

/** A run id that a write names: one that cannot be a run is a caller's fault, and no run of it exists. */
export function assertRunId(id: string): void {
  if (!isRunId(id)) throw new KdlError('KDL_ERR_WF_RUN_NOT_FOUND', `"${id.slice(0, 80)}" is not a run id`)
}

const FINISHED: ReadonlySet<RunStatus> = new Set(['succeeded', 'failed', 'cancelled'])

export function isFinished(status: RunStatus): boolean {
  return FINISHED.has(status)
}

/** A run's start as epoch ms: the order runs are listed in. */
export function startedMs(run: RunRecord): number {
  const ms = Date.parse(run.startedAt)
  if (!Number.isFinite(ms)) throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} has no valid startedAt (${String(run.startedAt).slice(0, 40)})`)
  return ms
}

/** A wakeAt as the open set scores it: 0 is due now. */
export function wakeScore(run: RunRecord): number {
  return run.wakeAt !== undefined && Number.isFinite(run.wakeAt) && run.wakeAt > 0 ? run.wakeAt : 0
}

export function runNotFound(id: string): KdlError {
  return new KdlError('KDL_ERR_WF_RUN_NOT_FOUND', `no workflow run "${id}" is on record`)
}

export function runLost(id: string, owner: string): KdlError {
  return new KdlError('KDL_ERR_WF_RUN_LOST', `run ${id} is not held by ${owner} (its claim lapsed and another replica may have taken it over)`)
}

/** Parses a stored JSON object; `where` names it in the error (a file, a key). */
export function parseStored(text: string, where: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored ${where} is not valid JSON`, { cause: err })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new KdlError('KDL_ERR_INTERNAL', `stored ${where} is not a JSON object`)
  return value as Record<string, unknown>
}

export function parseWorkflow(text: string, where: string, name: string, version?: number): WorkflowRecord {
  const value = parseStored(text, where)
  if (value.name !== name || typeof value.version !== 'number' || (version !== undefined && value.version !== version)) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored ${where} does not hold workflow "${name}"${version === undefined ? '' : ` version ${version}`}`)
  }
  return value as unknown as WorkflowRecord
}

export function parseRun(text: string, where: string, id: string): RunRecord {
  const value = parseStored(text, where)
  if (value.id !== id || typeof value.workflow !== 'string' || typeof value.status !== 'string' || typeof value.startedAt !== 'string') {
    throw new KdlError('KDL_ERR_INTERNAL', `stored ${where} does not hold run ${id}`)
  }
  return value as unknown as RunRecord
}

/** Checks a run handed to createRun or putRun. */
export function assertRun(run: RunRecord): void {
  if (!isRunId(run.id)) throw new KdlError('KDL_ERR_INTERNAL', `"${String(run.id).slice(0, 80)}" is not a run id`)
  assertWorkflowName(run.workflow)
  if (!['running', 'succeeded', 'failed', 'cancelled'].includes(run.status)) throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} has no valid status`)
  startedMs(run)
}

/** Newest first: by start, then by id (the order a Redis sorted set lists in reverse, member bytes included). */
export function newestFirst(a: { startedMs: number; id: string }, b: { startedMs: number; id: string }): number {
  if (a.startedMs !== b.startedMs) return b.startedMs - a.startedMs
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0
}

/** Each event's JSON (one line: JSON.stringify escapes every newline); one that is not a JSON object is refused before anything is written. */
export function eventJson(events: readonly unknown[], label: string): string[] {
  return events.map((event, i) => {
    if (typeof event !== 'object' || event === null || Array.isArray(event)) throw new KdlError('KDL_ERR_INTERNAL', `event ${i} for ${label} is not a JSON object`)
    try {
      return JSON.stringify(event)
    } catch (err) {
      throw new KdlError('KDL_ERR_INTERNAL', `event ${i} for ${label} cannot be written as JSON`, { cause: err })
    }
  })
}
