import type { Logger } from 'pino'
import { splitQualifier } from '../common/aliases.js'
import { isKdlError, KdlError } from '../common/errors.js'
import type { Metrics } from '../common/metrics.js'
import type { VersionSamples } from '../common/version-samples.js'
import type { ExecutorClient } from '../executor/client.js'
import type { CallOutcome, CallStats } from './call-stats.js'
import type { Granted, InstanceTable, RouteEntry } from './instance-table.js'
import type { ForwardResult } from './proxy.js'

/** Names the caller whose calls a weighted alias sends to the same version (issue 15). */
export const ROUTE_KEY_HEADER = 'x-kindling-route-key'
/** The version that answered, on every answer of a call routed to one. */
export const VERSION_HEADER = 'x-kindling-version'
/** Instances one call may be refused unrun by (x-kindling-retire) before it fails with KDL_ERR_LOAD_FAILED (issue 8). */
const SEND_ATTEMPTS = 3

/**
 * What differs between the ways a call reaches a function: how it is sent to the instance it was granted,
 * and how an error the platform made reaches the caller. The HTTP front streams both ways (`forward`,
 * `sendError`); the in-process invoke of workflow steps (issue 12, router/in-process.ts) buffers the
 * answer and returns the error. `ctx` is the call's own state (the HTTP response, the in-process call):
 * transports are made once, so a call allocates nothing for them.
 */
export interface CallTransport<C> {
  /**
   * Sends the call to `granted`'s instance, bounded by `timeoutMs`. An answer the transport itself refuses
   * (a body over a limit) is delivered through `fail` by the transport and reported as `ok`: the instance is fine.
   */
  send(ctx: C, granted: Granted, path: string, timeoutMs: number): Promise<ForwardResult>
  /** Delivers an error the platform made; `entry` is the version the call was routed to, if one was picked. */
  fail(ctx: C, err: KdlError, entry: RouteEntry | undefined, headers?: Record<string, string>): void
}

export interface CallerDeps {
  table: InstanceTable
  executor: ExecutorClient
  metrics: Metrics
  callStats: CallStats
  samples?: VersionSamples | undefined
  log: Logger
}

/**
 * One call of a function through the router's instance table, whatever carries it: the warm pick, the
 * bounded wait for an instance, the retries of a call no instance read, the verdict on the instance after
 * the call (timeout, crash, OOM, a function that no longer loads), and the call's metrics, dashboard
 * counts and canary samples. Kept in one place so an HTTP call and a workflow step are the same call.
 */
export class Caller {
  readonly #table: InstanceTable
  readonly #executor: ExecutorClient
  readonly #metrics: Metrics
  readonly #callStats: CallStats
  readonly #samples: VersionSamples | undefined
  readonly #log: Logger

  constructor(deps: CallerDeps) {
    this.#table = deps.table
    this.#executor = deps.executor
    this.#metrics = deps.metrics
    this.#callStats = deps.callStats
    this.#samples = deps.samples
    this.#log = deps.log
  }

