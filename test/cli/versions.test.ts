import { join } from 'node:path'
import t, { type Test } from 'tap'
import { defaultActor } from '../../cli/http.js'
import { cli, fakeApi, only, type Recorded } from '../fixtures/cli.js'

const ACTOR = defaultActor()

/** The request the command sent: method, url and JSON body, with the actor header checked on the way. */
function sent(t: Test, requests: Recorded[]): { method: string; url: string; json: unknown } {
  const req = only(requests)
  t.equal(req.headers['x-kindling-actor'], ACTOR, 'the request says who sends it')
  return { method: req.method, url: req.url, json: req.json }
}

const lines = (...ls: string[]): string => ls.map((l) => `${l}\n`).join('')

t.test('the actor is user@host, a header value', async (t) => {
  t.match(ACTOR, /^[\x21-\x7e]+@[\x21-\x7e]+$/)
  t.ok(ACTOR.length <= 200)
})

t.test('fn versions prints version, code, deployed, by and the aliases routing to each', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      versions: [
        { name: 'hello', version: 3, runtime: 'node', codeHash: 'a1b2c3d4e5f60718293a4b5c6d7e8f90', updatedAt: '2025-01-01T10:00:00.123Z', deployedBy: 'ana@box', routedBy: [] },
        { name: 'hello', version: 4, runtime: 'node', codeHash: 'ffeeddccbbaa99887766', updatedAt: '2025-01-02T11:30:05.000Z', deployedBy: 'ana@box', routedBy: [{ alias: 'latest', percent: 100 }, { alias: 'live', percent: 90 }] },
        { name: 'hello', version: 5, runtime: 'node', codeHash: '0123456789abcdef', updatedAt: '2025-01-03T09:00:00Z', routedBy: [{ alias: 'live', percent: 10 }, { alias: 'beta', percent: 100 }] },
      ],
      keep: 10,
    },
  }))
  const r = await cli(['fn', 'versions', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'GET', url: '/v1/functions/hello/versions', json: undefined })
  t.equal(r.stdout, lines(
    'VERSION  CODE          DEPLOYED              BY       ALIASES',
    '3        a1b2c3d4e5f6  2025-01-01T10:00:00Z  ana@box  -',
    '4        ffeeddccbbaa  2025-01-02T11:30:05Z  ana@box  latest, live 90%',
    '5        0123456789ab  2025-01-03T09:00:00Z  -        live 10%, beta',
  ))
  t.equal(r.stderr, '')
})

