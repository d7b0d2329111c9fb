import { KdlError } from '../common/errors.js'

/** A step's error as a run records it: `error` is matched by `retry`/`catch`; `also` are wider names it matches too. */
export interface StepErrorInfo {
  error: string
  cause: string
}

/** A step failed: what `retry` and `catch` look at. */
export class StepError extends Error {
  readonly info: StepErrorInfo
  /** Names beyond `info.error` this error matches (a handler's `OutOfStock` throw also matches KDL_ERR_FN_ERROR). */
  readonly also: readonly string[]

  constructor(error: string, cause: string, also: readonly string[] = []) {
    super(`${error}: ${cause}`)
    this.info = { error, cause }
    this.also = also
  }

  static from(err: unknown): StepError {
    if (err instanceof StepError) return err
    const e = err as { code?: unknown; message?: unknown }
    if (typeof e.code === 'string' && e.code.startsWith('KDL_ERR_')) return new StepError(e.code, typeof e.message === 'string' ? e.message : '')
    return new StepError('KDL_ERR_INTERNAL', err instanceof Error ? err.message : String(err))
  }
}

/** True when a retrier's or catcher's `errors` list takes this error. */
export function matches(names: readonly string[], err: StepError): boolean {
  return names.includes('*') || names.includes(err.info.error) || err.also.some((n) => names.includes(n))
}

/** Byte length of a value as JSON (what a step's payload limit counts). */
export function jsonBytes(value: unknown): number {
  return value === undefined ? 0 : Buffer.byteLength(JSON.stringify(value) ?? '')
}

/** Refuses a payload over the limit as a run error (`catch` can route it). */
export function checkPayload(value: unknown, limit: number, what: string): void {
  const n = jsonBytes(value)
  if (n > limit) throw new StepError('KDL_ERR_WF_PAYLOAD_TOO_LARGE', `${what} is ${n} bytes as JSON, over the ${limit}-byte limit (KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES)`)
}

/** The input with `value` placed at a dotted path (copied along the path; the rest shared). */
export function placeAt(input: unknown, path: string, value: unknown): unknown {
  const keys = path.split('.')
  const root: Record<string, unknown> = isPlainObject(input) ? { ...input } : {}
  let at = root
  for (let i = 0; i < keys.length - 1; i++) {
    const k = keys[i] as string
    const child = at[k]
    const copy: Record<string, unknown> = isPlainObject(child) ? { ...child } : {}
    at[k] = copy
    at = copy
  }
  at[keys[keys.length - 1] as string] = value
  return root
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x)
}

/**
 * JSONata hands back its own sequence arrays (with extra properties) and `undefined` for "no match": a step's
 * data is plain JSON, so it is normalised through a JSON round trip (undefined becomes null).
 */
export function plain(value: unknown): unknown {
  if (value === undefined) return null
  const text = JSON.stringify(value)
  return text === undefined ? null : JSON.parse(text) as unknown
}

/** A run input or definition error (before any run exists). */
export function badInput(message: string): KdlError {
  return new KdlError('KDL_ERR_BAD_REQUEST', message)
}
