import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import { timingSafeEqual } from 'node:crypto'
import { create, get, list, patch, remove, removeCollection, update, type Target } from './api/crud.js'
import { aggregatedDiscovery, apiGroup, apiGroupList, apiResourceList, apiVersions, VERSION } from './api/discovery.js'
import { checkBodyType, sendError, sendJson } from './api/http.js'
import { openApiGroupVersion, openApiRoot } from './api/openapi.js'
import { binding, eviction, log, scale, type LogsHook } from './api/subresources.js'
import { selfSigned } from './cert.js'
import { ApiError, type ObjectStore, type ResourceType } from './types.js'

/**
 * The stand-in's API server (issue 10), serving the store to real clients — kubectl and @kubernetes/client-node — with discovery, the verbs,
 * watches, patches, subresources and server-side printing (Tables). `pause()` is an API-server outage: every open
 * connection (watches included) is dropped and new ones are destroyed on connect until `resume()`.
 *
 * With a `token` it serves HTTPS with a self-signed certificate (its PEM is `ca`, for the kubeconfig's
 * `certificate-authority-data`): kubectl sends a kubeconfig's credentials only over TLS, so an authenticated
 * `http://` server would refuse kubectl. Without a token it serves plain HTTP and anyone may call.
 *
 * Not served, each a 404/415 a client sees as such: exec, attach, port-forward and proxy; protobuf bodies of kinds
 * other than api/protobuf.ts's, and CBOR; `?limit=` pagination (everything comes in one page, no `continue`);
 * `managedFields` and field ownership (server-side apply is create-or-strategic-merge); `fieldValidation=Strict`'s
 * unknown-field check (the published schemas are checked, unknown fields are kept); authorization (every
 * authenticated request may do anything — RBAC objects are stored, not enforced); disruption budgets on eviction.
 */
export interface ApiServerOptions {
  store: ObjectStore
  /** @default '127.0.0.1' */
  host?: string
  /** @default 0 (any free port) */
  port?: number
  /** The bearer token every request must carry; absent: no authentication. */
  token?: string
  /** Serve HTTPS with a self-signed certificate. @default true when `token` is set */
  tls?: boolean
  /** Where a 5xx (a bug of the stand-in) is reported; 4xx answers are the API's normal business. */
  log?: { error(obj: object, msg: string): void }
  /** The text of `pods/<name>/log` (the kubelet's capture of the container's output). */
  logs?: LogsHook
}

export interface ApiServer {
  url: string
  port: number
  /** The serving certificate (PEM), its own CA; undefined over plain HTTP. */
  ca: string | undefined
  close(): Promise<void>
  pause(): void
  resume(): void
}

const HEALTH = new Set(['/healthz', '/readyz', '/livez'])

function authorized(req: IncomingMessage, token: string | undefined): boolean {
  if (token === undefined) return true
  const h = req.headers.authorization ?? ''
  const m = /^Bearer\s+(.+)$/i.exec(h)
  if (!m) return false
  const a = Buffer.from(m[1]!.trim())
  const b = Buffer.from(token)
  return a.length === b.length && timingSafeEqual(a, b)
}

function wantsAggregated(accept: string | undefined): boolean {
  return accept !== undefined && /as=APIGroupDiscoveryList/.test(accept) && /v=v2(?!beta)/.test(accept)
}

/** Where a path under `/api/v1` or `/apis/<g>/<v>` points. */
function resolve(store: ObjectStore, group: string, version: string, segs: string[]): Target | undefined {
  const typeOf = (r: string | undefined): ResourceType | undefined => (r === undefined ? undefined : store.type(group, version, r))
  if (segs[0] === 'namespaces' && segs.length >= 3) {
    const t = typeOf(segs[2])
    if (t !== undefined && t.namespaced) {
      if (segs.length > 5) return undefined
      return { type: t, namespace: segs[1], name: segs[3], sub: segs[4] }
    }
  }
  const t = typeOf(segs[0])
  if (t === undefined || segs.length > 3) return undefined
  return { type: t, namespace: undefined, name: segs[1], sub: segs[2] }
}

const NOT_FOUND = new ApiError(404, 'NotFound', 'the server could not find the requested resource')
const NOT_ALLOWED = new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')

