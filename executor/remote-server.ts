import { timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { errorBody, isKdlError, KdlError } from '../common/errors.js'
import type { ExecutorClient, ExecutorEvent, Lease, ReleaseOutcome, ResolvedRoute } from './client.js'

/**
 * The executor's side of the network between a controller and its routers (issue 13). A router in a cluster
 * asks over HTTP/1.1 + JSON what a router in one process asks in-process (executor/client.ts): resolve, acquire,
 * release, diagnose; and follows the executor's events on one long NDJSON stream. A lease crosses the network as
 * what it names — the instance's address — and the router connects to the instance itself: warm calls never
 * come here. Wire format: runtimes/PROTOCOL.md's sibling, docs/ARCHITECTURE.md "Kindling as a cluster".
 */

/** A lease as it crosses the network: everything but the router side's connection pool. */
export type WireLease = Omit<Lease, 'dispatcher'>

export const RELEASE_OUTCOMES: readonly ReleaseOutcome[] = ['ok', 'ephemeral', 'timeout', 'crashed', 'retire', 'idle', 'max-invocations', 'max-age', 'exhausted', 'handover']

/** What the server needs of the executor: the router's contract, plus taking over leases of an earlier leader. */
export interface RemoteExecutorTarget extends ExecutorClient {
  adoptLease(lease: Pick<Lease, 'instanceId' | 'fn' | 'version'>): Promise<boolean>
  routedVersions(): Record<string, number[]>
}

/** The first line of the event stream: which controller this is, and what every function routes to now. */
export interface StreamHello {
  type: 'hello'
  controller: string
  routed: Record<string, number[]>
}

/** A function's route right after its change (`seq` = that change's): the bare name's answer to resolve. */
export interface StreamRoute {
  type: 'route'
  name: string
  seq: number
  route: ResolvedRoute
}

export const EXECUTOR_PATH = '/executor/v1'
/** A line on an idle event stream, so both ends notice a dead connection. */
export const HEARTBEAT_MS = 5_000
/** A router whose event stream is gone this long is gone: the instances it held are destroyed. */
export const ROUTER_GONE_MS = 20_000
const MAX_BODY = 4 * 1024 * 1024
/** Longest an acquisition waits for other routers to hand an idle instance over (and at most its queue timeout). */
const RECLAIM_WAIT_MS = 2_000
/** How long one holder is given to answer a reclaim before the next one is asked. */
const RECLAIM_STEP_MS = 250

export interface RemoteExecutorServerOptions {
  executor: RemoteExecutorTarget
  /** This controller's identity (its replica or pod name): routers see a new one after a failover. */
  controller: string
  /** Bearer token routers present (KINDLING_EXECUTOR_TOKEN); none: no check (the network policy is the fence). */
  token?: string | undefined
  log: Logger
  routerGoneMs?: number
}

interface RouterState {
  leases: Map<string, Pick<Lease, 'instanceId' | 'fn' | 'version'>>
  streams: number
  goneTimer: NodeJS.Timeout | undefined
}

export class RemoteExecutorServer {
  readonly #o: RemoteExecutorServerOptions
  readonly #server: Server
  readonly #routers = new Map<string, RouterState>()
  readonly #streams = new Set<ServerResponse>()
  /** Changes per function so far: the `seq` of its function-changed and route lines. */
  readonly #changes = new Map<string, number>()
  /** Acquisitions waiting for a router to give an instance back (#reclaim). */
  readonly #onFreed = new Set<() => void>()
  #unsubscribe: (() => void) | undefined
  #heartbeat: NodeJS.Timeout | undefined

  constructor(opts: RemoteExecutorServerOptions) {
    this.#o = opts
    this.#server = createServer((req, res) => { void this.#handle(req, res) })
    this.#server.keepAliveTimeout = 65_000
  }

  async listen(host: string, port: number): Promise<number> {
    this.#unsubscribe = this.#o.executor.subscribe((e) => this.#broadcast(e))
    this.#heartbeat = setInterval(() => { for (const s of this.#streams) s.write('{"type":"ping"}\n') }, HEARTBEAT_MS)
    this.#heartbeat.unref()
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(port, host, () => { this.#server.off('error', reject); resolve() })
    })
    const a = this.#server.address()
    return typeof a === 'object' && a !== null ? a.port : port
  }

  /** Leases held per router (the `GET /v1/cluster` view and the tests). */
  leases(): Record<string, number> {
    return Object.fromEntries([...this.#routers].map(([id, r]) => [id, r.leases.size]))
  }

  async close(): Promise<void> {
    this.#unsubscribe?.()
    clearInterval(this.#heartbeat)
    for (const r of this.#routers.values()) clearTimeout(r.goneTimer)
    for (const s of this.#streams) s.end()
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#server.closeAllConnections()
    await closed
  }

  #router(id: string): RouterState {
    let r = this.#routers.get(id)
    if (r === undefined) {
      r = { leases: new Map(), streams: 0, goneTimer: undefined }
      this.#routers.set(id, r)
    }
    return r
  }

  /** Instances of one version the routers hold. */
  #held(fn: string, version: number): number {
    let n = 0
    for (const r of this.#routers.values()) for (const l of r.leases.values()) if (l.fn === fn && l.version === version) n++
    return n
  }

  /**
   * All `max` instances of the version are held by routers: asks the other routers holding them, one instance at a
   * time, to hand an idle one over (`instance-reclaim`); true once one is given back within `waitMs`. A holder
   * whose instance carries a call, or has calls waiting, keeps it: the next one is asked.
   */
  async #reclaim(fn: string, version: number, asker: string, max: number, waitMs: number): Promise<boolean> {
    const deadline = performance.now() + waitMs
    const candidates: string[] = []
    for (const [id, r] of this.#routers) {
      if (id === asker) continue
      for (const l of r.leases.values()) if (l.fn === fn && l.version === version) candidates.push(l.instanceId)
    }
    for (const instanceId of candidates) {
      if (this.#held(fn, version) < max) return true
      const left = deadline - performance.now()
      if (left <= 0) break
      this.#write({ type: 'instance-reclaim', name: fn, instanceId } satisfies ExecutorEvent)
      if (await this.#freedWithin(Math.min(left, RECLAIM_STEP_MS))) continue
    }
    return this.#held(fn, version) < max
  }

  /** Resolves true when a router gives a lease back within `ms`, false otherwise. */
  #freedWithin(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (v: boolean): void => { clearTimeout(timer); this.#onFreed.delete(wake); resolve(v) }
      const wake = (): void => done(true)
      const timer = setTimeout(() => done(false), ms)
      this.#onFreed.add(wake)
    })
  }

  #freed(): void {
    for (const wake of [...this.#onFreed]) wake()
  }

  #broadcast(e: ExecutorEvent): void {
    if (e.type === 'instance-gone') {
      for (const r of this.#routers.values()) r.leases.delete(e.instanceId)
      this.#freed()
    }
    if (e.type !== 'function-changed') {
      this.#write(e)
      return
    }
    // The function's new route follows its change on the stream, so a router's first call after a deploy does not
    // ask for it (one round trip fewer on the cold path). `seq` ties the route to the change it follows.
    const seq = (this.#changes.get(e.name) ?? 0) + 1
    this.#changes.set(e.name, seq)
    this.#write({ ...e, seq })
    if (e.live.length === 0) return
    this.#o.executor.resolve(e.name).then(
      (route) => { if (this.#changes.get(e.name) === seq) this.#write({ type: 'route', name: e.name, seq, route } satisfies StreamRoute) },
      () => { /* deleted meanwhile: the router asks when it needs to */ },
    )
  }

  #write(e: object): void {
    const line = `${JSON.stringify(e)}\n`
    for (const s of this.#streams) s.write(line)
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (!this.#authorized(req)) throw new KdlError('KDL_ERR_UNAUTHORIZED', 'missing or wrong executor token')
      const routerId = String(req.headers['x-kindling-router'] ?? '')
      if (!/^[A-Za-z0-9._-]{1,128}$/.test(routerId)) throw new KdlError('KDL_ERR_BAD_REQUEST', 'x-kindling-router must name the router (1-128 of A-Za-z0-9._-)')
      const path = (req.url ?? '').split('?')[0]
      if (req.method === 'GET' && path === `${EXECUTOR_PATH}/events`) return this.#events(routerId, req, res)
      if (req.method !== 'POST') throw new KdlError('KDL_ERR_NOT_FOUND', `no route ${req.method} ${path}`)
      const body = await readJson(req)
      const ex = this.#o.executor
      const router = this.#router(routerId)
      let answer: unknown
      switch (path) {
        case `${EXECUTOR_PATH}/resolve`:
          answer = await ex.resolve(str(body, 'key'))
          break
        case `${EXECUTOR_PATH}/acquire`: {
          const name = str(body, 'name')
          const version = int(body, 'version')
          // Each router keeps its function under maxInstances; across N routers the controller keeps the sum under it.
          const spec = (await ex.resolve(`${name}@${version}`)).targets[0]?.spec
          const max = spec?.maxInstances ?? Infinity
          if (this.#held(name, version) >= max && !await this.#reclaim(name, version, routerId, max, Math.min(spec?.queueTimeoutMs ?? 0, RECLAIM_WAIT_MS))) {
            throw new KdlError('KDL_ERR_SATURATED', `function "${name}" has ${max} instances (maxInstances) across the routers, none of them idle`, { headers: { 'retry-after': '1' } })
          }
          const lease = await ex.acquire(name, version)
          router.leases.set(lease.instanceId, { instanceId: lease.instanceId, fn: lease.fn, version: lease.version })
          const { dispatcher: _local, ...wire } = lease
          answer = wire satisfies WireLease
          break
        }
        case `${EXECUTOR_PATH}/release`: {
          const lease = leaseOf(body)
          const outcome = body['outcome'] as ReleaseOutcome
          if (!RELEASE_OUTCOMES.includes(outcome)) throw new KdlError('KDL_ERR_BAD_REQUEST', `outcome must be one of ${RELEASE_OUTCOMES.join(', ')}`)
          const ready = await ex.release(lease as Lease, outcome)
          if (!ready && router.leases.delete(lease.instanceId)) this.#freed()
          answer = { ready }
          break
        }
        case `${EXECUTOR_PATH}/diagnose`:
          answer = { reason: await ex.diagnose(leaseOf(body) as Lease) }
          break
        case `${EXECUTOR_PATH}/adopt`: {
          const list = body['leases']
          if (!Array.isArray(list)) throw new KdlError('KDL_ERR_BAD_REQUEST', 'leases must be an array')
          const adopted: string[] = []
          const gone: string[] = []
          for (const item of list) {
            const lease = leaseOf(item as Record<string, unknown>)
            if (await ex.adoptLease(lease)) {
              adopted.push(lease.instanceId)
              router.leases.set(lease.instanceId, lease)
            } else {
              gone.push(lease.instanceId)
            }
          }
          if (adopted.length + gone.length > 0) this.#o.log.info({ router: routerId, adopted: adopted.length, gone: gone.length }, 'a router handed over its instances')
          answer = { adopted, gone }
          break
        }
        default:
          throw new KdlError('KDL_ERR_NOT_FOUND', `no route POST ${path}`)
      }
      const text = JSON.stringify(answer)
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
      res.end(text)
    } catch (err) {
      const e = isKdlError(err) ? err : new KdlError('KDL_ERR_INTERNAL', (err as Error).message, { cause: err })
      if (!isKdlError(err)) this.#o.log.error({ err }, 'executor request failed')
      if (res.headersSent) { res.destroy(); return }
      const text = JSON.stringify(errorBody(e))
      res.writeHead(e.statusCode, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...e.headers })
      res.end(text)
    }
  }

  #events(routerId: string, req: IncomingMessage, res: ServerResponse): void {
    const router = this.#router(routerId)
    router.streams++
    clearTimeout(router.goneTimer)
    router.goneTimer = undefined
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
    res.socket?.setNoDelay(true)
    const hello: StreamHello = { type: 'hello', controller: this.#o.controller, routed: this.#o.executor.routedVersions() }
    res.write(`${JSON.stringify(hello)}\n`)
    this.#streams.add(res)
    const done = (): void => {
      if (!this.#streams.delete(res)) return
      if (--router.streams > 0) return
      // Gone for good (not a reconnect): what it held serves nobody.
      router.goneTimer = setTimeout(() => void this.#routerGone(routerId), this.#o.routerGoneMs ?? ROUTER_GONE_MS)
      router.goneTimer.unref()
    }
    req.on('close', done)
    res.on('close', done)
  }

  async #routerGone(id: string): Promise<void> {
    const router = this.#routers.get(id)
    if (router === undefined || router.streams > 0) return
    this.#routers.delete(id)
    if (router.leases.size > 0) this.#freed()
    if (router.leases.size > 0) this.#o.log.warn({ router: id, instances: router.leases.size }, 'a router is gone: destroying the instances it held')
    for (const lease of router.leases.values()) {
      await this.#o.executor.release(lease as Lease, 'retire').catch((err: unknown) => this.#o.log.warn({ err, instance: lease.instanceId }, 'cannot release an instance of a gone router'))
    }
  }

  #authorized(req: IncomingMessage): boolean {
    const want = this.#o.token
    if (want === undefined) return true
    const got = Buffer.from(String(req.headers.authorization ?? ''))
    const expected = Buffer.from(`Bearer ${want}`)
    return got.length === expected.length && timingSafeEqual(got, expected)
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY) throw new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `executor requests are at most ${MAX_BODY} bytes`)
    chunks.push(chunk as Buffer)
  }
  try {
    const v: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object')
    return v as Record<string, unknown>
  } catch (err) {
    throw new KdlError('KDL_ERR_BAD_REQUEST', `the body must be a JSON object: ${(err as Error).message}`)
  }
}

function str(o: Record<string, unknown>, key: string): string {
  const v = o[key]
  if (typeof v !== 'string' || v === '' || v.length > 1024) throw new KdlError('KDL_ERR_BAD_REQUEST', `${key} must be a non-empty string`)
  return v
}

function int(o: Record<string, unknown>, key: string): number {
  const v = o[key]
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new KdlError('KDL_ERR_BAD_REQUEST', `${key} must be a positive integer`)
  return v
}

function leaseOf(o: Record<string, unknown>): Pick<Lease, 'instanceId' | 'fn' | 'version'> {
  if (typeof o !== 'object' || o === null) throw new KdlError('KDL_ERR_BAD_REQUEST', 'a lease must be an object')
  const lease = (typeof o['lease'] === 'object' && o['lease'] !== null ? o['lease'] : o) as Record<string, unknown>
  const instanceId = str(lease, 'instanceId')
  if (!/^kdl-[0-9a-f]{12}$/.test(instanceId)) throw new KdlError('KDL_ERR_BAD_REQUEST', 'instanceId is not an instance id')
  return { instanceId, fn: str(lease, 'fn'), version: int(lease, 'version') }
}
