import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from '../common/config.js'
import { connectRedis, redactUrl } from '../store/redis-conn.js'
import { RedisStore } from '../store/redis-store.js'

/**
 * What the replicas of one platform share when KINDLING_STORE=redis (issue 11): the store, and connections for
 * the parts that keep their state in Redis too (async jobs, triggers, locks, the code cache index).
 */
export interface Shared {
  store: RedisStore
  /** Commands (non-blocking); shared by every part. */
  redis: Redis
  /** Key and channel prefix (KINDLING_REDIS_PREFIX). */
  prefix: string
  /** This process's id among the replicas (random per start). */
  replicaId: string
  /** A further connection of its own (blocking reads: `blocking`), closed with the others. */
  connect(name: string, opts?: { blocking?: boolean }): Promise<Redis>
  close(): Promise<void>
}

export async function openShared(config: Config, log: Logger): Promise<Shared> {
  const url = config.KINDLING_REDIS_URL
  const prefix = config.KINDLING_REDIS_PREFIX
  const replicaId = randomBytes(6).toString('hex')
  const conns: Redis[] = []
  const connect = async (name: string, opts: { blocking?: boolean } = {}): Promise<Redis> => {
    const c = await connectRedis({ url, name: `kindling:${name}:${replicaId}`, ...opts })
    conns.push(c)
    return c
  }
  try {
    const redis = await connect('cmd')
    const subscriber = await connect('sub', { blocking: true })
    const store = await RedisStore.open({ redis, subscriber, prefix, origin: replicaId })
    if (await store.appendOnly() === false) {
      log.warn({ redis: redactUrl(url) }, 'Redis does not persist with an append-only file (appendonly no): a Redis restart can lose recent deploys and async jobs; set appendonly yes')
    }
    log.info({ redis: redactUrl(url), prefix, replica: replicaId }, 'shared store on Redis')
    return {
      store, redis, prefix, replicaId, connect,
      close: async () => {
        await store.close()
        for (const c of conns) c.disconnect()
      },
    }
  } catch (err) {
    for (const c of conns) c.disconnect()
    throw err
  }
}
