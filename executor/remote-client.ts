import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { Pool, type Dispatcher } from 'undici'
import { KdlError, isKdlError, type ErrorCode, ERROR_CODES } from '../common/errors.js'
import { dispatcherFor } from '../protocol/runtime-client.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, ResolvedRoute } from './client.js'
import { EXECUTOR_PATH, HEARTBEAT_MS, type StreamHello, type StreamRoute, type WireLease } from './remote-server.js'

/**
 * A cluster router's executor (issue 13): the same contract as the in-process Executor, over the network to the
 * controller's RemoteExecutorServer (through its Service, which only the elected leader backs). A lease arrives as
 * an address; the connection pool to it is made here and closed when the instance is given back or gone, so the
 * router's warm path is unchanged: no control-plane call, straight to the instance.
 *
 * Failover: the event stream's first line names the controller. When it names another one than before, the router
 * hands over every instance it holds (`adopt`) — their warm calls went on meanwhile — and drops the routes of the
 * functions whose versions changed while it was away. A controller that cannot be reached answers
 * `503 KDL_ERR_CONTROLLER_UNAVAILABLE` to what needs it (resolve, acquire); a release that cannot be sent is kept
 * and sent after the hand-over.
 */
export interface RemoteExecutorClientOptions {
  /** The controller's executor origin, `http://host:port` (KINDLING_EXECUTOR_URL). */
  url: string
  token?: string | undefined
  log: Logger
  /** This router's identity (its pod name, plus a random suffix per process). */
  routerId?: string
  /** Longest wait for an answer of the controller. @default 60000 */
  timeoutMs?: number
}

interface Held {
  lease: Lease
  /** A release the controller did not get (unreachable): sent once a controller answers again. */
  pending?: ReleaseOutcome
}

const RETRY_AFTER = { 'retry-after': '1' }

export class RemoteExecutorClient implements ExecutorClient {
  readonly routerId: string
  readonly #o: RemoteExecutorClientOptions
  readonly #pool: Pool
  readonly #listeners = new Set<(e: ExecutorEvent) => void>()
  readonly #held = new Map<string, Held>()
  /** Functions this router has asked about: the ones whose routes it may hold. */
  readonly #known = new Set<string>()
  /** Bare names' routes the controller pushed after their last change, and the seq of that change. */
  readonly #routes = new Map<string, ResolvedRoute>()
  readonly #seqs = new Map<string, number>()
  #controller: string | undefined
  #connected = false
  #reached = false
  #closed = false
  #stream: AbortController | undefined
  #loop: Promise<void> | undefined
  #wake: (() => void) | undefined
  #firstHello: { promise: Promise<void>; resolve: () => void }

  constructor(opts: RemoteExecutorClientOptions) {
    this.#o = opts
    this.routerId = opts.routerId ?? `router-${randomBytes(4).toString('hex')}`
    this.#pool = new Pool(opts.url, { connections: 64, pipelining: 1, keepAliveTimeout: 60_000 })
    let resolve = (): void => {}
    this.#firstHello = { promise: new Promise<void>((r) => { resolve = r }), resolve }
    this.#firstHello.resolve = resolve
  }

  /** True while the event stream to a controller is open. */
  get connected(): boolean {
    return this.#connected
  }

  /**
   * True once the stream has opened (the router's readiness): a router that has reached a controller once keeps
   * serving its warm calls while the controller is away (a leader hand-over), so it stays Ready.
   */
  get reachedController(): boolean {
    return this.#reached
  }

  /** The controller that answers now (the leader's identity). */
  get controller(): string | undefined {
    return this.#controller
  }

