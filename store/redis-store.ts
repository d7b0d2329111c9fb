import type { Redis } from 'ioredis'
import { KdlError } from '../common/errors.js'
import { assertName } from '../common/spec.js'
import type { Store, StoreChange } from '../common/store.js'
import type { FunctionRecord, RuntimeSpec } from '../common/types.js'
import { ChangeChannel } from './change-channel.js'
import { multiResults, redisCall } from './redis-conn.js'

export interface RedisStoreOptions {
  /** Commands (no blocking reads, no subscriptions). */
  redis: Redis
  /** A connection of its own for the change channel (a subscribed connection takes no other command). */
  subscriber: Redis
  /** Key and channel prefix (KINDLING_REDIS_PREFIX). */
  prefix: string
  /** This replica's id: its own change messages are not handed back to it. */
  origin: string
  /** A full resync is offered this often even without a reconnect (a lost message is never a stale route for long). @default 30000 */
  resyncEveryMs?: number
}

/** One message on the change channel. */
interface ChangeMessage { k: 'function' | 'runtime'; n: string; o: string }

/**
 * The shared store (issue 11): every record is one Redis string of JSON, every write one MULTI with the
 * PUBLISH that tells the other replicas, so a record and its announcement are applied together or not at all.
 *
 * Keys (after the prefix): `fn:<name>` the head, `fns` the names (a sorted set, read in pages by name),
 * `ver:<name>` a hash of the versions (`<v>` → JSON), `rt:<name>` and `rts` the runtimes; channel `changes`.
 * A deploy writes its version, then its head (two MULTIs): the head is the commit, as on the file store.
 * Durability is Redis's: the README asks for AOF (`appendonly yes`); start-up warns when it is off.
 */
export class RedisStore implements Store {
  readonly #r: Redis
  readonly #p: string
  readonly #origin: string
  readonly #channel: ChangeChannel<StoreChange>
  #closed = false

  private constructor(o: RedisStoreOptions, channel: ChangeChannel<StoreChange>) {
    this.#r = o.redis
    this.#p = o.prefix
    this.#origin = o.origin
    this.#channel = channel
  }

  /** A store on connected clients; resolves once the change channel is subscribed. */
  static async open(o: RedisStoreOptions): Promise<RedisStore> {
    const channel = await ChangeChannel.open<StoreChange>({
      subscriber: o.subscriber, channel: `${o.prefix}changes`, resyncEveryMs: o.resyncEveryMs,
      parse: (text) => {
        let m: ChangeMessage
        try { m = JSON.parse(text) as ChangeMessage } catch { return undefined }
        // A replica does not hear its own writes: it applied them already.
        if (m.o === o.origin || (m.k !== 'function' && m.k !== 'runtime') || typeof m.n !== 'string') return undefined
        return { kind: m.k, name: m.n }
      },
    })
    return new RedisStore(o, channel)
  }

  /** Whether Redis is configured to persist with an append-only file (undefined when CONFIG is not allowed). */
  async appendOnly(): Promise<boolean | undefined> {
    try {
      const got = await this.#r.config('GET', 'appendonly') as string[]
      return got[1] === 'yes'
    } catch {
      return undefined
    }
  }

  readonly changes = (listener: (change: StoreChange) => void): (() => void) => this.#channel.on(listener)

  async getFunction(name: string): Promise<FunctionRecord | undefined> {
    assertName('function', name)
    const text = await this.#call(`reading function "${name}"`, () => this.#r.get(this.#key(`fn:${name}`)))
    return text === null ? undefined : parse<FunctionRecord>(text, `fn:${name}`, name)
  }

  async listFunctions(page?: { after?: string | undefined; limit: number }): Promise<FunctionRecord[]> {
    return this.#list<FunctionRecord>('fns', 'fn:', 'functions', page)
  }

