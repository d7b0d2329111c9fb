import type { Redis } from 'ioredis'
import { KdlError } from '../common/errors.js'
import { ChangeChannel } from '../store/change-channel.js'
import { redisCall } from '../store/redis-conn.js'
import { assertTriggerName, type TriggerRecord } from './spec.js'

/** How long a tick's lock is kept: long past any replica's clock skew or late timer. */
const TICK_LOCK_MS = 24 * 3600 * 1000

/** What a trigger's schedule has done (`<prefix>trigger-state:<name>`, a hash). */
export interface TriggerState {
  /** The record's `updatedAt` this state belongs to. */
  rev: string | undefined
  /** Every tick at or before it is settled (fired, or reported missed), epoch ms; as stored (the compare-and-set's token). */
  watermark: string
  /** The latest tick fired, epoch ms. */
  lastTick: number | undefined
  /** Ticks reported missed, in all. */
  missed: number
}

/** What the race for one tick gave this replica. */
export type Claim =
  | { result: 'won'; previous: number }
  | { result: 'lost' }
  /** The replica's copy of the trigger is not the stored one (updated or deleted meanwhile): it must not fire. */
  | { result: 'stale' }

export type TriggerChange = { kind: 'trigger'; name: string } | { kind: 'resync' }

export interface TriggerStoreOptions {
  redis: Redis
  /** A connection of its own for the change channel. */
  subscriber: Redis
  prefix: string
  /** This replica's id: the value of the tick locks it wins. */
  replicaId: string
  /** A full reload is offered this often even without a reconnect. @default 30000 */
  resyncEveryMs?: number
}

// A tick is claimed by one replica: the trigger's revision must be the caller's, the tick after the watermark
// (not fired, not reported missed), and the tick's lock free; the winner moves the watermark and lastTick to it.
const CLAIM = `
local st = redis.call('HMGET', KEYS[1], 'rev', 'watermark')
if st[1] ~= ARGV[1] then return {-1, 0} end
local w = tonumber(st[2] or '0')
if tonumber(ARGV[2]) <= w then return {0, w} end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {0, w} end
redis.call('HSET', KEYS[1], 'watermark', ARGV[2], 'lastTick', ARGV[2])
return {1, w}`

// Missed ticks are reported by the one replica whose compare-and-set of the watermark succeeds.
const MISSED = `
local st = redis.call('HMGET', KEYS[1], 'rev', 'watermark')
if st[1] ~= ARGV[1] or (st[2] or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'watermark', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'missed', ARGV[4])
return 1`

// Counts ticks the claimer found skipped between the watermark and its tick.
const ADD_MISSED = `
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then return 0 end
return redis.call('HINCRBY', KEYS[1], 'missed', ARGV[2])`

// A PUT starts the schedule anew: ticks before it are settled (the watermark only moves forward).
const PUT_STATE = `
redis.call('HSET', KEYS[1], 'rev', ARGV[1])
local w = tonumber(redis.call('HGET', KEYS[1], 'watermark') or '0')
if tonumber(ARGV[2]) > w then redis.call('HSET', KEYS[1], 'watermark', ARGV[2]) end
return 1`

/**
 * Triggers in Redis (issue 11). Keys after the prefix: `trigger:<name>` the record (JSON), `triggers` the
 * names (a sorted set), `trigger-state:<name>` what its schedule did (hash: rev, watermark, lastTick, missed),
 * `tick:<name>:<tickEpochMs>` one tick's lock (the winner's replica id, kept a day). Every write of a record
 * is one MULTI with the PUBLISH on `trigger-changes` that makes every replica reload it.
 */
export class TriggerStore {
  readonly #r: Redis
  readonly #p: string
  readonly #replica: string
  readonly #channel: ChangeChannel<TriggerChange>
  #closed = false

  private constructor(o: TriggerStoreOptions, channel: ChangeChannel<TriggerChange>) {
    this.#r = o.redis
    this.#p = o.prefix
    this.#replica = o.replicaId
    this.#channel = channel
  }

  static async open(o: TriggerStoreOptions): Promise<TriggerStore> {
    const channel = await ChangeChannel.open<TriggerChange>({
      subscriber: o.subscriber, channel: `${o.prefix}trigger-changes`, resyncEveryMs: o.resyncEveryMs,
      parse: (text) => {
        let m: { n?: unknown }
        try { m = JSON.parse(text) as { n?: unknown } } catch { return undefined }
        // The writer's own replica reloads from its message too: one path for every replica.
        return typeof m.n === 'string' ? { kind: 'trigger', name: m.n } : undefined
      },
    })
    return new TriggerStore(o, channel)
  }

  readonly changes = (listener: (c: TriggerChange) => void): (() => void) => this.#channel.on(listener)

  async get(name: string): Promise<TriggerRecord | undefined> {
    assertTriggerName(name)
    const text = await this.#call(`reading trigger "${name}"`, () => this.#r.get(this.#key(`trigger:${name}`)))
    return text === null ? undefined : parse(text, name)
  }

