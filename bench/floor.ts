// The floor for a Node router: the least a `node:http` server must do to forward a call to a runtime
// instance — read the request, send it on through an undici Pool with kept-alive connections (like the
// router's dispatcher, protocol/runtime-client.ts), stream the answer back. No lookup, no queue, no
// metrics. Run in its own process (`startFloor`), reached over TCP like the router, forwarding to the
// same bare server the warm rows use. Every figure of the router beyond this one is Kindling's own cost.
import { spawn } from 'node:child_process'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { createConnection } from 'node:net'
import { fileURLToPath } from 'node:url'
import { Pool } from 'undici'
import { freePort } from './nginx.js'

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'host', 'expect'])

/** The server itself: `node floor.js <port> <upstream socket>`. */
function serve(port: number, socketPath: string): void {
  const pool = new Pool('http://localhost', { socketPath, pipelining: 1, keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 })
  const server = createServer((req, res) => {
    const headers: Record<string, string | string[]> = {}
    const inHeaders: IncomingHttpHeaders = req.headers
    for (const key in inHeaders) {
      const v = inHeaders[key]
      if (v !== undefined && !HOP_BY_HOP.has(key)) headers[key] = v
    }
    headers['x-kindling-invocation-id'] = 'floor'
    const method = req.method ?? 'GET'
    const body = method === 'GET' || method === 'HEAD' ? null : req
    pool.stream({ path: req.url ?? '/', method, headers, body, opaque: res }, ({ statusCode, headers: upstream }) => {
      const h = upstream as Record<string, string | string[] | undefined>
      delete h['connection']
      delete h['keep-alive']
      delete h['transfer-encoding']
      res.writeHead(statusCode, h as Record<string, string | string[]>)
      return res
    }).catch(() => {
      if (!res.headersSent) res.writeHead(502)
      res.end()
    })
  })
  server.keepAliveTimeout = 600_000
  server.listen(port, '127.0.0.1')
  process.once('SIGTERM', () => { server.close(); void pool.close(); server.closeAllConnections() })
}

export interface Floor {
  pid: number
  port: number
  stop(): Promise<void>
}

/** Starts the floor server in a child process (only PATH in its environment, like the bare server). */
export async function startFloor(opts: { upstreamSocket: string }): Promise<Floor> {
  const port = await freePort()
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), String(port), opts.upstreamSocket], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const pid = child.pid
  if (pid === undefined) throw new Error('cannot start the floor server')
  let dead = false
  const exited = new Promise<void>((resolve) => child.once('exit', () => { dead = true; resolve() }))
  const deadline = Date.now() + 10_000
  while (!await accepts(port)) {
    if (dead || Date.now() > deadline) {
      try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
      throw new Error(`the floor server did not start listening on 127.0.0.1:${port}`)
    }
    await new Promise((r) => setTimeout(r, 10))
  }
  return {
    pid,
    port,
    stop: async () => {
      if (!dead) process.kill(pid, 'SIGTERM')
      const killer = setTimeout(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }, 3000)
      await exited
      clearTimeout(killer)
    },
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port })
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) serve(Number(process.argv[2]), process.argv[3] ?? '')