  /**
   * Runs the call named by `key` (`name`, `name@alias`, `name@7`) to its end: every outcome, an unexpected
   * failure included, reaches the caller through `via`. `boundMs` bounds the call below the function's own
   * `timeoutMs` (in-process calls; undefined on the HTTP front). Never rejects unless `via.fail` throws.
   */
  async run<C>(via: CallTransport<C>, ctx: C, key: string, path: string, routeKey: string | undefined, boundMs: number | undefined): Promise<void> {
    const t0 = performance.now()
    const table = this.#table
    const metrics = this.#metrics
    const log = this.#log
    try {
      // The warm path: the route's pick (weights, sticky key), then a free slot of that version.
      let picked = table.pick(key, routeKey)
      let granted: Granted | undefined = picked === undefined ? undefined : table.tryWarm(picked)
      let refusals = 0
      for (let attempt = 1; ; attempt++) {
        if (granted === undefined) {
          try {
            granted = await table.acquire(key, routeKey, attempt > 1, picked)
          } catch (err) {
            const kdl = toKdlError(err)
            const name = picked?.spec.name ?? splitQualifier(key).name
            if (kdl.statusCode >= 500) log.error({ err, fn: name }, 'no instance for call')
            // Unknown names are not labels: a client must not be able to grow the metric set at will.
            const unknown = kdl.code === 'KDL_ERR_FN_NOT_FOUND' || kdl.code === 'KDL_ERR_VERSION_NOT_FOUND'
            metrics.invocations.inc({ function: unknown ? '' : name, version: picked?.versionText ?? '', code: kdl.code })
            if (!unknown) this.#callStats.record(name, 'refused', Number.NaN, undefined)
            if (picked !== undefined) {
              this.#samples?.record(name, picked.spec.version, false, performance.now() - t0)
              via.fail(ctx, kdl, picked, { [VERSION_HEADER]: picked.versionText })
            } else {
              via.fail(ctx, kdl, undefined)
            }
            return
          }
        }
        picked = granted.entry
        const { entry, slot, kind } = granted
        const name = entry.spec.name
        // At least 1 ms: undici reads a timeout of 0 as none.
        const timeoutMs = boundMs !== undefined && boundMs < entry.spec.timeoutMs ? Math.max(1, boundMs) : entry.spec.timeoutMs
        let outcome: CallOutcome = 'ok'
        const result = await via.send(ctx, granted, path, timeoutMs)
        if (result.outcome === 'unsent' && result.retire === true) refusals++
        if (result.outcome === 'unsent' && refusals < SEND_ATTEMPTS && performance.now() - t0 < timeoutMs) {
          // The instance was gone before the call reached it (issue 8): its slot goes, the call takes another —
          // until the call's deadline (a dead instance says nothing about the next one). An instance that
          // refused the call unrun (its function no longer loads) may be followed by others that do: those
          // count, SEND_ATTEMPTS at most.
          log.warn({ fn: name, instance: slot.lease.instanceId, attempt }, result.retire === true ? 'instance refused the call unrun: trying another' : 'instance gone before the call was sent: trying another')
          metrics.retries.inc({ stage: 'send' })
          table.done(entry, slot, result.retire === true ? 'exhausted' : 'crashed')
          granted = undefined
          continue
        }
        if (result.outcome === 'ok') {
          if (result.retire === true) table.retire(entry, slot, 'exhausted')
          table.done(entry, slot, 'ok')
          entry.countStatus(result.status)
          if (result.status >= 500) outcome = 'http5xx'
        } else if (result.retire === true) {
          // Refused unrun by instance after instance, out of attempts: the function no longer loads.
          table.done(entry, slot, 'exhausted')
          outcome = 'refused'
          const err = new KdlError('KDL_ERR_LOAD_FAILED', `function "${name}" no longer loads a fresh copy in its instances; see its logs`)
          metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
          via.fail(ctx, err, entry, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
        } else if (result.outcome === 'timeout') {
          table.done(entry, slot, 'timeout')
          outcome = 'timeout'
          const err = new KdlError('KDL_ERR_FN_TIMEOUT', `function "${name}" did not answer within ${timeoutMs} ms; its instance was replaced`)
          metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
          via.fail(ctx, err, entry, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
        } else {
          const why = await this.#executor.diagnose(slot.lease).catch(() => 'crashed' as const)
          table.done(entry, slot, 'crashed')
          const err = why === 'oom'
            ? new KdlError('KDL_ERR_FN_OOM', `function "${name}" exceeded its memory limit; its instance was killed`)
            : new KdlError('KDL_ERR_FN_CRASHED', `function "${name}" crashed during the call on instance ${slot.lease.instanceId} (${(result.error as Error | undefined)?.message ?? 'connection lost'})`)
          outcome = why === 'oom' ? 'oom' : 'crashed'
          log.warn({ fn: name, instance: slot.lease.instanceId, code: err.code }, 'instance lost during call')
          metrics.invocations.inc({ function: name, version: entry.versionText, code: err.code })
          via.fail(ctx, err, entry, { 'x-kindling-error': 'unhandled', [VERSION_HEADER]: entry.versionText })
        }
        const ms = performance.now() - t0
        entry.observeDuration(ms / 1000)
        this.#callStats.record(name, outcome, ms, kind)
        this.#samples?.record(name, entry.spec.version, outcome === 'ok', ms)
        return
      }
    } catch (err) {
      // A bug or an unexpected backend failure: the caller still gets an answer, the platform stays up.
      log.error({ err }, 'invocation failed unexpectedly')
      via.fail(ctx, toKdlError(err), undefined)
    }
  }
}

/** Fastify's own errors (body too large, bad JSON) mapped onto the platform's codes. */
export function toKdlError(err: unknown): KdlError {
  if (isKdlError(err)) return err
  const e = err as { code?: string; statusCode?: number; message?: string }
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', e.message ?? 'request body too large', { cause: err })
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new KdlError('KDL_ERR_BAD_REQUEST', e.message ?? 'bad request', { cause: err })
  }
  return new KdlError('KDL_ERR_INTERNAL', 'internal error', { cause: err })
}
