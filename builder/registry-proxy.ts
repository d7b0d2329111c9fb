import { request as httpRequest, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect, type Socket } from 'node:net'
import { rm } from 'node:fs/promises'
import type { Duplex } from 'node:stream'

export interface RegistryProxyOptions {
  /** Unix socket to listen on (inside the build directory; runtimes/node/build.mjs relays npm to it). */
  socketPath: string
  /** The one origin a build may reach: the registry npm is configured with. */
  registry: URL
  /** One line per refused request, for the build log. */
  refused: (line: string) => void
}

/** host:port of a URL, with the scheme's default port filled in. */
function hostPort(u: URL): string {
  const port = u.port !== '' ? u.port : u.protocol === 'https:' ? '443' : '80'
  const host = u.hostname.startsWith('[') ? u.hostname : u.hostname.includes(':') ? `[${u.hostname}]` : u.hostname
  return `${host}:${port}`.toLowerCase()
}

/**
 * A build's only way out of its sandbox: an HTTP proxy on a Unix socket that lets through requests to the
 * registry's origin and nothing else — `CONNECT registry:443` for an https registry (TLS stays end to end
 * between npm and the registry), absolute-form requests for an http one. Every other target is answered
 * `403` and written to the build log, so a build cannot reach the platform's API, its instances, the
 * cloud's metadata service or anything else the host reaches.
 */
export class RegistryProxy {
  readonly #server: Server
  readonly #opts: RegistryProxyOptions
  readonly #allowed: string
  readonly #sockets = new Set<Duplex>()

  private constructor(opts: RegistryProxyOptions) {
    this.#opts = opts
    this.#allowed = hostPort(opts.registry)
    this.#server = createServer((req, res) => this.#onRequest(req, res))
    this.#server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#onConnect(req, socket, head))
    this.#server.on('connection', (s: Socket) => { this.#sockets.add(s); s.once('close', () => this.#sockets.delete(s)) })
  }

  static async listen(opts: RegistryProxyOptions): Promise<RegistryProxy> {
    const p = new RegistryProxy(opts)
    await rm(opts.socketPath, { force: true })
    await new Promise<void>((resolve, reject) => {
      p.#server.once('error', reject)
      p.#server.listen(opts.socketPath, () => { p.#server.off('error', reject); resolve() })
    })
    return p
  }

  #refuse(what: string): void {
    this.#opts.refused(`kindling build: proxy refused ${what} (a build reaches only the registry ${this.#opts.registry.origin})`)
  }

  #onConnect(req: IncomingMessage, client: Duplex, head: Buffer): void {
    const target = (req.url ?? '').toLowerCase()
    client.on('error', () => {})
    if (this.#opts.registry.protocol !== 'https:' || target !== this.#allowed) {
      this.#refuse(`CONNECT ${req.url ?? ''}`)
      client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
      return
    }
    const u = this.#opts.registry
    const upstream = connect({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port !== '' ? u.port : 443) })
    this.#sockets.add(upstream)
    upstream.once('close', () => this.#sockets.delete(upstream))
    upstream.once('connect', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length > 0) upstream.write(head)
      upstream.pipe(client)
      client.pipe(upstream)
    })
    upstream.on('error', () => client.destroy())
    client.once('close', () => upstream.destroy())
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    let target: URL | undefined
    try { target = new URL(req.url ?? '') } catch { /* origin-form: not a proxy request */ }
    if (target === undefined || target.protocol !== this.#opts.registry.protocol || hostPort(target) !== this.#allowed) {
      this.#refuse(`${req.method ?? 'GET'} ${req.url ?? ''}`)
      res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' }).end('kindling: a build reaches only its registry\n')
      return
    }
    const headers = { ...req.headers }
    delete headers['proxy-connection']
    delete headers['proxy-authorization']
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest
    const upstream = send(target, { method: req.method, headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`kindling: registry unreachable: ${err.message}\n`)
      else res.destroy()
    })
    req.pipe(upstream)
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
    await rm(this.#opts.socketPath, { force: true })
  }
}
