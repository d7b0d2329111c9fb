import t from 'tap'
import { StartGate, type StartPriority } from '../../poolmgr/start-gate.js'

/** A start the test ends by hand, and the order starts began in. */
function harness(gate: StartGate) {
  const began: string[] = []
  const ends = new Map<string, () => void>()
  const start = (name: string, priority: StartPriority): Promise<string> => gate.run(priority, () => new Promise<string>((resolve) => {
    began.push(name)
    ends.set(name, () => resolve(name))
  }))
  return { began, start, end: (name: string) => ends.get(name)!() }
}

/** Lets queued promise continuations run (a turn passes through a resolved promise). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

t.test('no more than `limit` starts run at once; calls waiting go before refills waiting, each in order', async (t) => {
  const gate = new StartGate(2, 0)
  const h = harness(gate)
  const done = [h.start('r1', 'background'), h.start('r2', 'background'), h.start('r3', 'background'), h.start('c1', 'call'), h.start('r4', 'background'), h.start('c2', 'call')]
  await settle()
  t.same(h.began, ['r1', 'r2'], 'two run, the rest wait')
  t.same(gate.stats(), { running: 2, waiting: 4, limit: 2 })
  h.end('r1')
  await settle()
  t.same(h.began, ['r1', 'r2', 'c1'], 'a waiting call takes the first free turn, ahead of refills that waited longer')
  h.end('r2')
  await settle()
  t.same(h.began, ['r1', 'r2', 'c1', 'c2'])
  h.end('c1')
  h.end('c2')
  await settle()
  t.same(h.began, ['r1', 'r2', 'c1', 'c2', 'r3', 'r4'], 'then the refills, first come first started')
  h.end('r3')
  h.end('r4')
  t.same(await Promise.all(done), ['r1', 'r2', 'r3', 'c1', 'r4', 'c2'])
  t.same(gate.stats(), { running: 0, waiting: 0, limit: 2 }, 'every turn was given back')
})

t.test('a start that fails gives its turn to the next one', async (t) => {
  const gate = new StartGate(1)
  const failed = gate.run('call', () => Promise.reject(new Error('no container')))
  const next = gate.run('call', () => Promise.resolve('started'))
  await t.rejects(failed, { message: 'no container' })
  t.equal(await next, 'started')
  t.same(gate.stats(), { running: 0, waiting: 0, limit: 1 })
})

t.test('closing refuses the waiting starts with KDL_ERR_SHUTTING_DOWN and lets the running one finish', async (t) => {
  const gate = new StartGate(1)
  const h = harness(gate)
  const running = h.start('a', 'call')
  const waiting = h.start('b', 'background')
  await settle()
  gate.close()
  await t.rejects(waiting, { code: 'KDL_ERR_SHUTTING_DOWN' })
  await t.rejects(gate.run('call', () => Promise.resolve(1)), { code: 'KDL_ERR_SHUTTING_DOWN' }, 'and any start asked for later')
  h.end('a')
  t.equal(await running, 'a')
  t.same(h.began, ['a'], 'the refused start never began')
})

t.test('a limit below 1 is refused', async (t) => {
  t.throws(() => new StartGate(0), RangeError)
  t.throws(() => new StartGate(1.5), RangeError)
})

t.test('refills never take the turns kept for calls: a call starts at once however many refills wait', async (t) => {
  const gate = new StartGate(4)
  t.equal(gate.backgroundLimit, 3, 'a quarter of the limit is kept for calls')
  const h = harness(gate)
  const refills = Array.from({ length: 10 }, (_, i) => h.start(`r${i}`, 'background'))
  await settle()
  t.same(h.began, ['r0', 'r1', 'r2'], 'refills take three turns of four, the rest wait')
  const call = h.start('c1', 'call')
  await settle()
  t.same(h.began, ['r0', 'r1', 'r2', 'c1'], 'the call starts at once, ahead of seven waiting refills')
  const second = h.start('c2', 'call')
  await settle()
  t.same(h.began.length, 4, 'a second call waits: the limit holds')
  h.end('r0')
  await settle()
  t.same(h.began.slice(4), ['c2'], 'and takes the next free turn before any refill')
  h.end('c1')
  await settle()
  t.same(h.began.slice(5), ['r3'], 'a freed call turn lets a refill in only within its share')
  for (let i = 0; i < 10; i++) {
    if (h.began.includes(`r${i}`)) h.end(`r${i}`)
    await settle()
  }
  h.end('c2')
  for (let i = 0; i < 10; i++) { if (h.began.includes(`r${i}`)) h.end(`r${i}`); await settle() }
  t.same((await Promise.all([...refills, call, second])).length, 12)
  t.same(gate.stats(), { running: 0, waiting: 0, limit: 4 }, 'every turn was given back')
  t.same(new StartGate(1).backgroundLimit, 1, 'a gate of one keeps nothing back (refills would never run)')
})
