/**
 * The one error class of the platform and its frozen code table.
 * A shipped code is never renamed or reused; callers match on `err.code`, not `instanceof`.
 */

export interface ErrorCodeInfo {
  /** HTTP status the code is answered with. */
  readonly status: number
  /** One line for the docs and for `GET /v1/errors`-style tooling. */
  readonly description: string
}

export const ERROR_CODES = Object.freeze({
  KDL_ERR_BAD_REQUEST: { status: 400, description: 'The request is malformed (bad JSON, bad parameters).' },
  KDL_ERR_BAD_SPEC: { status: 400, description: 'A function or runtime spec fails validation.' },
  KDL_ERR_BAD_ARCHIVE: { status: 400, description: 'A code archive is not a valid .tar.gz (a deploy) or ustar (a pod\'s code fetch), or holds a hostile entry (absolute path, "..", escaping link, device; on a fetch any link).' },
  KDL_ERR_UNAUTHORIZED: { status: 401, description: 'KINDLING_API_TOKEN is set and the request lacks the matching bearer token.' },
  KDL_ERR_CODE_FORBIDDEN: { status: 403, description: "A code fetch's token does not grant that archive to that instance (missing, tampered, for another instance or archive, expired or revoked)." },
  KDL_ERR_CODE_NOT_FOUND: { status: 404, description: 'A code fetch with a valid token names an archive the code server no longer holds.' },
  KDL_ERR_FN_NOT_FOUND: { status: 404, description: 'No function of that name is deployed.' },
  KDL_ERR_RUNTIME_NOT_FOUND: { status: 404, description: 'No runtime of that name is configured.' },
  KDL_ERR_NOT_FOUND: { status: 404, description: 'No such route.' },
  KDL_ERR_VERSION_NOT_FOUND: { status: 404, description: 'The function has no such version (never deployed, or pruned) or no such alias.' },
  KDL_ERR_CANARY_CONFLICT: { status: 409, description: 'A canary is already running on the alias, or the change would cut it short (abort it first), or it names the version the alias already serves.' },
  KDL_ERR_DEPLOY_SUPERSEDED: { status: 409, description: 'A deploy that waited for its build was not applied: a later deploy or delete of the same function was made meanwhile.' },
  KDL_ERR_PAYLOAD_TOO_LARGE: { status: 413, description: 'The request body (invocation or deploy) exceeds the configured limit.' },
  KDL_ERR_LOAD_FAILED: { status: 422, description: 'The function code does not load (syntax error, missing entrypoint, throwing module).' },
  KDL_ERR_LOAD_TIMEOUT: { status: 422, description: 'The function module did not finish loading within KINDLING_LOAD_TIMEOUT_MS (a top-level loop); its instance was destroyed.' },
  KDL_ERR_BUILD_FAILED: { status: 422, description: "The function's dependencies could not be built (npm failed: missing package, failing install script; or the build ran past its memory or time limit); the answer carries the build id and the log's tail." },
  KDL_ERR_BUILD_NOT_FOUND: { status: 404, description: 'No build of that id is on record.' },
  KDL_ERR_SATURATED: { status: 429, description: 'All instances the function may use are busy and the queue wait ran out; retry after Retry-After.' },
  KDL_ERR_FN_ERROR: { status: 500, description: 'The handler threw or rejected (x-kindling-error: handled).' },
  KDL_ERR_INTERNAL: { status: 500, description: 'A platform fault; the log has the details.' },
  KDL_ERR_FN_CRASHED: { status: 502, description: 'The instance died during the call (process.exit, signal, lost socket).' },
  KDL_ERR_CODE_FETCH: { status: 502, description: "A runtime could not fetch its function's code (network or HTTP failure, the code server's refusal, a timeout, an archive over its size bound), or may not fetch now (a function is loaded)." },
  KDL_ERR_CODE_INTEGRITY: { status: 502, description: 'The code a runtime fetched does not have the sha256 it was granted; nothing of it was unpacked.' },
  KDL_ERR_FN_OOM: { status: 502, description: 'The instance was killed for exceeding its memory limit.' },
  KDL_ERR_NO_CAPACITY: { status: 503, description: 'No instance could be started (backend failure or memory budget exhausted).' },
  KDL_ERR_SHUTTING_DOWN: { status: 503, description: 'The platform is stopping and takes no new calls.' },
  KDL_ERR_FN_TIMEOUT: { status: 504, description: 'The call exceeded the function timeoutMs; the instance was replaced.' },
  KDL_ERR_BACKEND: { status: 500, description: 'The container backend (process, docker, kubernetes) failed; `cause` holds the original error.' },
  KDL_ERR_CONTROLLER_UNAVAILABLE: { status: 503, description: 'A cluster router cannot reach the controller (a leader failover under way): warm calls are still served; retry after Retry-After.' },
  KDL_ERR_STORE_UNAVAILABLE: { status: 503, description: 'The shared store (Redis) does not answer; nothing was changed. Warm calls of known functions are still served; retry after Retry-After.' },
  KDL_ERR_JOB_NOT_FOUND: { status: 404, description: 'No async invocation of that id is on record (never enqueued, or expired).' },
  KDL_ERR_ASYNC_UNAVAILABLE: { status: 503, description: 'Async invocations and triggers need the shared store: start the platform with KINDLING_STORE=redis.' },
  KDL_ERR_TRIGGER_NOT_FOUND: { status: 404, description: 'No trigger of that name is defined.' },
  KDL_ERR_WF_INVALID: { status: 400, description: 'A workflow definition fails validation (unknown state type, a missing or ill-typed field); `state` and `field` name where.' },
  KDL_ERR_WF_UNKNOWN_STATE: { status: 400, description: 'A workflow definition names a state it does not define (`startAt`, `next`, `default`, a choice or a catch).' },
  KDL_ERR_WF_MISSING_NEXT: { status: 400, description: 'A workflow state that does not end the flow has neither `next` nor `end: true`.' },
  KDL_ERR_WF_NO_EXIT: { status: 400, description: 'A workflow definition has states from which no end can be reached (a cycle with no exit).' },
  KDL_ERR_WF_BAD_EXPRESSION: { status: 400, description: 'A JSONata expression of a workflow definition does not parse; `state`, `field` and `position` name where.' },
  KDL_ERR_WF_NOT_FOUND: { status: 404, description: 'No workflow of that name (or version) is defined.' },
  KDL_ERR_WF_RUN_NOT_FOUND: { status: 404, description: 'No workflow run of that id is on record.' },
  KDL_ERR_WF_RUN_FINISHED: { status: 409, description: 'The run has already finished: it cannot be cancelled.' },
  KDL_ERR_WF_RUN_CANCELLED: { status: 409, description: 'The run was cancelled before it finished (the answer of a sync start).' },
  KDL_ERR_WF_RUN_FAILED: { status: 500, description: 'The run failed (the answer of a sync start): `error` and `cause` say why, `run` names it.' },
  KDL_ERR_WF_RUN_LOST: { status: 409, description: 'Another replica took this run over (its claim lapsed): this replica stops advancing it.' },
  KDL_ERR_WF_PAYLOAD_TOO_LARGE: { status: 413, description: "A workflow step's input or output exceeds KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES (a run error, which `catch` can route)." },
  KDL_ERR_WF_EXPRESSION_FAILED: { status: 422, description: 'A JSONata expression failed while a run evaluated it (a type error, `$error()`); a run error, which `catch` can route.' },
  KDL_ERR_WF_NO_CHOICE: { status: 422, description: 'No rule of a `choice` state matched and it has no `default` (a run error).' },
  KDL_ERR_WF_STEP_LIMIT: { status: 422, description: 'A run took more steps than KINDLING_WORKFLOW_MAX_STEPS (a loop that does not end).' },
  KDL_ERR_AGENT_POD_NOT_FOUND: { status: 404, description: "A node agent finds no cgroup of that pod UID (or no container group of that container id) on its node: the pod is gone, not started yet, or on another node." },
  KDL_ERR_AGENT_UNAVAILABLE: { status: 503, description: "A node agent does not answer (no Ready agent pod on the instance's node, a refused or timed-out request, a bad answer): the load guard skips that sample, a throttle is not applied." },
  KDL_ERR_SANDBOX_UNAVAILABLE: { status: 503, description: 'The host lacks a tool the sandbox needs (slirp4netns for network: egress on the process backend); scripts/ensure-sandbox.sh installs it.' },
} as const satisfies Record<string, ErrorCodeInfo>)

