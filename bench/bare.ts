import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Client } from 'undici'

/** The function every warm-path measurement runs: a small string. */
export function helloCode(tag = 'hello'): string {
  return `// ${tag}\nexport default async function () {\n  return 'hello'\n}\n`
}

export interface BareServer {
  pid: number
  socketPath: string
  /** Spawn → first answer to `GET /_/health`, ms (polled every 2 ms). */
  readyMs: number
  /** Loads hello into it (`POST /_/load`), as the platform would; resolves with the client-side ms. */
  load(): Promise<number>
  /** One invocation over the kept-alive connection; client-side ms. */
  call(): Promise<number>
  stop(): Promise<void>
}

/**
 * The reference every figure is a ratio against: `runtimes/node/server.mjs` started by hand, with
 * only PATH and KINDLING_LISTEN in its environment (NODE_EXTRA_CA_CERTS alone makes node start 3×
 * slower on these machines), no cgroup, no namespaces, reached directly over its Unix socket.
 */
export async function startBare(opts: { nodeBin: string; serverFile: string; dir: string }): Promise<BareServer> {
  const socketPath = join(opts.dir, 'bare.sock')
  const codeDir = join(opts.dir, 'code')
  await mkdir(codeDir, { recursive: true })
  await writeFile(join(codeDir, 'index.mjs'), helloCode(`bare ${opts.dir}`))
  const t0 = performance.now()
  const child: ChildProcess = spawn(opts.nodeBin, [opts.serverFile], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', KINDLING_LISTEN: `unix:${socketPath}` },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const pid = child.pid
  if (pid === undefined) throw new Error(`cannot start ${opts.serverFile}`)
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const client = new Client('http://localhost', { socketPath })
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      const res = await client.request({ method: 'GET', path: '/_/health' })
      await res.body.text()
      if (res.statusCode === 200) break
    } catch (err) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL')
        throw new Error(`bare runtime server did not answer on ${socketPath}`, { cause: err })
      }
    }
    await new Promise((r) => setTimeout(r, 2))
  }
  const readyMs = performance.now() - t0
  return {
    pid,
    socketPath,
    readyMs,
    load: async () => {
      const t = performance.now()
      const res = await client.request({
        method: 'POST',
        path: '/_/load',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ codeDir, entrypoint: 'index.mjs', function: 'hello', version: 1, env: {} }),
      })
      const json = await res.body.json() as { loadMs?: number; message?: string }
      if (res.statusCode !== 200) throw new Error(`bare load failed (${res.statusCode}): ${json.message ?? ''}`)
      return performance.now() - t
    },
    call: async () => {
      const t = performance.now()
      const res = await client.request({ method: 'GET', path: '/', headers: { 'x-kindling-invocation-id': 'bench' } })
      await res.body.text()
      if (res.statusCode !== 200) throw new Error(`bare call answered ${res.statusCode}`)
      return performance.now() - t
    },
    stop: async () => {
      await client.close().catch(() => {})
      if (child.exitCode === null && child.signalCode === null) process.kill(pid, 'SIGTERM')
      const killer = setTimeout(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }, 2000)
      await exited
      clearTimeout(killer)
    },
  }
}

export interface BareColdStart {
  /** Spawn → healthy, ms. */
  ready: number[]
  /** `POST /_/load`, ms. */
  load: number[]
  /** First invocation of the freshly loaded function, ms. */
  first: number[]
}

/**
 * The bare equivalents of the platform's start kinds, from `n` fresh servers: a prewarmed call is a
 * bare first call, a specialized one is load + first call, a cold one is spawn + load + first call.
 */
export async function bareColdStarts(opts: { nodeBin: string; serverFile: string; dir: string }, n: number): Promise<BareColdStart> {
  const out: BareColdStart = { ready: [], load: [], first: [] }
  for (let i = 0; i < n; i++) {
    const dir = join(opts.dir, `fresh-${i}`)
    const bare = await startBare({ ...opts, dir })
    try {
      out.ready.push(bare.readyMs)
      out.load.push(await bare.load())
      out.first.push(await bare.call())
    } finally {
      await bare.stop()
      await rm(dir, { recursive: true, force: true })
    }
  }
  return out
}