  async putFunction(record: FunctionRecord): Promise<void> {
    assertName('function', record.name)
    await this.#exec(`writing function "${record.name}"`, this.#r.multi()
      .set(this.#key(`fn:${record.name}`), JSON.stringify(record))
      .zadd(this.#key('fns'), 0, record.name)
      .publish(this.#key('changes'), this.#message('function', record.name)))
  }

  async deleteFunction(name: string): Promise<boolean> {
    assertName('function', name)
    const got = await this.#exec(`deleting function "${name}"`, this.#r.multi()
      .del(this.#key(`fn:${name}`))
      .del(this.#key(`ver:${name}`))
      .zrem(this.#key('fns'), name)
      .publish(this.#key('changes'), this.#message('function', name)))
    return got[0] === 1
  }

  async getVersion(name: string, version: number): Promise<FunctionRecord | undefined> {
    assertName('function', name)
    assertVersion(version)
    const text = await this.#call(`reading version ${version} of "${name}"`, () => this.#r.hget(this.#key(`ver:${name}`), String(version)))
    if (text === null) return undefined
    const record = parse<FunctionRecord>(text, `ver:${name}#${version}`, name)
    if (record.version !== version) throw new KdlError('KDL_ERR_INTERNAL', `stored version ver:${name}#${version} holds version ${record.version}`)
    return record
  }

  async listVersions(name: string): Promise<FunctionRecord[]> {
    assertName('function', name)
    const all = await this.#call(`listing the versions of "${name}"`, () => this.#r.hgetall(this.#key(`ver:${name}`)))
    return Object.entries(all)
      .filter(([v]) => /^[1-9][0-9]*$/.test(v))
      .map(([v, text]) => parse<FunctionRecord>(text, `ver:${name}#${v}`, name))
      .sort((a, b) => a.version - b.version)
  }

  async putVersion(record: FunctionRecord): Promise<void> {
    assertName('function', record.name)
    assertVersion(record.version)
    const { aliases: _a, lastVersion: _l, canary: _c, ...version } = record
    await this.#call(`writing version ${record.version} of "${record.name}"`, () => this.#r.hset(this.#key(`ver:${record.name}`), String(record.version), JSON.stringify(version)))
  }

  async deleteVersion(name: string, version: number): Promise<boolean> {
    assertName('function', name)
    assertVersion(version)
    return (await this.#call(`deleting version ${version} of "${name}"`, () => this.#r.hdel(this.#key(`ver:${name}`), String(version)))) === 1
  }

  async getRuntime(name: string): Promise<RuntimeSpec | undefined> {
    assertName('runtime', name)
    const text = await this.#call(`reading runtime "${name}"`, () => this.#r.get(this.#key(`rt:${name}`)))
    return text === null ? undefined : parse<RuntimeSpec>(text, `rt:${name}`, name)
  }

  async listRuntimes(): Promise<RuntimeSpec[]> {
    return this.#list<RuntimeSpec>('rts', 'rt:', 'runtimes')
  }

  async putRuntime(spec: RuntimeSpec): Promise<void> {
    assertName('runtime', spec.name)
    await this.#exec(`writing runtime "${spec.name}"`, this.#r.multi()
      .set(this.#key(`rt:${spec.name}`), JSON.stringify(spec))
      .zadd(this.#key('rts'), 0, spec.name)
      .publish(this.#key('changes'), this.#message('runtime', spec.name)))
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#channel.close()
  }

  #key(k: string): string {
    return `${this.#p}${k}`
  }

  #message(kind: ChangeMessage['k'], name: string): string {
    return JSON.stringify({ k: kind, n: name, o: this.#origin } satisfies ChangeMessage)
  }

  async #list<T>(index: string, kind: string, what: string, page?: { after?: string | undefined; limit: number }): Promise<T[]> {
    const names = await this.#call(`listing ${what}`, () => page === undefined
      ? this.#r.zrange(this.#key(index), '0', '-1')
      : this.#r.zrangebylex(this.#key(index), page.after === undefined ? '-' : `(${page.after}`, '+', 'LIMIT', '0', String(page.limit)))
    if (names.length === 0) return []
    const texts = await this.#call(`reading ${what}`, () => this.#r.mget(names.map((n) => this.#key(`${kind}${n}`))))
    const out: T[] = []
    // A record deleted between the two reads is simply not listed.
    texts.forEach((text, i) => { if (text !== null) out.push(parse<T>(text, `${kind}${names[i]}`, names[i] as string)) })
    return out
  }

  #call<T>(what: string, work: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the store is closed')
    return redisCall(what, work)
  }

  /** Runs a MULTI; a command of it that failed fails the call (EXEC applies all or none of a queued transaction). */
  async #exec(what: string, multi: ReturnType<Redis['multi']>): Promise<unknown[]> {
    return multiResults(what, await this.#call(what, () => multi.exec()))
  }
}

function assertVersion(version: number): void {
  if (!Number.isInteger(version) || version < 1) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `version ${String(version).slice(0, 20)} is not a version number`)
}

function parse<T>(text: string, key: string, name: string): T {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored record ${key} is not valid JSON`, { cause: err })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || (value as { name?: unknown }).name !== name) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored record ${key} does not hold "${name}"`)
  }
  return value as T
}