t.test('fn versions --json prints the answer as it is', async (t) => {
  const body = { versions: [{ version: 1, codeHash: 'x', updatedAt: 'now', routedBy: [] }], keep: 10 }
  const api = await fakeApi(t, () => ({ body }))
  const r = await cli(['fn', 'versions', 'hello', '--json'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, JSON.stringify(body, null, 2) + '\n')
})

t.test('fn rollback POSTs {} and prints the move of latest', async (t) => {
  const api = await fakeApi(t, () => ({ body: { from: 2, to: 1, function: { name: 'hello', version: 1 } } }))
  const r = await cli(['fn', 'rollback', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'POST', url: '/v1/functions/hello/rollback', json: {} })
  t.equal(r.stdout, 'rolled back hello: latest 2 → 1\n')
})

t.test('fn rollback --to V sends {to: V}', async (t) => {
  const api = await fakeApi(t, () => ({ body: { from: 7, to: 3, function: { name: 'hello', version: 3 } } }))
  const r = await cli(['fn', 'rollback', 'hello', '--to', '3'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'POST', url: '/v1/functions/hello/rollback', json: { to: 3 } })
  t.equal(r.stdout, 'rolled back hello: latest 7 → 3\n')
})

t.test('fn rollback reports the API error', async (t) => {
  const api = await fakeApi(t, () => ({ status: 404, body: { statusCode: 404, code: 'KDL_ERR_VERSION_NOT_FOUND', message: 'no version below 1 is kept' } }))
  const r = await cli(['fn', 'rollback', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, 'error KDL_ERR_VERSION_NOT_FOUND: no version below 1 is kept\n')
})

t.test('fn alias list prints each alias and what it routes to, weights as shares of their total', async (t) => {
  const api = await fakeApi(t, () => ({
    body: { aliases: { latest: { version: 4 }, live: { weights: { '5': 1, '4': 3 } }, beta: { version: 5 }, half: { weights: { '3': 90, '4': 10 } } } },
  }))
  const r = await cli(['fn', 'alias', 'list', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'GET', url: '/v1/functions/hello/aliases', json: undefined })
  t.equal(r.stdout, lines(
    'ALIAS   ROUTES TO',
    'latest  version 4',
    'live    4: 75%, 5: 25%',
    'beta    version 5',
    'half    3: 90%, 4: 10%',
  ))
})

t.test('fn alias list --json prints the answer', async (t) => {
  const body = { aliases: { latest: { version: 1 } } }
  const api = await fakeApi(t, () => ({ body }))
  const r = await cli(['fn', 'alias', 'list', 'hello', '--json'], { KINDLING_URL: api.url })
  t.equal(r.stdout, JSON.stringify(body, null, 2) + '\n')
})

t.test('fn alias set --version PUTs {version} and prints the alias', async (t) => {
  const api = await fakeApi(t, () => ({ body: { aliases: { latest: { version: 4 }, beta: { version: 5 } } } }))
  const r = await cli(['fn', 'alias', 'set', 'hello', 'beta', '--version', '5'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'PUT', url: '/v1/functions/hello/aliases/beta', json: { version: 5 } })
  t.equal(r.stdout, 'alias beta of hello: version 5\n')
  t.equal(r.stderr, '')
})

t.test('fn alias set --weights PUTs {weights} keyed by version and prints the shares', async (t) => {
  const api = await fakeApi(t, () => ({ body: { aliases: { latest: { version: 4 }, live: { weights: { '4': 90, '5': 10 } } } } }))
  const r = await cli(['fn', 'alias', 'set', 'hello', 'live', '--weights', '4=90, 5=10'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'PUT', url: '/v1/functions/hello/aliases/live', json: { weights: { '4': 90, '5': 10 } } })
  t.equal(r.stdout, 'alias live of hello: 4: 90%, 5: 10%\n')
})

t.test('fn alias set needs exactly one of --version and --weights, and well-formed weights', async (t) => {
  const api = await fakeApi(t)
  const env = { KINDLING_URL: api.url }
  const both = await cli(['fn', 'alias', 'set', 'hello', 'beta', '--version', '5', '--weights', '4=90,5=10'], env)
  t.equal(both.code, 1)
  t.equal(both.stderr, 'error: alias set needs exactly one of --version V or --weights V=W,…\n')
  const neither = await cli(['fn', 'alias', 'set', 'hello', 'beta'], env)
  t.equal(neither.code, 1)
  t.equal(neither.stderr, 'error: alias set needs exactly one of --version V or --weights V=W,…\n')
  const bad = await cli(['fn', 'alias', 'set', 'hello', 'live', '--weights', '4=90,5:10'], env)
  t.equal(bad.code, 1)
  t.equal(bad.stderr, 'error: --weights: "5:10" is not VERSION=WEIGHT (whole numbers, e.g. 3=90,4=10)\n')
  const fraction = await cli(['fn', 'alias', 'set', 'hello', 'live', '--weights', '4=0.5'], env)
  t.equal(fraction.code, 1)
  t.match(fraction.stderr, /^error: --weights: "4=0\.5" is not VERSION=WEIGHT/)
  const twice = await cli(['fn', 'alias', 'set', 'hello', 'live', '--weights', '4=1,4=2'], env)
  t.equal(twice.code, 1)
  t.equal(twice.stderr, 'error: --weights: version 4 is given twice\n')
  t.equal(api.requests.length, 0, 'nothing is sent')
  t.equal(both.stdout + neither.stdout + bad.stdout, '')
})

t.test('fn alias delete sends DELETE and says so', async (t) => {
  const api = await fakeApi(t, () => ({ body: { deleted: 'beta' } }))
  const r = await cli(['fn', 'alias', 'delete', 'hello', 'beta'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'DELETE', url: '/v1/functions/hello/aliases/beta', json: undefined })
  t.equal(r.stdout, 'deleted alias beta of hello\n')
})

const canaryState = {
  alias: 'live', baseline: 4, to: 5, steps: [10, 50, 100], step: 0, state: 'running', intervalMs: 60_000, minCalls: 50,
  maxErrorRate: 0.05, startedAt: '2025-01-01T00:00:00.000Z', stepStartedAt: '2025-01-01T00:00:00.000Z', history: [],
}

t.test('fn canary start PUTs every option given, steps as integers, and prints a summary', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { ...canaryState, maxP99Ms: 250 } }))
  const r = await cli(['fn', 'canary', 'start', 'hello', '--to', '5', '--alias', 'live', '--steps', '10,50,100', '--interval', '60s',
    '--min-calls', '50', '--max-error-rate', '0.05', '--max-p99-ms', '250'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), {
    method: 'PUT', url: '/v1/functions/hello/canary',
    json: { to: 5, alias: 'live', steps: [10, 50, 100], interval: '60s', minCalls: 50, maxErrorRate: 0.05, maxP99Ms: 250 },
  })
  t.equal(r.stdout, 'canary of hello: version 5 on live (baseline 4), step 1/3 at 10 %\n')
  t.equal(r.stderr, '')
})

