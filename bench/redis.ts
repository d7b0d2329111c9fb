import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from './nginx.js'

/** A redis-server of the bench's own on loopback (AOF `everysec`, as a production Redis would run), stopped by PID. */
export async function startBenchRedis(track: (close: () => Promise<void>) => () => void): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-bench-redis-'))
  const port = await freePort()
  const redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--protected-mode', 'no'], { stdio: 'ignore' })
  const close = async (): Promise<void> => {
    if (redis.exitCode === null) {
      const gone = new Promise((r) => redis.once('exit', r))
      redis.kill('SIGTERM')
      await gone
    }
    await rm(dir, { recursive: true, force: true })
  }
  const untrack = track(close)
  return { url: `redis://127.0.0.1:${port}`, stop: async () => { untrack(); await close() } }
}

/** Retries `start` until the platform connects to a Redis that is still starting (connections fail fast). */
export async function whenRedisAnswers<T>(start: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await start()
    } catch (err) {
      if (i > 100) throw err
      await new Promise((r) => setTimeout(r, 50))
    }
  }
}
