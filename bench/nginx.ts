import { spawn, spawnSync } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createConnection, createServer } from 'node:net'
import { join } from 'node:path'
import { descendants } from './proc.js'

export interface Nginx {
  pid: number
  port: number
  stop(): Promise<void>
}

const CANDIDATES = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx']

/** The nginx binary, or undefined (install Debian's `nginx-light`). */
export function findNginx(): string | undefined {
  for (const bin of CANDIDATES) if (spawnSync(bin, ['-v']).status === 0) return bin
  return undefined
}

/** A free TCP port on 127.0.0.1 (released again before use; fine on a quiet machine). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

/**
 * nginx in the foreground (`daemon off`) as a reverse-proxy reference in front of the bare server:
 * one worker (the router is one event loop too), keep-alive upstream connections over the Unix socket.
 */
export async function startNginx(opts: { bin: string; dir: string; upstreamSocket: string }): Promise<Nginx> {
  const port = await freePort()
  await mkdir(join(opts.dir, 'temp'), { recursive: true })
  const asRoot = process.getuid?.() === 0
  const conf = `
${asRoot ? 'user root root;' : ''}
worker_processes 1;
daemon off;
pid ${join(opts.dir, 'nginx.pid')};
error_log ${join(opts.dir, 'error.log')} error;
events { worker_connections 1024; }
http {
  access_log off;
  # nginx closes a keep-alive connection after 1000 requests by default; autocannon then counts the
  # request it had already written on the closing connection twice and every later latency is skewed.
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_body_temp_path ${join(opts.dir, 'temp', 'body')};
  proxy_temp_path ${join(opts.dir, 'temp', 'proxy')};
  fastcgi_temp_path ${join(opts.dir, 'temp', 'fastcgi')};
  uwsgi_temp_path ${join(opts.dir, 'temp', 'uwsgi')};
  scgi_temp_path ${join(opts.dir, 'temp', 'scgi')};
  upstream bare {
    server unix:${opts.upstreamSocket};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bare;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-kindling-invocation-id bench;
    }
  }
}
`
  const confFile = join(opts.dir, 'nginx.conf')
  await writeFile(confFile, conf)
  const child = spawn(opts.bin, ['-p', opts.dir, '-c', confFile, '-e', join(opts.dir, 'error.log')], { stdio: ['ignore', 'ignore', 'inherit'] })
  const pid = child.pid
  if (pid === undefined) throw new Error('cannot start nginx')
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let dead = false
  void exited.then(() => { dead = true })
  const deadline = Date.now() + 10_000
  while (!await accepts(port)) {
    if (dead || Date.now() > deadline) {
      try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
      throw new Error(`nginx did not start listening on 127.0.0.1:${port} (see ${join(opts.dir, 'error.log')})`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return {
    pid,
    port,
    stop: async () => {
      const workers = await descendants(pid)
      // SIGTERM: fast shutdown of the master and its worker.
      if (!dead) process.kill(pid, 'SIGTERM')
      const killer = setTimeout(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }, 3000)
      await exited
      clearTimeout(killer)
      // A worker outliving a killed master is stopped by its own pid.
      for (const w of workers) {
        const cmd = await readFile(`/proc/${w}/cmdline`, 'utf8').catch(() => '')
        if (cmd.startsWith('nginx: worker')) { try { process.kill(w, 'SIGKILL') } catch { /* gone meanwhile */ } }
      }
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