  /** Starts following the controller's events; resolves once connected the first time (or at once if `wait` is false). */
  start(wait = true): Promise<void> {
    this.#loop ??= this.#follow()
    return wait ? this.#firstHello.promise : Promise.resolve()
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#stream?.abort()
    this.#wake?.()
    await this.#loop
    for (const h of this.#held.values()) void h.lease.dispatcher.close().catch(() => {})
    this.#held.clear()
    await this.#pool.close()
  }

  async resolve(key: string): Promise<ResolvedRoute> {
    // Pushed after the function's last change (the stream is ordered: nothing changed it since).
    const pushed = this.#routes.get(key)
    if (pushed !== undefined) return pushed
    const route = await this.#call<ResolvedRoute>('resolve', { key })
    this.#known.add(route.name)
    return route
  }

  async acquire(name: string, version: number): Promise<Lease> {
    const wire = await this.#call<WireLease>('acquire', { name, version })
    const lease: Lease = { ...wire, dispatcher: dispatcherFor(wire.address) }
    this.#held.set(lease.instanceId, { lease })
    return lease
  }

  async release(lease: Lease, outcome: ReleaseOutcome): Promise<boolean> {
    const held = this.#held.get(lease.instanceId)
    try {
      const { ready } = await this.#call<{ ready: boolean }>('release', { lease: wireOf(lease), outcome })
      if (!ready) this.#drop(lease.instanceId)
      return ready
    } catch (err) {
      if (!isKdlError(err) || err.code !== 'KDL_ERR_CONTROLLER_UNAVAILABLE' || held === undefined) {
        this.#drop(lease.instanceId)
        return false
      }
      // The controller is away: the router lets go of the slot now; the controller hears of it after the hand-over.
      held.pending = outcome === 'ok' ? 'idle' : outcome
      void held.lease.dispatcher.close().catch(() => {})
      return false
    }
  }

  async diagnose(lease: Lease): Promise<'oom' | 'crashed'> {
    try {
      const { reason } = await this.#call<{ reason: 'oom' | 'crashed' }>('diagnose', { lease: wireOf(lease) })
      return reason === 'oom' ? 'oom' : 'crashed'
    } catch {
      return 'crashed'
    }
  }

  subscribe(listener: (e: ExecutorEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Leases this router holds (tests, `GET /v1/cluster`). */
  held(): number {
    let n = 0
    for (const h of this.#held.values()) if (h.pending === undefined) n++
    return n
  }

  #drop(id: string): void {
    const h = this.#held.get(id)
    if (h === undefined) return
    this.#held.delete(id)
    void h.lease.dispatcher.close().catch(() => {})
  }

  #emit(e: ExecutorEvent): void {
    for (const l of this.#listeners) {
      try { l(e) } catch (err) { this.#o.log.error({ err }, 'executor event listener threw') }
    }
  }

  #headers(json: boolean): Record<string, string> {
    return {
      'x-kindling-router': this.routerId,
      ...(json ? { 'content-type': 'application/json' } : {}),
      ...(this.#o.token === undefined ? {} : { authorization: `Bearer ${this.#o.token}` }),
    }
  }

  async #call<T>(op: string, body: unknown): Promise<T> {
    const timeout = this.#o.timeoutMs ?? 60_000
    let res: Dispatcher.ResponseData
    try {
      res = await this.#pool.request({
        method: 'POST', path: `${EXECUTOR_PATH}/${op}`, headers: this.#headers(true), body: JSON.stringify(body),
        headersTimeout: timeout, bodyTimeout: timeout,
      })
    } catch (err) {
      throw new KdlError('KDL_ERR_CONTROLLER_UNAVAILABLE', `the controller does not answer (${(err as Error).message}); warm calls are still served`, { cause: err, headers: RETRY_AFTER })
    }
    const text = await res.body.text().catch(() => '')
    let json: Record<string, unknown> = {}
    try { json = JSON.parse(text) as Record<string, unknown> } catch { /* not JSON: below */ }
    if (res.statusCode === 200) return json as T
    const code = typeof json['code'] === 'string' && Object.hasOwn(ERROR_CODES, json['code']) ? json['code'] as ErrorCode : undefined
    // A Service with no Ready endpoint, a proxy in between: not the executor's own answer.
    if (code === undefined) throw new KdlError('KDL_ERR_CONTROLLER_UNAVAILABLE', `the controller answered ${res.statusCode} to ${op}`, { headers: RETRY_AFTER })
    const { statusCode: _s, code: _c, error: _e, message, ...details } = json
    throw new KdlError(code, typeof message === 'string' ? message : `${op} failed`, { details: Object.keys(details).length > 0 ? details : undefined })
  }

