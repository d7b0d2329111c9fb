import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { create as packTar } from 'tar'
import type { CodeStore } from '../codestore/code-store.js'
import { KdlError } from '../common/errors.js'
import { redisCall } from '../store/redis-conn.js'

export interface CodeShareOptions {
  redis: Redis
  prefix: string
  codeStore: CodeStore
  log: Logger
  /** Entries an archive of built code may hold (its node_modules). @default 200000 */
  maxEntries?: number
}

/**
 * The code cache index the replicas share (issue 11). Each replica keeps its own content-addressed code
 * cache on its disk; a deploy also puts its code in Redis (`<prefix>code:<hash>`: the directory as a
 * `.tar.gz` and the archive's sha256) before its version is committed, so any replica that is asked for
 * the version can fetch it, check the digest, and unpack it through the code store's archive checks.
 */
export class CodeShare {
  readonly #o: CodeShareOptions
  /** Hashes known to be in Redis (published or fetched here). */
  readonly #shared = new Set<string>()
  readonly #fetching = new Map<string, Promise<void>>()

  constructor(o: CodeShareOptions) {
    this.#o = o
  }

  /** Puts the local code of `hash` in Redis unless it is there already. */
  async publish(hash: string): Promise<void> {
    if (this.#shared.has(hash)) return
    const key = this.#key(hash)
    if (await redisCall('checking shared code', () => this.#o.redis.hexists(key, 'tgz')) === 1) {
      this.#shared.add(hash)
      return
    }
    const archive = await packDir(this.#o.codeStore.dirOf(hash))
    const digest = createHash('sha256').update(archive).digest('hex')
    await redisCall('sharing code', () => this.#o.redis.multi().hsetnx(key, 'tgz', archive).hsetnx(key, 'sha256', digest).exec())
    this.#shared.add(hash)
    this.#o.log.debug({ hash, bytes: archive.length }, 'code shared')
  }

  /** Makes the code of `hash` present in the local cache, fetching it from Redis when it is not. */
  async ensure(hash: string): Promise<void> {
    if (await this.#o.codeStore.has(hash)) return
    let p = this.#fetching.get(hash)
    if (p === undefined) {
      p = this.#fetch(hash).finally(() => this.#fetching.delete(hash))
      this.#fetching.set(hash, p)
    }
    return p
  }

  async #fetch(hash: string): Promise<void> {
    const [archive, digest] = await redisCall('fetching shared code', () => this.#o.redis.hmgetBuffer(this.#key(hash), 'tgz', 'sha256'))
    if (archive == null || digest == null) throw new KdlError('KDL_ERR_INTERNAL', `code ${hash} is neither in this replica's cache nor in the shared store`)
    const got = createHash('sha256').update(archive).digest('hex')
    if (got !== digest.toString()) throw new KdlError('KDL_ERR_INTERNAL', `shared code ${hash} fails its digest check (sha256 ${got}, recorded ${digest.toString()}): not loaded`)
    const t0 = performance.now()
    await this.#o.codeStore.putArchiveAs(hash, archive, this.#o.maxEntries ?? 200_000)
    this.#shared.add(hash)
    this.#o.log.info({ hash, bytes: archive.length, ms: Math.round(performance.now() - t0) }, 'code fetched from the shared store')
  }

  #key(hash: string): string {
    return `${this.#o.prefix}code:${hash}`
  }
}

/** A directory as a `.tar.gz` of its contents (entries relative to it, owners and times left out). */
async function packDir(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = []
  const stream = packTar({ gzip: true, cwd: dir, portable: true, noMtime: true }, ['.'])
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk)
  return Buffer.concat(chunks)
}