t.test('fn canary start sends only --to when nothing else is given', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { ...canaryState, alias: 'latest', steps: [25, 100] } }))
  const r = await cli(['fn', 'canary', 'start', 'hello', '--to', '5'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'PUT', url: '/v1/functions/hello/canary', json: { to: 5 } })
  t.equal(r.stdout, 'canary of hello: version 5 on latest (baseline 4), step 1/2 at 25 %\n')
})

t.test('fn canary start refuses malformed --steps and a missing --to without calling the API', async (t) => {
  const api = await fakeApi(t)
  const env = { KINDLING_URL: api.url }
  const bad = await cli(['fn', 'canary', 'start', 'hello', '--to', '5', '--steps', '10,half,100'], env)
  t.equal(bad.code, 1)
  t.equal(bad.stderr, 'error: --steps: "half" is not a whole percent (e.g. 10,50,100)\n')
  const noTo = await cli(['fn', 'canary', 'start', 'hello'], env)
  t.equal(noTo.code, 2)
  t.match(noTo.stderr, /required option '--to <version>' not specified/)
  const badRate = await cli(['fn', 'canary', 'start', 'hello', '--to', '5', '--max-error-rate', '2'], env)
  t.equal(badRate.code, 2)
  t.match(badRate.stderr, /--max-error-rate <rate>.*must be a number from 0 to 1/)
  t.equal(api.requests.length, 0)
})

const side = (calls: number, errors: number, p50Ms: number, p99Ms: number): Record<string, number> =>
  ({ calls, errors, errorRate: calls === 0 ? 0 : errors / calls, p50Ms, p99Ms })