export type ErrorCode = keyof typeof ERROR_CODES

export interface KdlErrorOptions {
  cause?: unknown
  /** Extra fields sent to the client beside `{statusCode, code, error, message}`. */
  details?: Record<string, unknown>
  /** Extra response headers (e.g. `retry-after`, `x-kindling-error`). */
  headers?: Record<string, string>
}

export class KdlError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly details: Record<string, unknown> | undefined
  readonly headers: Record<string, string> | undefined

  constructor(code: ErrorCode, message: string, options: KdlErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'KdlError'
    this.code = code
    this.statusCode = ERROR_CODES[code].status
    this.details = options.details
    this.headers = options.headers
  }
}

/** True for anything carrying a known KDL_ERR_* code (match on code, not class). */
export function isKdlError(err: unknown): err is KdlError {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string' &&
    Object.hasOwn(ERROR_CODES, (err as { code: string }).code) && typeof (err as { statusCode?: unknown }).statusCode === 'number'
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 409: 'Conflict', 413: 'Payload Too Large', 422: 'Unprocessable Entity',
  429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
}

/** The JSON body every error answer has: `{statusCode, code, error, message, ...details}`. */
export function errorBody(err: KdlError): Record<string, unknown> {
  return {
    statusCode: err.statusCode,
    code: err.code,
    error: STATUS_TEXT[err.statusCode] ?? 'Error',
    message: err.message,
    ...err.details,
  }
}