export async function startApiServer(opts: ApiServerOptions): Promise<ApiServer> {
  const { store, token, logs } = opts
  const host = opts.host ?? '127.0.0.1'
  const sockets = new Set<Socket>()
  let paused = false
  let url = ''

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const u = new URL(req.url ?? '/', 'http://x')
    const path = u.pathname.replace(/\/+$/, '') || '/'
    const q = u.searchParams
    const method = req.method ?? 'GET'
    if (HEALTH.has(path) || path.startsWith('/livez/') || path.startsWith('/readyz/') || path.startsWith('/healthz/')) {
      res.writeHead(200, { 'Content-Type': 'text/plain' })
      res.end('ok')
      return
    }
    // /version is public on the real server too (system:public-info-viewer).
    if (method === 'GET' && path === '/version') { sendJson(res, 200, VERSION); return }
    if (!authorized(req, token)) throw new ApiError(401, 'Unauthorized', 'Unauthorized')
    const accept = req.headers.accept
    if (method === 'POST' || method === 'PUT' || method === 'PATCH') checkBodyType(req)
    if (method === 'GET') {
      if (path === '/api' || path === '/apis') {
        if (wantsAggregated(accept)) {
          const body = JSON.stringify(aggregatedDiscovery(store.types(), path === '/api'))
          res.writeHead(200, { 'Content-Type': 'application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList', 'Content-Length': Buffer.byteLength(body) })
          res.end(body)
          return
        }
        sendJson(res, 200, path === '/api' ? apiVersions(new URL(url).host) : apiGroupList(store.types()))
        return
      }
    }
    if (method === 'GET' && (path === '/openapi/v3' || path.startsWith('/openapi/v3/'))) {
      const doc = path === '/openapi/v3' ? openApiRoot(store.types()) : openApiGroupVersion(store.types(), path.slice('/openapi/v3/'.length))
      if (doc === undefined) throw NOT_FOUND
      sendJson(res, 200, doc)
      return
    }
    const segs = path.split('/').filter((s) => s !== '').map(decodeURIComponent)
    let group: string
    let version: string
    let rest: string[]
    if (segs[0] === 'api' && segs[1] === 'v1') { group = ''; version = 'v1'; rest = segs.slice(2) }
    else if (segs[0] === 'apis' && segs.length >= 2) {
      if (segs.length === 2 && method === 'GET') {
        const g = apiGroup(store.types(), segs[1]!)
        if (g === undefined) throw NOT_FOUND
        sendJson(res, 200, g)
        return
      }
      group = segs[1]!; version = segs[2]!; rest = segs.slice(3)
    } else throw NOT_FOUND
    if (rest.length === 0) {
      const l = method === 'GET' ? apiResourceList(store.types(), group, version) : undefined
      if (l === undefined) throw NOT_FOUND
      sendJson(res, 200, l)
      return
    }
    const t = resolve(store, group, version, rest)
    if (t === undefined) throw NOT_FOUND
    if (t.sub !== undefined && t.sub !== 'status' && !t.type.subresources.includes(t.sub as never)) throw NOT_FOUND
    if (t.sub === 'status' && !t.type.subresources.includes('status')) throw NOT_FOUND
    if (t.name === undefined) {
      switch (method) {
        case 'GET': list(store, t, req, res, q); return
        case 'POST': await create(store, t, req, res, q); return
        case 'DELETE': await removeCollection(store, t, req, res, q); return
        default: throw NOT_ALLOWED
      }
    }
    if (t.type.namespaced && t.namespace === undefined) throw NOT_FOUND
    switch (t.sub) {
      case 'scale': await scale(store, t, req, res); return
      case 'binding': await binding(store, t, req, res); return
      case 'eviction': await eviction(store, t, req, res); return
      case 'log': if (method !== 'GET') throw NOT_ALLOWED; await log(store, t, res, q, logs); return
    }
    switch (method) {
      case 'GET': get(store, t, req, res, q); return
      case 'PUT': await update(store, t, req, res, q); return
      case 'PATCH': await patch(store, t, req, res, q); return
      case 'DELETE': if (t.sub !== undefined) throw NOT_ALLOWED; await remove(store, t, req, res, q); return
      default: throw NOT_ALLOWED
    }
  }

  const handler: RequestListener = (req, res) => {
    route(req, res).catch((err: unknown) => {
      if (!(err instanceof ApiError) || err.code >= 500) opts.log?.error({ err, method: req.method, path: req.url?.split('?')[0] }, 'kube-sim API request failed')
      sendError(res, err)
    })
  }
  const tls = opts.tls ?? token !== undefined
  const cert = tls ? selfSigned(['127.0.0.1', 'localhost', host]) : undefined
  const server = cert === undefined ? createServer(handler) : createTlsServer({ cert: cert.cert, key: cert.key }, handler)
  server.on('connection', (socket: Socket) => {
    if (paused) { socket.destroy(); return }
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, host, () => { server.off('error', reject); resolve() })
  })
  const port = (server.address() as AddressInfo).port
  url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`
  const dropAll = (): void => { for (const s of sockets) s.destroy(); sockets.clear() }

  return {
    url,
    port,
    ca: cert?.cert,
    pause(): void {
      paused = true
      dropAll()
    },
    resume(): void {
      paused = false
    },
    async close(): Promise<void> {
      await new Promise<void>((resolve) => {
        server.close(() => resolve())
        dropAll()
      })
    },
  }
}
