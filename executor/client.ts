import type { Dispatcher } from 'undici'
import type { InstanceAddress, PersistenceMode, StartKind } from '../common/types.js'

/**
 * The only executor file the router imports: what the data plane may ask of the control plane.
 * In `kindling up` the Executor implements it in-process; a cluster router gets a remote one.
 */

/** What the router needs to route and limit calls to one function version. */
export interface RouteSpec {
  name: string
  version: number
  mode: PersistenceMode
  concurrency: number
  maxInstances: number
  queueTimeoutMs: number
  timeoutMs: number
  idleTimeoutMs: number
  /** Recycle mode: calls an instance serves, and how long it lives, before the router retires it. */
  maxInvocations: number
  maxAgeMs: number
}

/** One version an alias routes to, and its share of the alias's calls (`weight` over the targets' total). */
export interface RouteTarget {
  spec: RouteSpec
  weight: number
}

/** Where the calls of `name[@qualifier]` go (issue 15): one version, or several by weight. */
export interface ResolvedRoute {
  /** The segment the call named: `name`, `name@alias` or `name@7`. */
  key: string
  name: string
  /** The alias (`latest` for the bare name) or the version number. */
  qualifier: string
  targets: RouteTarget[]
}

/** A loaded instance handed to the router until it is released. */
export interface Lease {
  instanceId: string
  /**
   * Where the instance's runtime listens (issue 13): what crosses the network between a controller and a remote
   * router. The dispatcher is the router side's connection pool to that address — the executor's own in one
   * process; the remote client's (executor/remote-client.ts), made from `address`, in a cluster router.
   */
  address: InstanceAddress
  dispatcher: Dispatcher
  fn: string
  version: number
  /** How this instance was found: `prewarmed` (code-loaded pool), `specialized` (generic + load), `cold` (started + load). */
  kind: Exclude<StartKind, 'warm'>
  /** Milliseconds spent starting the instance and loading the code for this lease. */
  startMs: number
  loadMs: number
  /** When the instance started (epoch ms): recycle mode retires it after `maxAgeMs`. */
  startedAt: number
}

/**
 * - `ok`: the call finished and the instance may serve again: it stays leased.
 * - `ephemeral`: an ephemeral instance's call finished: destroy (common/modes.ts decides).
 * - `timeout` / `crashed`: the instance can no longer be trusted: destroy.
 * - `retire`: its version is no longer routed (a deploy, an alias change, a rollback) or the function was deleted: destroy.
 * - `idle`: unused for `idleTimeoutMs`: destroy.
 * - `max-invocations` / `max-age`: a recycle instance reached its limits: destroy.
 * - `exhausted`: a recycle instance can no longer load a fresh copy of its function: destroy.
 * - `handover` (issue 13, cluster routers): an idle instance another router needs (`instance-reclaim`): kept loaded,
 *   unleased, for the next acquire of its version — destroyed if none comes within its `idleTimeoutMs`.
 */
export type ReleaseOutcome = 'ok' | 'ephemeral' | 'timeout' | 'crashed' | 'retire' | 'idle' | 'max-invocations' | 'max-age' | 'exhausted' | 'handover'

export type ExecutorEvent =
  /**
   * A deploy, alias change, canary step, rollback or delete: the function's routes are looked up again.
   * `live`: versions still routed — their instances stay; any other version's retire as their calls end.
   */
  | { type: 'function-changed'; name: string; live: readonly number[] }
  | { type: 'instance-gone'; name: string; instanceId: string; reason: string }
  /**
   * The instance must go once its calls in flight end (a quarantined function's instance its backend cannot move
   * into the quarantine group — a pod stays on its node): the router takes no new call on it and releases it.
   */
  | { type: 'instance-retire'; name: string; instanceId: string }
  /**
   * Issue 13: another router needs an instance of this function and `maxInstances` are all held: the holder gives
   * this one back (`handover`) if it carries no call and none waits for it; otherwise it keeps it.
   */
  | { type: 'instance-reclaim'; name: string; instanceId: string }

export interface ExecutorClient {
  /**
   * Where `name[@qualifier]` routes now: KDL_ERR_FN_NOT_FOUND when the function is not deployed,
   * KDL_ERR_VERSION_NOT_FOUND for an unknown alias or version.
   */
  resolve(key: string): Promise<ResolvedRoute>
  /** A loaded instance of this version (any version still stored): prewarmed, else specialized, else cold. */
  acquire(name: string, version: number): Promise<Lease>
  /** Gives an instance back after a call; resolves true when the same instance is loaded and ready again. */
  release(lease: Lease, outcome: ReleaseOutcome): Promise<boolean>
  /** Why a call on this lease failed at the transport level: `oom` or `crashed`. */
  diagnose(lease: Lease): Promise<'oom' | 'crashed'>
  /** Function changes and instance losses, so the router's table never points at a dead or stale instance. */
  subscribe(listener: (e: ExecutorEvent) => void): () => void
}