  async list(): Promise<TriggerRecord[]> {
    const names = await this.#call('listing triggers', () => this.#r.zrange(this.#key('triggers'), '0', '-1'))
    if (names.length === 0) return []
    const texts = await this.#call('reading triggers', () => this.#r.mget(names.map((n) => this.#key(`trigger:${n}`))))
    const out: TriggerRecord[] = []
    texts.forEach((text, i) => { if (text !== null) out.push(parse(text, names[i] as string)) })
    return out
  }

  /** Writes the record, starts its schedule anew and tells every replica, in one MULTI. */
  async put(record: TriggerRecord): Promise<void> {
    assertTriggerName(record.name)
    const now = String(Date.parse(record.updatedAt))
    await this.#exec(`writing trigger "${record.name}"`, this.#r.multi()
      .set(this.#key(`trigger:${record.name}`), JSON.stringify(record))
      .zadd(this.#key('triggers'), 0, record.name)
      .eval(PUT_STATE, 1, this.#key(`trigger-state:${record.name}`), record.updatedAt, now)
      .publish(this.#key('trigger-changes'), JSON.stringify({ n: record.name, o: this.#replica })))
  }

  /** Resolves true when a trigger was removed. */
  async delete(name: string): Promise<boolean> {
    assertTriggerName(name)
    const got = await this.#exec(`deleting trigger "${name}"`, this.#r.multi()
      .del(this.#key(`trigger:${name}`))
      .del(this.#key(`trigger-state:${name}`))
      .zrem(this.#key('triggers'), name)
      .publish(this.#key('trigger-changes'), JSON.stringify({ n: name, o: this.#replica })))
    return got[0] === 1
  }

  async state(name: string): Promise<TriggerState> {
    const h = await this.#call(`reading the state of trigger "${name}"`, () => this.#r.hgetall(this.#key(`trigger-state:${name}`)))
    return {
      rev: h['rev'],
      watermark: h['watermark'] ?? '0',
      lastTick: h['lastTick'] === undefined ? undefined : Number(h['lastTick']),
      missed: Number(h['missed'] ?? 0),
    }
  }

  /** The race for one tick (its planned time, so replicas whose timers fire a few ms apart agree). */
  async claimTick(record: TriggerRecord, tick: Date): Promise<Claim> {
    const t = tick.getTime()
    const got = await this.#call(`claiming tick ${tick.toISOString()} of trigger "${record.name}"`, () => this.#r.eval(
      CLAIM, 2, this.#key(`trigger-state:${record.name}`), this.#key(`tick:${record.name}:${t}`), record.updatedAt, String(t), this.#replica, String(TICK_LOCK_MS),
    )) as [number, number]
    if (got[0] === -1) return { result: 'stale' }
    return got[0] === 1 ? { result: 'won', previous: got[1] } : { result: 'lost' }
  }

  /** Reports `count` missed ticks up to `last` when the watermark is still `expected`; true for the one replica that did. */
  async reportMissed(record: TriggerRecord, expected: string, last: Date, count: number): Promise<boolean> {
    const got = await this.#call(`reporting missed ticks of trigger "${record.name}"`, () => this.#r.eval(
      MISSED, 1, this.#key(`trigger-state:${record.name}`), record.updatedAt, expected, String(last.getTime()), String(count),
    ))
    return got === 1
  }

  /** Adds to the missed counter (ticks a claimer found skipped before its own). */
  async addMissed(record: TriggerRecord, count: number): Promise<void> {
    await this.#call(`counting missed ticks of trigger "${record.name}"`, () => this.#r.eval(
      ADD_MISSED, 1, this.#key(`trigger-state:${record.name}`), record.updatedAt, String(count),
    ))
  }

  /** The replica that won a tick's lock, if it is still kept. */
  async tickOwner(name: string, tick: Date): Promise<string | undefined> {
    return (await this.#call('reading a tick lock', () => this.#r.get(this.#key(`tick:${name}:${tick.getTime()}`)))) ?? undefined
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#channel.close()
  }

  #key(k: string): string {
    return `${this.#p}${k}`
  }

  #call<T>(what: string, work: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new KdlError('KDL_ERR_SHUTTING_DOWN', 'the trigger store is closed'))
    return redisCall(what, work)
  }

  async #exec(what: string, multi: ReturnType<Redis['multi']>): Promise<unknown[]> {
    const got = await this.#call(what, () => multi.exec())
    if (got === null) throw new KdlError('KDL_ERR_INTERNAL', `the store failed while ${what}: the transaction was discarded`)
    const failed = got.find(([err]) => err !== null)
    if (failed !== undefined) throw new KdlError('KDL_ERR_INTERNAL', `the store failed while ${what}: ${(failed[0] as Error).message}`)
    return got.map(([, v]) => v)
  }
}

function parse(text: string, name: string): TriggerRecord {
  try {
    return JSON.parse(text) as TriggerRecord
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored trigger "${name}" is not JSON`, { cause: err })
  }
}
