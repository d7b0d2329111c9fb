import t from 'tap'
import { cli, fakeApi, only } from '../fixtures/cli.js'

// `kindling triggers ...` against a stand-in platform: what each command sends and prints.

const TRIGGER = { name: 'nightly', cron: '0 3 * * *', timezone: 'Europe/Paris', function: 'report', enabled: true, lastTick: null, missedTicks: 0, nextRuns: ['2025-01-02T02:00:00.000Z'] }

t.test('triggers put sends the spec; -d is JSON when it parses, text otherwise', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: TRIGGER }))
  const r = await cli(['triggers', 'put', 'nightly', '--cron', '0 3 * * *', '--function', 'report', '-d', '{"full":true}', '--timezone', 'Europe/Paris', '-H', 'x-team: ops'], { KINDLING_URL: api.url })
  t.equal(r.code, 0, r.stderr)
  const req = only(api.requests)
  t.equal(req.method, 'PUT')
  t.equal(req.url, '/v1/triggers/nightly')
  t.same(req.json, { cron: '0 3 * * *', function: 'report', body: { full: true }, timezone: 'Europe/Paris', headers: { 'x-team': 'ops' } })
  t.match(r.stdout, /^trigger nightly created\nNAME +CRON +TZ +FUNCTION +ENABLED +LAST-TICK +NEXT +MISSED\nnightly +0 3 \* \* \* +Europe\/Paris +report +true +- +2025-01-02T02:00:00.000Z +0\n$/)

  const text = await fakeApi(t, () => ({ status: 200, body: TRIGGER }))
  const r2 = await cli(['triggers', 'put', 'nightly', '--cron', '0 3 * * *', '--function', 'report', '-d', 'plain words'], { KINDLING_URL: text.url })
  t.equal(r2.code, 0)
  t.same(only(text.requests).json, { cron: '0 3 * * *', function: 'report', body: 'plain words' })
  t.match(r2.stdout, /^trigger nightly updated\n/)
})

t.test('triggers list, get, delete', async (t) => {
  const api = await fakeApi(t, (req) => ({ body: req.method === 'DELETE' ? { deleted: 'nightly' } : req.url === '/v1/triggers' ? { triggers: [TRIGGER] } : TRIGGER }))
  const list = await cli(['triggers', 'list'], { KINDLING_URL: api.url })
  t.equal(list.code, 0)
  t.match(list.stdout, /^NAME .*\nnightly +0 3 \* \* \* +Europe\/Paris +report/)
  const get = await cli(['triggers', 'get', 'nightly'], { KINDLING_URL: api.url })
  t.same(JSON.parse(get.stdout), TRIGGER)
  const del = await cli(['triggers', 'delete', 'nightly'], { KINDLING_URL: api.url })
  t.equal(del.stdout, 'trigger nightly deleted\n')
  t.same(api.requests.map((r) => `${r.method} ${r.url}`), ['GET /v1/triggers', 'GET /v1/triggers/nightly', 'DELETE /v1/triggers/nightly'])
})

t.test('an API error is its code on stderr, exit 1; a missing --cron is usage, exit 2', async (t) => {
  const api = await fakeApi(t, () => ({ status: 400, body: { statusCode: 400, code: 'KDL_ERR_BAD_SPEC', error: 'Bad Request', message: 'cron: nope' } }))
  const r = await cli(['triggers', 'put', 'x', '--cron', 'nope', '--function', 'f'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stderr, 'error KDL_ERR_BAD_SPEC: cron: nope\n')
  const u = await cli(['triggers', 'put', 'x', '--function', 'f'], { KINDLING_URL: api.url })
  t.equal(u.code, 2)
  t.match(u.stderr, /--cron/)
})
