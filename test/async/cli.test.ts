import t from 'tap'
import { cli, fakeApi } from '../fixtures/cli.js'

// `kindling async …` against a stand-in platform that records what the CLI sends.

t.test('async invoke sends the body and the idempotency key, and prints the id', async (t) => {
  const api = await fakeApi(t, () => ({ status: 202, body: { id: 'j-0123456789abcdef0123', location: '/v1/async/j-0123456789abcdef0123' } }))
  const r = await cli(['async', 'invoke', 'resize@prod', '-d', 'hello', '--idempotency-key', 'k1', '--path', 'x/y'], { KINDLING_URL: api.url })
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout, 'j-0123456789abcdef0123\n')
  const [req] = api.requests
  t.equal(req?.method, 'POST')
  t.equal(req?.url, '/async/fn/resize@prod/x/y')
  t.equal(req?.headers['idempotency-key'], 'k1')
  t.equal(req?.body.toString(), 'hello')
})

t.test('async invoke prints the platform\'s error code', async (t) => {
  const api = await fakeApi(t, () => ({ status: 503, body: { statusCode: 503, code: 'KDL_ERR_ASYNC_UNAVAILABLE', error: 'Service Unavailable', message: 'needs redis' } }))
  const r = await cli(['async', 'invoke', 'f'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.match(r.stderr, /KDL_ERR_ASYNC_UNAVAILABLE/)
})

t.test('async get and the dlq commands call their routes', async (t) => {
  const api = await fakeApi(t, (req) => {
    if (req.url.startsWith('/v1/async/dlq?')) return { body: { jobs: [{ id: 'j-1', function: 'f', at: '2026-01-01T00:00:00.000Z', error: { code: 'HTTP_500', message: 'boom' } }] } }
    if (req.url.endsWith('/redrive')) return { body: { redriven: ['j-1'] } }
    if (req.method === 'DELETE') return { body: { purged: ['j-1'] } }
    return { body: { id: 'j-1', state: 'dead' } }
  })
  const env = { KINDLING_URL: api.url }
  t.match((await cli(['async', 'get', 'j-1'], env)).stdout, /"state": "dead"/)
  const list = await cli(['async', 'dlq', 'list', '--limit', '5'], env)
  t.match(list.stdout, /j-1\s+f\s+2026-01-01T00:00:00.000Z\s+HTTP_500 boom/)
  t.equal((await cli(['async', 'dlq', 'show', 'j-1'], env)).code, 0)
  t.equal((await cli(['async', 'dlq', 'redrive', 'j-1'], env)).stdout, 'redrove 1 job(s): j-1\n')
  t.equal((await cli(['async', 'dlq', 'redrive'], env)).code, 0)
  t.equal((await cli(['async', 'dlq', 'purge', 'j-1'], env)).stdout, 'purged 1 job(s)\n')
  t.equal((await cli(['async', 'dlq', 'purge'], env)).code, 0)
  t.same(api.requests.map((r) => `${r.method} ${r.url}`), [
    'GET /v1/async/j-1', 'GET /v1/async/dlq?limit=5', 'GET /v1/async/dlq/j-1', 'POST /v1/async/dlq/j-1/redrive', 'POST /v1/async/dlq/redrive',
    'DELETE /v1/async/dlq/j-1', 'DELETE /v1/async/dlq',
  ])
})
