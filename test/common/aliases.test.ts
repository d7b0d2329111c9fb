import t from 'tap'
import { aliasesOf, liveVersions, parseAliasBody, splitQualifier, targetsOf, versionQualifier } from '../../common/aliases.js'
import { Metrics } from '../../common/metrics.js'
import { VersionSamples } from '../../common/version-samples.js'
import type { FunctionRecord } from '../../common/types.js'
import { AliasRoute, RouteEntry } from '../../router/instance-table.js'
import { parseCanaryBody } from '../../releases/canary.js'
import { Registry } from 'prom-client'

const exists = (v: number): boolean => v >= 1 && v <= 5

t.test('alias bodies: one version or integer weights over kept versions', async (t) => {
  t.same(parseAliasBody({ version: 3 }, exists), { version: 3 })
  t.same(parseAliasBody({ weights: { 1: 90, 2: 10 } }, exists), { weights: { 1: 90, 2: 10 } })
  t.same(parseAliasBody({ weights: { 1: 0, 2: 10 } }, exists), { version: 2 }, 'one version with all the weight is that version')
  t.throws(() => parseAliasBody({ version: 9 }, exists), { code: 'KDL_ERR_VERSION_NOT_FOUND' })
  t.throws(() => parseAliasBody({ weights: { 1: 50, 9: 50 } }, exists), { code: 'KDL_ERR_VERSION_NOT_FOUND', message: /weights.9/ })
  t.throws(() => parseAliasBody({ weights: { 1: 1.5 } }, exists), { code: 'KDL_ERR_BAD_SPEC', message: /weights.1/ })
  t.throws(() => parseAliasBody({ weights: { x: 1 } }, exists), { code: 'KDL_ERR_BAD_SPEC' })
  t.throws(() => parseAliasBody({ version: 1, weights: {} }, exists), { code: 'KDL_ERR_BAD_SPEC' })
  t.throws(() => parseAliasBody([], exists), { code: 'KDL_ERR_BAD_SPEC' })
})

t.test('qualifiers and live versions', async (t) => {
  t.same(splitQualifier('hello'), { name: 'hello', qualifier: 'latest' })
  t.same(splitQualifier('hello@beta'), { name: 'hello', qualifier: 'beta' })
  t.equal(versionQualifier('12'), 12)
  t.equal(versionQualifier('beta'), undefined)
  t.equal(versionQualifier('012'), undefined)
  const head = { name: 'f', version: 2, aliases: { latest: { weights: { 2: 90, 3: 10 } }, old: { version: 1 } } } as unknown as FunctionRecord
  t.same([...liveVersions(head)].sort(), [1, 2, 3])
  t.same(targetsOf({ weights: { 2: 10, 3: 90 } }), [[3, 90], [2, 10]], 'heaviest first')
  t.same(aliasesOf({ name: 'f', version: 4 } as FunctionRecord), { latest: { version: 4 } }, 'a record from before versions: latest is its version')
})

t.test('a weighted route picks uniformly over the total weight, and a route key always picks the same', async (t) => {
  const metrics = new Metrics(new Registry())
  const spec = (version: number): RouteEntry => new RouteEntry({ name: 'f', version, mode: 'persistent', concurrency: 1, maxInstances: 1, queueTimeoutMs: 1, timeoutMs: 1, idleTimeoutMs: 1, maxInvocations: 1, maxAgeMs: 1 }, metrics)
  const a = spec(1)
  const b = spec(2)
  const route = new AliasRoute('f@x', [{ entry: a, weight: 75 }, { entry: b, weight: 25 }])
  let bs = 0
  for (let i = 0; i < 40_000; i++) if (route.pick(undefined) === b) bs++
  // Binomial(40000, 0.25): sd 86.6; ±450 is ±5.2 sd.
  t.ok(Math.abs(bs - 10_000) < 450, `${bs} of 40000 picks on the 25 % version`)
  const first = route.pick('user-7')
  for (let i = 0; i < 100; i++) t.equal(route.pick('user-7'), first)
  let keyed = 0
  for (let i = 0; i < 4000; i++) if (route.pick(`user-${i}`) === b) keyed++
  t.ok(Math.abs(keyed - 1000) < 150, `keys spread by weight too: ${keyed} of 4000`)
})

t.test('version samples: only watched functions, a reservoir beyond the cap', async (t) => {
  const s = new VersionSamples(100)
  s.record('f', 1, true, 5)
  t.equal(s.read('f', 1).calls, 0, 'not watched: nothing kept')
  s.watch('f')
  for (let i = 0; i < 1000; i++) s.record('f', 2, i % 10 !== 0, i)
  const w = s.read('f', 2)
  t.same([w.calls, w.errors, w.latenciesMs.length], [1000, 100, 100])
  const mean = w.latenciesMs.reduce((x, y) => x + y, 0) / w.latenciesMs.length
  t.ok(mean > 300 && mean < 700, `a uniform sample of the window (mean ${mean.toFixed(0)} of 0…999)`)
  s.reset('f')
  t.equal(s.read('f', 2).calls, 0)
})

t.test('canary bodies: defaults, and every problem names its field', async (t) => {
  t.match(parseCanaryBody({ to: 2 }), { to: 2, alias: 'latest', steps: [10, 50, 100], intervalMs: 60_000, minCalls: 50, maxErrorRate: 0.05 })
  t.match(parseCanaryBody({ to: 2, interval: '30s' }), { intervalMs: 30_000 })
  t.match(parseCanaryBody({ to: 2, interval: '1.5m' }), { intervalMs: 90_000 })
  const field = (body: unknown): string | undefined => {
    try { parseCanaryBody(body) } catch (err) { return (err as { details?: { field?: string } }).details?.field }
    return undefined
  }
  t.equal(field({ to: 0 }), 'to')
  t.equal(field({ to: 2, steps: [50, 10, 100] }), 'steps[1]')
  t.equal(field({ to: 2, steps: [10, 50] }), 'steps')
  t.equal(field({ to: 2, interval: 'soon' }), 'interval')
  t.equal(field({ to: 2, maxErrorRate: 5 }), 'maxErrorRate')
  t.equal(field({ to: 2, surprise: 1 }), 'surprise')
})
