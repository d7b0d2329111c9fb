import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { KdlError } from '../common/errors.js'
import { KeyedMutex, type Locks } from '../common/keyed-mutex.js'
import { redisCall } from '../store/redis-conn.js'

export interface RedisLocksOptions {
  redis: Redis
  prefix: string
  /** A held lock expires this long after its last renewal (a replica that died lets go by itself). @default 30000 */
  ttlMs?: number
  /** How long a writer waits for a lock another replica holds before it gives up. @default 120000 */
  waitMs?: number
}

/** Deletes the lock only when it is still ours (a lock that expired and was taken again is another writer's). */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`
/** Extends the lock only when it is still ours. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`

/**
 * The writers' locks across replicas (issue 11): what a KeyedMutex is to one process — a deploy, an alias
 * change, a rollback, a canary step of one function at a time — for every replica of one Redis. In-process
 * callers queue on a KeyedMutex first, so one replica asks Redis once per turn; the Redis lock is
 * `SET <prefix>lock:<key> <token> NX PX ttl`, renewed every third of its ttl while the work runs, released by
 * compare-and-delete. Version numbers stay unique because every writer of a function holds its lock.
 */
export class RedisLocks implements Locks {
  readonly #local = new KeyedMutex()
  readonly #r: Redis
  readonly #p: string
  readonly #ttlMs: number
  readonly #waitMs: number

  constructor(o: RedisLocksOptions) {
    this.#r = o.redis
    this.#p = o.prefix
    this.#ttlMs = o.ttlMs ?? 30_000
    this.#waitMs = o.waitMs ?? 120_000
  }

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    return this.#local.run(key, async () => {
      const k = `${this.#p}lock:${key}`
      const token = randomBytes(12).toString('hex')
      await this.#acquire(key, k, token)
      const renew = setInterval(() => { void this.#r.eval(RENEW, 1, k, token, String(this.#ttlMs)).catch(() => {}) }, Math.max(10, Math.floor(this.#ttlMs / 3)))
      try {
        return await work()
      } finally {
        clearInterval(renew)
        await this.#r.eval(RELEASE, 1, k, token).catch(() => {})
      }
    })
  }

  async #acquire(key: string, k: string, token: string): Promise<void> {
    const deadline = Date.now() + this.#waitMs
    for (let pause = 5; ; pause = Math.min(100, pause * 2)) {
      const got = await redisCall(`locking "${key}"`, () => this.#r.set(k, token, 'PX', this.#ttlMs, 'NX'))
      if (got === 'OK') return
      if (Date.now() + pause > deadline) {
        throw new KdlError('KDL_ERR_STORE_UNAVAILABLE', `"${key}" has been locked by another replica for over ${Math.round(this.#waitMs / 1000)} s (a long deploy there?); try again`, { headers: { 'retry-after': '5' } })
      }
      await new Promise((r) => setTimeout(r, pause))
    }
  }
}
