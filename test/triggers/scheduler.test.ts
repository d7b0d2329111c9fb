import { pino } from 'pino'
import { Registry } from 'prom-client'
import t, { type Test } from 'tap'
import { EventLog } from '../../common/events.js'
import { connectRedis } from '../../store/redis-conn.js'
import { TriggerScheduler, type FireFn } from '../../triggers/scheduler.js'
import { parseTriggerBody, type TriggerRecord } from '../../triggers/spec.js'
import { TriggerStore } from '../../triggers/store.js'
import { startRedis, type TestRedis } from '../fixtures/redis.js'
import { waitFor } from '../fixtures/wait.js'

// The scheduler on a real redis-server: two (or more) replicas, each its own connections and replica id.

const PREFIX = 'kdl-test:'
const HOUR = 3600_000

interface Replica {
  id: string
  store: TriggerStore
  scheduler: TriggerScheduler
  events: EventLog
  registry: Registry
  close(): Promise<void>
}

async function replica(t: Test, redis: TestRedis, id: string, fire: FireFn): Promise<Replica> {
  const cmd = await connectRedis({ url: redis.url, name: `test:cmd:${id}` })
  const sub = await connectRedis({ url: redis.url, name: `test:sub:${id}`, blocking: true })
  const store = await TriggerStore.open({ redis: cmd, subscriber: sub, prefix: PREFIX, replicaId: id })
  const events = new EventLog()
  const registry = new Registry()
  const scheduler = new TriggerScheduler({ store, fire, events, registry, log: pino({ level: 'silent' }), replicaId: id })
  await scheduler.start()
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    await scheduler.close()
    await store.close()
    cmd.disconnect()
  }
  t.teardown(close)
  return { id, store, scheduler, events, registry, close }
}

const define = (name: string, body: Record<string, unknown>, current?: TriggerRecord): TriggerRecord => parseTriggerBody(name, { function: 'count', ...body }, current)
const missedEvents = (rs: Replica[]): Array<Record<string, unknown>> => rs.flatMap((r) => r.events.list().filter((e) => e.type === 'trigger.missed').map((e) => e.data ?? {}))

t.test('two replicas: each tick of an every-second trigger fires exactly once, none skipped', async (t) => {
  const redis = await startRedis(t)
  const fired: Array<{ tick: number; by: string; at: number }> = []
  const fireOn = (id: string): FireFn => async (trigger, tickAt) => {
    t.equal(trigger.name, 'every')
    fired.push({ tick: tickAt.getTime(), by: id, at: Date.now() })
  }
  const a = await replica(t, redis, 'replica-a', fireOn('replica-a'))
  const b = await replica(t, redis, 'replica-b', fireOn('replica-b'))
  await a.store.put(define('every', { cron: '* * * * * *' }))
  await waitFor(() => a.scheduler.scheduled().length === 1 && b.scheduler.scheduled().length === 1, 'both replicas to schedule the trigger')
  await waitFor(() => new Set(fired.map((f) => f.tick)).size >= 4, '4 ticks fired', 15_000)
  await a.close()
  await b.close()

  const ticks = fired.map((f) => f.tick)
  t.equal(new Set(ticks).size, ticks.length, `no tick fired twice (${fired.map((f) => `${new Date(f.tick).toISOString()} by ${f.by}`).join(', ')})`)
  const sorted = [...ticks].sort((x, y) => x - y)
  t.ok(sorted.every((tick) => tick % 1000 === 0), 'each tick is a planned second, not the moment a timer ran')
  t.ok(sorted.slice(1).every((tick, i) => tick - (sorted[i] as number) === 1000), 'consecutive seconds, none missing')
  t.ok(fired.every((f) => f.at >= f.tick), 'no tick fires before its time')
  const c = redis.client()
  for (const f of fired) t.equal(await c.get(`${PREFIX}tick:every:${f.tick}`), f.by, 'the tick lock names the replica that fired it')
  const state = await c.hgetall(`${PREFIX}trigger-state:every`)
  t.equal(Number(state['lastTick']), sorted.at(-1), 'lastTick is the latest tick fired')
  t.equal(missedEvents([a, b]).length, 0, 'nothing reported missed')
  const metric = async (r: Replica): Promise<number> => (await r.registry.getSingleMetric('kindling_trigger_fires_total')?.get())?.values
    .filter((v) => v.labels['result'] === 'ok').reduce((s, v) => s + v.value, 0) ?? 0
  t.equal(await metric(a) + await metric(b), fired.length, 'kindling_trigger_fires_total{result="ok"} counts each firing once')
})

