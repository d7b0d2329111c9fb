import t from 'tap'
import { CallStats, LATENCY_BOUNDS_MS } from '../../router/call-stats.js'

// The dashboard's call counts (issue 14), on a clock the test moves by hand.
function clocked(start = 1_700_000_000_000) {
  let now = start
  const stats = new CallStats({ bucketMs: 5000, buckets: 180, clock: () => now })
  return { stats, advance: (ms: number) => { now += ms }, now: () => now }
}

t.test('a call lands in the bucket of its time, with its outcome, its start kind and its latency', async (t) => {
  const { stats, now } = clocked()
  stats.record('f', 'ok', 3, 'cold')
  stats.record('f', 'ok', 1, 'warm')
  stats.record('f', 'http5xx', 2, 'warm')
  stats.record('f', 'refused', Number.NaN, undefined)
  const { buckets, totals } = stats.read('f', 5000)
  t.equal(buckets.length, 1, 'a 5 s window is one bucket')
  const b = buckets[0]!
  t.equal(b.t, Math.floor(now() / 5000) * 5000, 'the bucket starts at its 5 s boundary')
  t.equal(b.calls, 4)
  t.equal(b.errors, 2, 'the 5xx and the refused call are errors')
  t.same(b.outcomes, { ok: 2, http5xx: 1, timeout: 0, crashed: 0, oom: 0, refused: 1 })
  t.same(b.starts, { warm: 2, prewarmed: 0, specialized: 0, cold: 1 }, 'the refused call had no instance: no start kind')
  t.equal(b.meanMs, 2, 'the mean is over the timed calls only (1, 2, 3)')
  t.same(totals.outcomes, b.outcomes, 'totals of one bucket are that bucket')
})

t.test('the ring rolls over: a bucket reused after its time starts from zero, older buckets leave the window', async (t) => {
  const { stats, advance } = clocked(0)
  stats.record('f', 'ok', 1, 'warm')
  advance(5000)
  stats.record('f', 'ok', 1, 'warm')
  stats.record('f', 'ok', 1, 'warm')
  let r = stats.read('f', 10_000)
  t.same(r.buckets.map((b) => b.calls), [1, 2], 'two buckets, oldest first')
  t.same(r.buckets.map((b) => b.t), [0, 5000])
  t.equal(r.totals.calls, 3)

  // 180 buckets later the first call's slot comes round again: it must read as this bucket only.
  advance(179 * 5000)
  stats.record('f', 'timeout', 30_000, 'warm')
  r = stats.read('f')
  t.equal(r.buckets.length, 180, 'the default window is the whole ring')
  t.equal(r.buckets[179]!.calls, 1, 'the reused slot counts only the new call')
  t.equal(r.buckets[179]!.outcomes.timeout, 1)
  t.equal(r.buckets[0]!.calls, 2, 'the second bucket is now the oldest in the window')
  t.equal(r.totals.calls, 3, 'the very first call has left the window')

  // Long idle: every slot is stale, nothing is read from them.
  advance(3600_000)
  r = stats.read('f')
  t.equal(r.totals.calls, 0, 'an hour later the window is empty')
  t.ok(r.buckets.every((b) => b.calls === 0 && b.p50Ms === null), 'stale slots read as zeros')
})

t.test('the window is whole buckets, at least one and at most the ring', async (t) => {
  const { stats, advance } = clocked(0)
  for (let i = 0; i < 10; i++) {
    stats.record('f', 'ok', 1, 'warm')
    advance(5000)
  }
  t.equal(stats.read('f', 12_000).buckets.length, 3, '12 s is rounded up to 3 buckets')
  t.equal(stats.read('f', 12_000).totals.calls, 2, 'the current (empty) bucket and the two before it')
  t.equal(stats.read('f', 1).buckets.length, 1)
  t.equal(stats.read('f', 10 * 3600_000).buckets.length, 180)
  t.equal(stats.read('f', 60_000).totals.calls, 10)
})

t.test('percentiles come from the histogram, within one bin of the true value', async (t) => {
  const { stats } = clocked()
  // 100 calls at 1..100 ms: p50 ≈ 50 ms, p99 ≈ 99 ms.
  for (let ms = 1; ms <= 100; ms++) stats.record('f', 'ok', ms, 'warm')
  const b = stats.read('f', 5000).buckets[0]!
  const ratio = LATENCY_BOUNDS_MS[1]! / LATENCY_BOUNDS_MS[0]!
  t.ok(b.p50Ms! > 50 / ratio && b.p50Ms! < 50 * ratio, `p50 ${b.p50Ms} is near 50 ms`)
  t.ok(b.p99Ms! > 99 / ratio && b.p99Ms! < 99 * ratio, `p99 ${b.p99Ms} is near 99 ms`)
  t.ok(b.p99Ms! > b.p50Ms!, 'p99 above p50')
  t.equal(b.meanMs, 50.5)

  // A single slow call among fast ones moves p99, not p50.
  const s2 = clocked().stats
  for (let i = 0; i < 99; i++) s2.record('g', 'ok', 0.5, 'warm')
  s2.record('g', 'ok', 2000, 'cold')
  s2.record('g', 'ok', 2000, 'cold')
  const g = s2.read('g', 5000).totals
  t.ok(g.p50Ms! < 1, `p50 ${g.p50Ms} stays sub-millisecond`)
  t.ok(g.p99Ms! > 1000, `p99 ${g.p99Ms} shows the slow calls`)

  // Beyond the top bound: read as the slowest call, not lost.
  const s3 = clocked().stats
  s3.record('h', 'ok', 120_000, 'cold')
  t.equal(s3.read('h', 5000).totals.p50Ms, 120_000)
  t.equal(s3.read('h', 5000).totals.maxMs, 120_000)
})

t.test('functions are kept apart; forget drops one; a function never called reads as zeros', async (t) => {
  const { stats } = clocked()
  stats.record('a', 'ok', 1, 'warm')
  stats.record('b', 'crashed', 1, 'prewarmed')
  t.same(stats.functions().sort(), ['a', 'b'])
  t.equal(stats.read('a').totals.calls, 1)
  t.equal(stats.read('b').totals.outcomes.crashed, 1)
  stats.forget('a')
  t.same(stats.functions(), ['b'])
  t.equal(stats.read('a').totals.calls, 0)
  t.equal(stats.read('never').buckets.length, 180)
})
