import type { KdlError } from './errors.js'

/**
 * A call the platform makes to a function itself (a workflow step), through the router's instance table —
 * the path an HTTP call takes, without HTTP to the platform. The router implements it (router/app.ts).
 */
export interface InvokeCall {
  method: string
  /** Path and query the function sees (`/`, `/orders?id=1`). */
  path: string
  headers: Record<string, string>
  body: Buffer
  /** Bounds the call below the function's own `timeoutMs` (a workflow task's `timeoutMs`). */
  timeoutMs?: number | undefined
  /** Answers longer than this fail with KDL_ERR_PAYLOAD_TOO_LARGE (the instance is kept). */
  maxResponseBytes: number
}

export interface InvokeResult {
  /** The function's status, or the error's. */
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
  /** The version that answered (undefined when none was picked: unknown function, alias or version). */
  version: number | undefined
  /**
   * Set when the platform, not the function, made the answer: no such function, saturation, timeout, crash,
   * OOM, a function that no longer loads, an answer over `maxResponseBytes`. The handler's own throw is the
   * function's answer (500 with `x-kindling-error: handled`), not this.
   */
  error?: KdlError | undefined
}

/** `key` is `name`, `name@alias` or `name@version`, as in `/fn/:key`. */
export type Invoke = (key: string, call: InvokeCall) => Promise<InvokeResult>
