import t from 'tap'
import { judge, mannWhitneyGreater, normalCdf, quantile } from '../../releases/judge.js'
import type { VersionWindow } from '../../common/version-samples.js'

const win = (latencies: number[], errors = 0): VersionWindow => ({ calls: latencies.length, errors, latenciesMs: Float64Array.from(latencies) })
const range = (n: number, f: (i: number) => number): number[] => Array.from({ length: n }, (_, i) => f(i))

t.test('the normal CDF and quantiles', async (t) => {
  t.ok(Math.abs(normalCdf(1.96) - 0.975) < 1e-4)
  t.ok(Math.abs(normalCdf(0) - 0.5) < 1e-7)
  t.ok(Math.abs(normalCdf(-2.326) - 0.01) < 1e-4)
  t.equal(quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5), 5)
  t.equal(quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99), 10)
  t.equal(quantile([], 0.5), 0)
})

t.test('Mann-Whitney U, one-sided: a greater than b', async (t) => {
  const slow = mannWhitneyGreater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
  t.equal(slow.u, 25, 'every a above every b')
  // z = (25 - 12.5 - 0.5) / sqrt(25/12 · 11) = 2.507 → p = 0.0061
  t.ok(Math.abs(slow.z - 2.507) < 0.01, `z ${slow.z}`)
  t.ok(Math.abs(slow.p - 0.0061) < 0.0005, `p ${slow.p}`)
  const fast = mannWhitneyGreater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
  t.equal(fast.u, 0)
  t.ok(fast.p > 0.99, 'a faster a is not "greater"')
  const same = mannWhitneyGreater([3, 3, 3, 3], [3, 3, 3, 3])
  t.same([same.z, same.p], [0, 0.5], 'all ties: no evidence either way')
})

t.test('the verdict: hold under minCalls, breach on errors or on a slower p99, otherwise pass', async (t) => {
  const th = { minCalls: 20, maxErrorRate: 0.05 }
  const base = win(range(200, (i) => 2 + (i % 10) / 10))
  t.match(judge(win(range(19, () => 2), 19), base, th), { result: 'hold' }, 'few calls hold, however bad')
  t.match(judge(win(range(40, () => 2), 8), base, th), { result: 'breach', canary: { calls: 40, errors: 8, errorRate: 0.2 } })
  t.match(judge(win(range(40, () => 2), 2), win(range(200, () => 2), 10), th), { result: 'pass' }, '5 % errors against a baseline\'s 5 %: no regression')
  t.match(judge(win(range(40, () => 2), 3), win([], 0), th), { result: 'breach', reasons: [/no baseline calls/] }, 'without a baseline: the canary\'s own rate')
  const slow = win(range(100, (i) => 20 + (i % 10)))
  t.match(judge(slow, base, { ...th, maxP99Ms: 10 }), { result: 'breach', reasons: [/Mann-Whitney/] })
  t.match(judge(slow, win(range(200, (i) => 20 + (i % 10))), { ...th, maxP99Ms: 10 }), { result: 'pass' }, 'everything slow: the canary is not to blame')
  t.match(judge(slow, base, th), { result: 'pass' }, 'no maxP99Ms: latency is reported, not judged')
  t.ok((judge(slow, base, th).latency?.p ?? 1) < 0.01, 'and the test\'s numbers are there')
})
