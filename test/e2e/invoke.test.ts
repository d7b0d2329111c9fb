import t from 'tap'
import { BACKENDS, startPlatform } from '../fixtures/platform.js'

const ECHO = `
export default async function (event, context) {
  return {
    status: Number(event.query.status ?? 200),
    headers: { 'content-type': 'application/json', 'x-echo': 'yes' },
    body: JSON.stringify({ method: event.method, path: event.path, query: event.query, headers: event.headers, body: event.body, json: event.json, fn: context.function, version: context.version }),
  }
}`


for (const backend of BACKENDS) {
 t.test(`on the ${backend} backend`, async (t) => {
  t.test('deploy then invoke', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const dep = await p.deploy('echo', { runtime: 'node', code: ECHO })
    t.equal(dep.status, 201, 'a first deploy answers 201')
    t.equal(dep.json['version'], 1)

    t.test('forwards a GET with path, query and headers', async (t) => {
      const res = await p.invoke('echo', { path: '/a/b?x=1&x=2&y=z', headers: { 'x-custom': 'hi', 'x-kindling-start': 'forged' } })
      t.equal(res.status, 200)
      const got = res.json() as Record<string, any>
      t.equal(got.method, 'GET')
      t.equal(got.path, '/a/b')
      t.same(got.query, { x: ['1', '2'], y: 'z' })
      t.equal(got.headers['x-custom'], 'hi')
      t.notOk(got.headers['x-kindling-start'], 'client x-kindling-* headers are not passed to the function')
      t.ok(got.headers['x-kindling-invocation-id'], 'the function sees the invocation id')
      t.equal(got.fn, 'echo')
      t.equal(got.version, 1)
      t.match(res.headers['x-kindling-start'], /^(warm|prewarmed|specialized|cold)$/)
    })

    t.test('forwards a POST JSON body and answers with custom status and headers', async (t) => {
      const res = await p.invoke('echo', { method: 'POST', path: '?status=201', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ a: 1 }) })
      t.equal(res.status, 201)
      t.equal(res.headers['x-echo'], 'yes')
      const got = res.json() as Record<string, any>
      t.equal(got.method, 'POST')
      t.equal(got.path, '/')
      t.same(got.json, { a: 1 })
      t.equal(got.body, '{"a":1}')
    })

    t.test('a second call is served warm', async (t) => {
      await p.invoke('echo')
      const res = await p.invoke('echo')
      t.equal(res.headers['x-kindling-start'], 'warm')
    })

    t.test('GET /v1/functions/:name shows the stored spec', async (t) => {
      const res = await p.api('GET', '/v1/functions/echo')
      t.equal(res.status, 200)
      t.equal(res.json['mode'], 'recycle')
      t.equal(res.json['version'], 1)
      t.notOk('code' in res.json, 'the code itself is not echoed back')
      const list = await p.api('GET', '/v1/functions')
      t.same((list.json['functions'] as Array<{ name: string }>).map((f) => f.name), ['echo'])
    })
  })

  t.test('an update answers from the new version and a delete answers 404', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('v', { runtime: 'node', code: 'export default () => "one"' })
    t.equal((await p.invoke('v')).text, 'one')
    const up = await p.deploy('v', { runtime: 'node', code: 'export default () => "two"' })
    t.equal(up.status, 200, 'an update answers 200')
    t.equal(up.json['version'], 2)
    t.equal((await p.invoke('v')).text, 'two', 'the first call after the PUT answers from version 2')
    const del = await p.api('DELETE', '/v1/functions/v')
    t.equal(del.status, 200)
    const gone = await p.invoke('v')
    t.equal(gone.status, 404)
    t.equal(gone.json() && (gone.json() as any).code, 'KDL_ERR_FN_NOT_FOUND')
    t.equal((await p.api('DELETE', '/v1/functions/v')).json['code'], 'KDL_ERR_FN_NOT_FOUND')
  })

  t.test('returns KDL_ERR_FN_NOT_FOUND (404) for an unknown function', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const res = await p.invoke('nope')
    t.equal(res.status, 404)
    t.match(res.json(), { statusCode: 404, code: 'KDL_ERR_FN_NOT_FOUND', error: 'Not Found' })
    const odd = await p.invoke('Not_A_Name')
    t.equal(odd.status, 404, 'a name that could never be deployed is just not found')
    const metrics = await (await fetch(`${p.url}/metrics`)).text()
    t.notMatch(metrics, /function="nope"/, 'unknown names do not become metric labels')
  })

  t.test('20 concurrent calls to one function are all answered', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('c', { runtime: 'node', code: 'export default async (e) => { await new Promise(r => setTimeout(r, 20)); return e.query.i }', mode: 'persistent', maxInstances: 4 })
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => p.invoke('c', { path: `?i=${i}` })))
    t.same(answers.map((a) => a.status), Array(20).fill(200))
    t.same(answers.map((a) => a.text), Array.from({ length: 20 }, (_, i) => String(i)))
  })

 })
}