t.test('fn canary status prints the state, the live window and the verdicts as a table', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      ...canaryState, step: 1, maxP99Ms: 250,
      history: [
        { step: 0, weight: 10, result: 'hold', at: '2025-01-01T00:00:15.000Z', reasons: ['12 canary calls, fewer than 50'], canary: side(12, 0, 3, 9), baseline: side(108, 1, 3, 10) },
        { step: 0, weight: 10, result: 'pass', at: '2025-01-01T00:01:00.000Z', reasons: [], canary: side(60, 0, 3, 9.5), baseline: side(540, 1, 3, 10.25), latency: { u: 15000, z: -0.4, p: 0.66 } },
      ],
      window: {
        elapsedMs: 12_500,
        verdict: { result: 'hold', reasons: ['40 canary calls, fewer than 50'], canary: side(40, 2, 4, 12), baseline: side(40, 0, 3, 10), latency: { u: 900, z: 1.5, p: 0.0668 } },
      },
    },
  }))
  const r = await cli(['fn', 'canary', 'status', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'GET', url: '/v1/functions/hello/canary', json: undefined })
  t.equal(r.stdout, lines(
    'canary of hello: version 5 on live (baseline 4)',
    'state: running, step 2/3 at 50 %',
    'rules: interval 60 s, min calls 50, max error rate +0.05, max p99 250 ms',
    'window: 12.5 s of 60 s, so far hold (40 canary calls, fewer than 50)',
    '  canary    40 calls, 2 errors (5.0 %), p50 4 ms, p99 12 ms',
    '  baseline  40 calls, 0 errors (0.0 %), p50 3 ms, p99 10 ms',
    '  latency   U 900, z 1.50, p 0.067',
    '',
    'STEP  WEIGHT  RESULT  CANARY CALLS  ERR%  P99     BASELINE CALLS  ERR%  P99',
    '1     10%     hold    12            0.0   9 ms    108             0.9   10 ms',
    '1     10%     pass    60            0.0   9.5 ms  540             0.2   10.3 ms',
  ))
})

t.test('fn canary status of an ended canary says why, and a 100 % step has no baseline numbers', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      ...canaryState, steps: [50, 100], step: 1, state: 'rolled-back', endedAt: '2025-01-01T00:03:00.000Z',
      reason: 'breach at step 2 (100 %): error rate 0.2 above 0.05',
      history: [
        { step: 0, weight: 50, result: 'pass', at: '2025-01-01T00:01:00.000Z', reasons: [], canary: side(100, 0, 3, 9), baseline: side(100, 0, 3, 9) },
        { step: 1, weight: 100, result: 'breach', at: '2025-01-01T00:02:00.000Z', reasons: ['error rate 0.2 above 0.05'], canary: side(50, 10, 3, 9), baseline: side(0, 0, 0, 0) },
      ],
    },
  }))
  const r = await cli(['fn', 'canary', 'status', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, lines(
    'canary of hello: version 5 on live (baseline 4)',
    'state: rolled-back, step 2/2 at 100 %',
    'rules: interval 60 s, min calls 50, max error rate +0.05',
    'reason: breach at step 2 (100 %): error rate 0.2 above 0.05',
    '',
    'STEP  WEIGHT  RESULT  CANARY CALLS  ERR%  P99   BASELINE CALLS  ERR%  P99',
    '1     50%     pass    100           0.0   9 ms  100             0.0   9 ms',
    '2     100%    breach  50            20.0  9 ms  0               -     -',
  ))
})

t.test('fn canary status --json prints the answer', async (t) => {
  const api = await fakeApi(t, () => ({ body: canaryState }))
  const r = await cli(['fn', 'canary', 'status', 'hello', '--json'], { KINDLING_URL: api.url })
  t.equal(r.stdout, JSON.stringify(canaryState, null, 2) + '\n')
})

t.test('fn canary abort sends DELETE and names the version served again', async (t) => {
  const api = await fakeApi(t, () => ({ body: { ...canaryState, state: 'aborted', reason: 'aborted by ana@box' } }))
  const r = await cli(['fn', 'canary', 'abort', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), { method: 'DELETE', url: '/v1/functions/hello/canary', json: undefined })
  t.equal(r.stdout, 'aborted the canary of hello: live serves version 4 again\n')
})

t.test('fn deploy --no-promote adds promote=false and says which version is stored and which served', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, body: { name: 'hello', version: 4, deployed: 5 } }))
  const dir = t.testdir({ 'v5.mjs': 'export default () => 5\n' })
  const r = await cli(['fn', 'deploy', 'hello', '--runtime', 'node', '--code', join(dir, 'v5.mjs'), '--no-promote'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(sent(t, api.requests), {
    method: 'PUT', url: '/v1/functions/hello?wait=true&promote=false', json: { runtime: 'node', code: 'export default () => 5\n' },
  })
  t.equal(r.stdout, 'stored hello version 5 (latest still serves 4)\n')
  t.equal(r.stderr, '')
})