t.test('ticks missed while every replica was down: one trigger.missed event with the count, from one replica', async (t) => {
  const redis = await startRedis(t)
  const fired: number[] = []
  const fire: FireFn = async (_t, tickAt) => { fired.push(tickAt.getTime()) }
  const first = await replica(t, redis, 'first', fire)
  await first.store.put(define('hourly', { cron: '0 0 * * * *' }))
  await first.close()
  // Not within a few seconds after an hour: the top of the hour would still be "late", not missed.
  await waitFor(() => Date.now() % HOUR > 5000, 'a few seconds past the hour', 10_000, 100)
  const hour = Date.now() - (Date.now() % HOUR)
  // Every replica down for five hours: the watermark (ticks settled up to) is that old.
  await redis.client().hset(`${PREFIX}trigger-state:hourly`, 'watermark', String(hour - 5 * HOUR))

  const [a, b] = await Promise.all([replica(t, redis, 'a', fire), replica(t, redis, 'b', fire)])
  const missed = missedEvents([a, b])
  t.equal(missed.length, 1, 'exactly one trigger.missed event across both replicas')
  t.match(missed[0], { trigger: 'hourly', count: 5, first: new Date(hour - 4 * HOUR).toISOString(), last: new Date(hour).toISOString() })
  t.same(fired, [], 'missed ticks are reported, not fired late')
  const state = await a.store.state('hourly')
  t.equal(state.missed, 5, 'the trigger counts its missed ticks')
  t.equal(Number(state.watermark), hour, 'they are settled')

  // A reload (a resync, a restart) reports nothing again.
  await a.scheduler.reloadAll()
  await b.scheduler.reloadAll()
  const c = await replica(t, redis, 'c', fire)
  t.equal(missedEvents([a, b, c]).length, 1, 'reported once only')
})

t.test('an update and a delete reach the other replica at once; a deleted trigger stops firing on both', async (t) => {
  const redis = await startRedis(t)
  const fired: Array<{ trigger: string; tick: number; body: unknown }> = []
  const fire: FireFn = async (trigger, tickAt) => { fired.push({ trigger: trigger.name, tick: tickAt.getTime(), body: trigger.body }) }
  const a = await replica(t, redis, 'a', fire)
  const b = await replica(t, redis, 'b', fire)
  await a.store.put(define('clock', { cron: '* * * * * *' }))
  const v1 = define('every', { cron: '* * * * * *', body: 'one' })
  await a.store.put(v1)
  await waitFor(() => fired.some((f) => f.trigger === 'every' && f.body === 'one'), 'the first version to fire')

  // Updated on B: both replicas hold the new version, and from then on only it fires.
  const v2 = define('every', { cron: '* * * * * *', body: 'two' }, v1)
  await b.store.put(v2)
  await waitFor(() => [a, b].every((r) => r.scheduler.scheduled().find((x) => x.name === 'every')?.body === 'two'), 'both replicas to reload the update')
  const updatedAt = Date.parse(v2.updatedAt)
  await waitFor(() => fired.some((f) => f.trigger === 'every' && f.body === 'two'), 'the new version to fire')
  t.notOk(fired.some((f) => f.trigger === 'every' && f.body === 'one' && f.tick > updatedAt), 'no tick after the update fires the old version')

  // Disabled: kept, not fired.
  await a.store.put(define('every', { cron: '* * * * * *', enabled: false }, v2))
  await waitFor(() => [a, b].every((r) => !r.scheduler.scheduled().some((x) => x.name === 'every')), 'both replicas to unschedule the disabled trigger')
  t.ok(await a.store.get('every'), 'a disabled trigger is kept')

  await a.store.put(define('every', { cron: '* * * * * *' }, v2))
  await waitFor(() => [a, b].every((r) => r.scheduler.scheduled().some((x) => x.name === 'every')), 'both replicas to schedule it again')
  t.ok(await b.store.delete('every'))
  await waitFor(() => [a, b].every((r) => !r.scheduler.scheduled().some((x) => x.name === 'every')), 'both replicas to drop the deleted trigger')
  const before = fired.filter((f) => f.trigger === 'every').length
  const clockAt = fired.filter((f) => f.trigger === 'clock').length
  // The other trigger keeps time: three more of its ticks, and the deleted one did not fire meanwhile.
  await waitFor(() => fired.filter((f) => f.trigger === 'clock').length >= clockAt + 3, 'three more ticks of the clock trigger')
  t.equal(fired.filter((f) => f.trigger === 'every').length, before, 'the deleted trigger fired on neither replica')
  t.equal(await redis.client().exists(`${PREFIX}trigger-state:every`), 0, 'its state is gone with it')
})

t.test('a replica holding an older version of a trigger does not fire it', async (t) => {
  const redis = await startRedis(t)
  const fired: Array<{ body: unknown }> = []
  const a = await replica(t, redis, 'a', async (trigger) => { fired.push({ body: trigger.body }) })
  const v1 = define('every', { cron: '* * * * * *', body: 'old' })
  await a.store.put(v1)
  await waitFor(() => a.scheduler.scheduled().length === 1, 'scheduled')
  // A newer revision written behind the replica's back (its change message never sent): the claim is refused as stale.
  const c = redis.client()
  const v2 = { ...v1, body: 'new', updatedAt: new Date(Date.parse(v1.updatedAt) + 1).toISOString() }
  await c.multi().set(`${PREFIX}trigger:every`, JSON.stringify(v2)).hset(`${PREFIX}trigger-state:every`, 'rev', v2.updatedAt).exec()
  await waitFor(() => fired.some((f) => f.body === 'new'), 'the stored version to fire after a stale claim made the replica reload it')
  const firstNew = fired.findIndex((f) => f.body === 'new')
  t.notOk(fired.slice(firstNew).some((f) => f.body === 'old'), 'the old version does not fire after the store moved on')
})