  /** Follows the event stream for the client's life: reconnects (back-off to 2 s) whenever it ends. */
  async #follow(): Promise<void> {
    let backoff = 100
    while (!this.#closed) {
      const abort = new AbortController()
      this.#stream = abort
      try {
        const res = await this.#pool.request({
          method: 'GET', path: `${EXECUTOR_PATH}/events`, headers: this.#headers(false), signal: abort.signal,
          headersTimeout: 10_000, bodyTimeout: HEARTBEAT_MS * 3,
        })
        if (res.statusCode !== 200) {
          await res.body.text().catch(() => '')
          throw new Error(`the event stream answered ${res.statusCode}`)
        }
        let rest = ''
        for await (const chunk of res.body) {
          rest += (chunk as Buffer).toString('utf8')
          let nl: number
          while ((nl = rest.indexOf('\n')) >= 0) {
            const line = rest.slice(0, nl)
            rest = rest.slice(nl + 1)
            if (line !== '') await this.#line(line)
          }
          backoff = 100
        }
      } catch (err) {
        if (!this.#closed) this.#o.log.warn({ err: (err as Error).message, controller: this.#controller }, 'lost the controller\'s event stream; reconnecting')
      }
      if (this.#connected) this.#o.log.warn({ controller: this.#controller }, 'disconnected from the controller')
      this.#connected = false
      if (this.#closed) break
      // Cut short by close(); not unref'd: a router waiting for its controller is not done.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { this.#wake = undefined; resolve() }, backoff)
        this.#wake = () => { clearTimeout(timer); resolve() }
      })
      backoff = Math.min(2_000, backoff * 2)
    }
  }

  async #line(line: string): Promise<void> {
    let e: ExecutorEvent | StreamHello | StreamRoute | { type: 'ping' }
    try { e = JSON.parse(line) as typeof e } catch { return }
    if (e.type === 'ping') return
    if (e.type === 'hello') return this.#hello(e)
    if (e.type === 'route') {
      if (this.#seqs.get(e.name) === e.seq) this.#routes.set(e.name, e.route)
      return
    }
    if (e.type === 'instance-gone') this.#drop(e.instanceId)
    if (e.type === 'function-changed') {
      this.#routes.delete(e.name)
      this.#seqs.set(e.name, (e as { seq?: number }).seq ?? -1)
    }
    this.#emit(e)
  }

  async #hello(h: StreamHello): Promise<void> {
    const before = this.#controller
    this.#controller = h.controller
    // Whatever was pushed before the gap may be stale now.
    this.#routes.clear()
    this.#seqs.clear()
    if (before !== undefined && before !== h.controller) {
      this.#o.log.warn({ from: before, to: h.controller }, 'the controller changed: handing over this router\'s instances')
    }
    // Every (re)connection: the instances held go to the controller that answers now (a no-op on the same one), and
    // releases it missed follow. Until that is done the router is not ready.
    const live = [...this.#held.values()].filter((x) => x.pending === undefined)
    if (live.length > 0) {
      try {
        const { gone } = await this.#call<{ adopted: string[]; gone: string[] }>('adopt', { leases: live.map((x) => wireOf(x.lease)) })
        for (const id of gone) {
          const held = this.#held.get(id)
          this.#drop(id)
          if (held !== undefined) this.#emit({ type: 'instance-gone', name: held.lease.fn, instanceId: id, reason: 'not handed over' })
        }
      } catch (err) {
        this.#o.log.warn({ err }, 'cannot hand over the instances held; retrying on the next connection')
        this.#stream?.abort()
        return
      }
    }
    for (const [id, held] of [...this.#held]) {
      if (held.pending === undefined) continue
      this.#held.delete(id)
      await this.#call('adopt', { leases: [wireOf(held.lease)] })
        .then(() => this.#call('release', { lease: wireOf(held.lease), outcome: held.pending }))
        .catch((err: unknown) => this.#o.log.warn({ err, instance: id }, 'cannot give back an instance released while the controller was away'))
    }
    // Routes changed while away are looked up again: the router keeps only the versions still routed.
    if (before !== undefined) {
      for (const name of this.#known) this.#emit({ type: 'function-changed', name, live: h.routed[name] ?? [] })
    }
    this.#connected = true
    this.#reached = true
    this.#firstHello.resolve()
  }
}

function wireOf(lease: Lease): Omit<WireLease, never> {
  const { dispatcher: _d, ...wire } = lease
  return wire
}
