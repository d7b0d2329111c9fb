/**
 * The stand-in's kube-proxy (issue 13): every Service with a cluster IP answers on `clusterIP:port` (TCP), and each
 * connection is passed to one of the Service's Ready endpoints (the Endpoints object the endpoints controller
 * keeps), round-robin, the next one tried when a connect fails. Cluster IPs are loopback addresses of a subnet the
 * cluster holds host-wide (cluster.ts), so pods, the host and tests reach them alike.
 *
 * As with iptables-mode kube-proxy: a Service without a Ready endpoint refuses connections (its port is not
 * listened on), and a connection already passed on stays with its pod when the endpoints change. Session affinity,
 * UDP, NodePorts and external traffic policies are not stood in for.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { Kinds } from './controllers/shared.js'
import { clusterIPOf, keyOf } from './controllers/shared.js'
import type { KubeObject, ObjectStore } from './types.js'

interface Backend { ip: string; port: number }

interface Listener {
  /** The Service's `namespace/name`. */
  key: string
  ip: string
  port: number
  /** The Service port's name ('' when unnamed): which endpoint port it goes to. */
  portName: string
  server: Server | undefined
  /** Listen and close are serialised per port. */
  chain: Promise<void>
  want: boolean
}

interface ServiceState {
  listeners: Map<string, Listener>
  backends: Map<string, Backend[]>
  next: number
}

export interface ServiceProxyOptions {
  store: ObjectStore
  kinds: Kinds
  log?: Logger | undefined
}

const CONNECT_TIMEOUT_MS = 3_000

export class ServiceProxy {
  readonly #o: ServiceProxyOptions
  readonly #services = new Map<string, ServiceState>()
  readonly #sockets = new Set<Socket>()
  readonly #stops: Array<() => void> = []
  #stopped = false

  constructor(opts: ServiceProxyOptions) {
    this.#o = opts
  }

  start(): void {
    const { store, kinds } = this.#o
    this.#stops.push(store.watch(kinds.service, {}, (ev) => this.#sync(keyOf(ev.object))))
    this.#stops.push(store.watch(kinds.endpoints, {}, (ev) => this.#sync(keyOf(ev.object))))
  }

  /** Ready backends of a Service port as the proxy sees them now (tests). */
  backends(namespace: string, name: string, portName = ''): Backend[] {
    return [...(this.#services.get(`${namespace}/${name}`)?.backends.get(portName) ?? [])]
  }

  async stop(): Promise<void> {
    this.#stopped = true
    for (const s of this.#stops.splice(0)) s()
    for (const sock of this.#sockets) sock.destroy()
    const closing: Promise<void>[] = []
    for (const state of this.#services.values()) {
      for (const l of state.listeners.values()) {
        l.want = false
        closing.push(this.#apply(l))
      }
    }
    await Promise.all(closing)
    this.#services.clear()
  }

  #sync(key: string): void {
    if (this.#stopped) return
    const [namespace, name] = key.split('/') as [string, string]
    const svc = this.#o.store.get(this.#o.kinds.service, namespace, name)
    const eps = this.#o.store.get(this.#o.kinds.endpoints, namespace, name)
    let state = this.#services.get(key)
    const ip = svc === undefined ? undefined : clusterIPOf(svc)
    if (ip === undefined) {
      if (state === undefined) return
      for (const l of state.listeners.values()) { l.want = false; void this.#apply(l) }
      this.#services.delete(key)
      return
    }
    if (state === undefined) this.#services.set(key, (state = { listeners: new Map(), backends: new Map(), next: 0 }))
    state.backends = backendsOf(eps)
    const ports = ((svc!.spec?.ports ?? []) as Array<{ name?: string; port: number; protocol?: string }>).filter((p) => (p.protocol ?? 'TCP') === 'TCP')
    const seen = new Set<string>()
    for (const p of ports) {
      const id = `${ip}:${p.port}`
      seen.add(id)
      let l = state.listeners.get(id)
      if (l === undefined) state.listeners.set(id, (l = { key, ip, port: p.port, portName: p.name ?? '', server: undefined, chain: Promise.resolve(), want: false }))
      l.portName = p.name ?? ''
      l.want = (state.backends.get(l.portName)?.length ?? 0) > 0
      void this.#apply(l)
    }
    for (const [id, l] of state.listeners) {
      if (seen.has(id)) continue
      l.want = false
      void this.#apply(l)
      state.listeners.delete(id)
    }
  }

  /** Brings a port's listening in line with `want` (serialised per port; the latest `want` wins). */
  #apply(l: Listener): Promise<void> {
    l.chain = l.chain.then(async () => {
      if (l.want && l.server === undefined && !this.#stopped) {
        const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, (sock) => this.#accept(l, sock))
        await new Promise<void>((resolve) => {
          server.once('error', (err) => {
            this.#o.log?.warn({ err, ip: l.ip, port: l.port }, 'kube-proxy cannot listen on a service port')
            resolve()
          })
          server.listen({ host: l.ip, port: l.port, exclusive: true }, () => {
            l.server = server
            resolve()
          })
        })
      } else if ((!l.want || this.#stopped) && l.server !== undefined) {
        const server = l.server
        l.server = undefined
        await new Promise<void>((resolve) => server.close(() => resolve()))
      }
    })
    return l.chain
  }

  #accept(l: Listener, client: Socket): void {
    this.#sockets.add(client)
    client.once('close', () => this.#sockets.delete(client))
    client.on('error', () => client.destroy())
    const state = this.#services.get(l.key)
    const backends = state?.backends.get(l.portName) ?? []
    if (state === undefined || backends.length === 0) { client.destroy(); return }
    const start = state.next++ % backends.length
    const order = backends.map((_, i) => backends[(start + i) % backends.length] as Backend)
    this.#dial(client, order)
  }

  #dial(client: Socket, order: Backend[]): void {
    const b = order.shift()
    if (b === undefined || client.destroyed) { client.destroy(); return }
    const upstream = connect({ host: b.ip, port: b.port, allowHalfOpen: true, noDelay: true, timeout: CONNECT_TIMEOUT_MS })
    this.#sockets.add(upstream)
    upstream.once('close', () => this.#sockets.delete(upstream))
    let connected = false
    upstream.once('timeout', () => { if (!connected) upstream.destroy(new Error('connect timeout')) })
    upstream.once('connect', () => {
      connected = true
      upstream.setTimeout(0)
      client.pipe(upstream)
      upstream.pipe(client)
      client.resume()
      client.once('close', () => upstream.destroy())
      upstream.once('close', () => client.destroy())
    })
    upstream.on('error', () => {
      if (connected) { client.destroy(); return }
      upstream.destroy()
      this.#dial(client, order)
    })
  }
}

/** Ready backends by endpoint port name. */
function backendsOf(eps: KubeObject | undefined): Map<string, Backend[]> {
  const out = new Map<string, Backend[]>()
  for (const s of (eps?.subsets ?? []) as Array<{ addresses?: Array<{ ip: string }>; ports?: Array<{ name?: string; port: number; protocol?: string }> }>) {
    for (const p of s.ports ?? []) {
      if ((p.protocol ?? 'TCP') !== 'TCP') continue
      const list = out.get(p.name ?? '') ?? []
      for (const a of s.addresses ?? []) list.push({ ip: a.ip, port: p.port })
      out.set(p.name ?? '', list)
    }
  }
  return out
}