t.test('fn deploy --no-promote of a first version: it is served, and the CLI says why', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { name: 'hello', version: 1, deployed: 1 } }))
  const dir = t.testdir({ 'v1.mjs': 'export default () => 1\n' })
  const r = await cli(['fn', 'deploy', 'hello', '--runtime', 'node', '--code', join(dir, 'v1.mjs'), '--no-promote'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'deployed hello version 1\n')
  t.equal(r.stderr, 'note: a first deploy is always promoted\n')
})

t.test('fn deploy without --no-promote leaves promote out of the URL', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, body: { name: 'hello', version: 5, deployed: 5 } }))
  const dir = t.testdir({ 'v5.mjs': 'export default () => 5\n' })
  const r = await cli(['fn', 'deploy', 'hello', '--runtime', 'node', '--code', join(dir, 'v5.mjs')], { KINDLING_URL: api.url })
  t.equal(sent(t, api.requests).url, '/v1/functions/hello?wait=true')
  t.equal(r.stdout, 'deployed hello version 5\n')
})

t.test('fn deploy --no-promote with a build streams the outcome and still names the stored version', async (t) => {
  const api = await fakeApi(t, () => ({
    headers: { 'content-type': 'application/x-ndjson' },
    body: [
      JSON.stringify({ event: 'build', build: { id: 'b-1', command: 'npm install' } }),
      JSON.stringify({ event: 'result', body: { name: 'hello', version: 4, deployed: 5, build: { id: 'b-1', reused: false } } }),
    ].join('\n') + '\n',
  }))
  const dir = t.testdir({ 'index.mjs': 'export default () => 5\n', 'package.json': '{"dependencies":{"ms":"2"}}' })
  const r = await cli(['fn', 'deploy', 'hello', '--runtime', 'node', '--code', dir, '--no-promote'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(sent(t, api.requests).url, '/v1/functions/hello?wait=true&promote=false')
  t.equal(r.stdout, 'stored hello version 5 (latest still serves 4)\n')
})

t.test('fn invoke NAME@alias keeps the @ in the path and encodes each side', async (t) => {
  const api = await fakeApi(t, () => ({ body: 'ok' }))
  const env = { KINDLING_URL: api.url }
  await cli(['fn', 'invoke', 'hello@beta'], env)
  await cli(['fn', 'invoke', 'hello@7', '--path', '/sub'], env)
  await cli(['fn', 'invoke', 'odd name@be ta'], env)
  t.strictSame(api.requests.map((r) => r.url), ['/fn/hello@beta', '/fn/hello@7/sub', '/fn/odd%20name@be%20ta'])
  t.ok(api.requests.every((r) => r.headers['x-kindling-actor'] === ACTOR), 'invocations carry the actor too')
})

t.test('a caller\'s own x-kindling-actor header is kept', async (t) => {
  const api = await fakeApi(t, () => ({ body: 'ok' }))
  await cli(['fn', 'invoke', 'hello', '-H', 'X-Kindling-Actor: robot@ci'], { KINDLING_URL: api.url })
  t.equal(only(api.requests).headers['x-kindling-actor'], 'robot@ci')
})

t.test('fn --help lists the release commands, and their own help their options', async (t) => {
  const fn = await cli(['fn', '--help'], {})
  t.equal(fn.code, 0)
  for (const c of ['versions', 'rollback', 'alias', 'canary']) t.match(fn.stdout, new RegExp(`\\n  ${c} `))
  const set = await cli(['fn', 'alias', 'set', '--help'], {})
  t.match(set.stdout, /--version <version>/)
  t.match(set.stdout, /--weights <weights>/)
  const start = await cli(['fn', 'canary', 'start', '--help'], {})
  for (const o of ['--to', '--alias', '--steps', '--interval', '--min-calls', '--max-error-rate', '--max-p99-ms']) t.match(start.stdout, o)
  const deploy = await cli(['fn', 'deploy', '--help'], {})
  t.match(deploy.stdout, /--no-promote/)
})
