import Fastify from 'fastify'
import t from 'tap'
import { request } from 'undici'
import { collectRoutes, registerOpenApi, type RouteEntry } from '../../api/openapi.js'
import { ERROR_CODES } from '../../common/errors.js'
import { startPlatform } from '../fixtures/platform.js'

type Doc = Record<string, unknown> & {
  openapi: string
  info: { title: string; version: string }
  paths: Record<string, Record<string, Operation>>
  components: { schemas: Record<string, unknown>; securitySchemes?: Record<string, { type: string; scheme?: string }> }
  tags?: Array<{ name: string }>
}
interface Operation {
  summary?: string
  tags?: string[]
  operationId?: string
  parameters?: Array<{ name: string; in: string }>
  security?: Array<Record<string, string[]>>
  responses: Record<string, { description: string; headers?: Record<string, { schema: { enum?: string[] } }>; content?: Record<string, { schema: ErrorSchema }> }>
  'x-kindling-errors'?: string[]
}
interface ErrorSchema {
  allOf?: [unknown, { properties: { code: { enum: string[] } } }]
}

const TOKEN = 'docs-test-token'
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'options', 'head']

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; text: string }> {
  const res = await request(url, { headers })
  return { status: res.statusCode, type: String(res.headers['content-type'] ?? ''), text: await res.body.text() }
}

/** `/v1/functions/:name` as the document spells it: `/v1/functions/{name}`. */
const openApiPath = (url: string): string => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')

/**
 * What of the registered `/v1` routes the document lacks: an operation, its summary, its tags, a described
 * success answer, its path parameters, and (with the token set) the bearer requirement and the 401.
 */
function undescribed(routes: readonly RouteEntry[], doc: Doc, auth: boolean): string[] {
  const tagNames = new Set((doc.tags ?? []).map((x) => x.name))
  const missing: string[] = []
  for (const r of routes) {
    if (!r.url.startsWith('/v1/')) continue
    const where = `${r.method} ${r.url}`
    const op = doc.paths[openApiPath(r.url)]?.[r.method.toLowerCase()]
    if (op === undefined) { missing.push(`${where}: not in the document`); continue }
    if ((op.summary ?? '') === '') missing.push(`${where}: no summary`)
    if ((op.tags ?? []).length === 0 || !(op.tags ?? []).every((x) => tagNames.has(x))) missing.push(`${where}: no tag, or a tag the document does not list`)
    const ok = Object.entries(op.responses).filter(([s]) => /^2\d\d$/.test(s))
    if (ok.length === 0 || ok.some(([, v]) => v.description === 'Default Response')) missing.push(`${where}: its success answer is not described`)
    for (const p of r.url.matchAll(/:([A-Za-z0-9_]+)/g)) {
      if (!(op.parameters ?? []).some((x) => x.in === 'path' && x.name === p[1])) missing.push(`${where}: path parameter ${p[1]} not described`)
    }
    if (auth && !(op.security ?? []).some((s) => 'bearerAuth' in s)) missing.push(`${where}: no bearer requirement`)
    if (auth && op.responses['401'] === undefined) missing.push(`${where}: no 401 answer`)
  }
  return missing
}

/** Every string of the document (descriptions, enums, extension lists alike). */
function strings(v: unknown, out: string[] = []): string[] {
  if (typeof v === 'string') out.push(v)
  else if (Array.isArray(v)) for (const x of v) strings(x, out)
  else if (typeof v === 'object' && v !== null) for (const [k, x] of Object.entries(v)) { out.push(k); strings(x, out) }
  return out
}

function refs(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) for (const x of v) refs(x, out)
  else if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      if (k === '$ref' && typeof x === 'string') out.push(x)
      else refs(x, out)
    }
  }
  return out
}

const operations = (doc: Doc): Array<[string, string, Operation]> =>
  Object.entries(doc.paths).flatMap(([path, ops]) => Object.entries(ops).filter(([m]) => METHODS.includes(m)).map(([m, op]): [string, string, Operation] => [path, m, op]))

t.test('with KINDLING_API_TOKEN set', async (t) => {
  const p = await startPlatform(t, { KINDLING_API_TOKEN: TOKEN })
  const auth = { authorization: `Bearer ${TOKEN}` }

  const json = await get(`${p.url}/docs/json`)
  t.equal(json.status, 200, '/docs/json answers without the token')
  t.match(json.type, /^application\/json/)
  const doc = JSON.parse(json.text) as Doc

  t.test('/v1 still answers 401 KDL_ERR_UNAUTHORIZED without the token, and answers with it', async (t) => {
    const refused = await get(`${p.url}/v1/functions`)
    t.equal(refused.status, 401)
    t.equal((JSON.parse(refused.text) as { code: string }).code, 'KDL_ERR_UNAUTHORIZED')
    t.equal((await get(`${p.url}/v1/functions`, auth)).status, 200)
  })

  t.test('/docs answers Swagger UI without the token, its assets served by the platform (no CDN)', async (t) => {
    const ui = await get(`${p.url}/docs`)
    t.equal(ui.status, 200)
    t.match(ui.type, /^text\/html/)
    t.match(ui.text, /id="swagger-ui"/)
    const assets = [...ui.text.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] as string)
    t.ok(assets.some((a) => a.endsWith('swagger-ui-bundle.js')), 'the UI bundle is loaded')
    t.same(assets.filter((a) => /^(https?:)?\/\//.test(a)), [], 'nothing is loaded from another host')
    for (const a of assets) {
      const got = await get(new URL(a, `${p.url}/docs`).href)
      t.equal(got.status, 200, `${a} is served`)
    }
    const init = await get(`${p.url}/docs/static/swagger-initializer.js`)
    t.match(init.text, /resolveUrl\('\.\/json'\)/, 'the UI reads the document from /docs/json')
  })

  t.test('the document has the shape of OpenAPI 3', async (t) => {
    t.match(doc.openapi, /^3\.\d+\.\d+$/)
    t.type(doc.info.title, 'string')
    t.type(doc.info.version, 'string')
    t.ok(Object.keys(doc.paths).length > 0, 'paths')
    t.ok(doc.components.schemas['Error'] !== undefined, 'the shared Error schema')
    t.match(doc.components.securitySchemes?.['bearerAuth'], { type: 'http', scheme: 'bearer' })
    for (const [path, method, op] of operations(doc)) {
      t.ok(path.startsWith('/'), `${path} is a path`)
      t.ok(Object.keys(op.responses).length > 0, `${method} ${path} has responses`)
      for (const [status, r] of Object.entries(op.responses)) {
        t.match(status, /^([1-5]\d\d|[1-5]XX|default)$/, `${method} ${path} ${status} is a status`)
        t.type(r.description, 'string', `${method} ${path} ${status} has a description`)
      }
    }
    const ids = operations(doc).map(([, , op]) => op.operationId).filter((x) => x !== undefined)
    t.equal(new Set(ids).size, ids.length, 'operationIds are unique')
    const dangling = refs(doc).filter((r) => !(r.startsWith('#/components/schemas/') && r.slice('#/components/schemas/'.length) in doc.components.schemas))
    t.same(dangling, [], 'every $ref names a schema of components')
  })

  t.test('every /v1 route the platform registered is in the document, described', async (t) => {
    const v1 = p.routes.filter((r) => r.url.startsWith('/v1/'))
    t.ok(v1.some((r) => r.method === 'PUT' && r.url === '/v1/functions/:name'), 'the routes were collected')
    t.ok(v1.length >= 11, `${v1.length} /v1 routes`)
    t.same(undescribed(p.routes, doc, true), [])
    const registered = new Set(v1.map((r) => `${r.method.toLowerCase()} ${openApiPath(r.url)}`))
    const stale = operations(doc).filter(([path]) => path.startsWith('/v1/')).map(([path, m]) => `${m} ${path}`).filter((k) => !registered.has(k))
    t.same(stale, [], 'no /v1 operation is described that the platform does not serve')
  })

  t.test('every KDL_ERR_* code in the document is in the error table, under the status it is answered with', async (t) => {
    const codes = new Set(strings(doc).flatMap((s) => [...s.matchAll(/KDL_ERR_[A-Z0-9_]+/g)].map((m) => m[0])))
    t.ok(codes.size >= 15, `${codes.size} codes appear`)
    t.same([...codes].filter((c) => !Object.hasOwn(ERROR_CODES, c)), [], 'no code outside ERROR_CODES')
    const misplaced: string[] = []
    for (const [path, method, op] of operations(doc)) {
      const listed = new Set<string>()
      for (const [status, r] of Object.entries(op.responses)) {
        for (const code of r.content?.['application/json']?.schema.allOf?.[1].properties.code.enum ?? []) {
          listed.add(code)
          const info = (ERROR_CODES as Record<string, { status: number }>)[code]
          if (info?.status !== Number(status)) misplaced.push(`${method} ${path}: ${code} under ${status}`)
        }
      }
      t.same([...listed].sort(), [...(op['x-kindling-errors'] ?? [])].sort(), `${method} ${path}: x-kindling-errors lists its error answers`)
    }
    t.same(misplaced, [], 'each code under its own status')
  })

  t.test('a real error answer has the documented shape and a documented code', async (t) => {
    const res = await get(`${p.url}/v1/functions/nope`, auth)
    t.equal(res.status, 404)
    const body = JSON.parse(res.text) as Record<string, unknown>
    const required = (doc.components.schemas['Error'] as { required: string[] }).required
    t.same([...required].sort(), ['code', 'error', 'message', 'statusCode'])
    for (const k of required) t.ok(k in body, `the answer has ${k}`)
    const documented = doc.paths['/v1/functions/{name}']?.['get']?.responses['404']?.content?.['application/json']?.schema.allOf?.[1].properties.code.enum
    t.ok(documented?.includes(body['code'] as string), `${String(body['code'])} is documented for 404`)
  })

  t.test('the invocation route is described by hand, headers included, and answers as described', async (t) => {
    for (const path of ['/fn/{name}', '/fn/{name}/{path}']) {
      for (const m of METHODS) {
        const op = doc.paths[path]?.[m]
        t.ok(op !== undefined, `${m} ${path}`)
        t.same(op?.security, [], `${m} ${path} needs no token`)
      }
    }
    const get0 = doc.paths['/fn/{name}']?.['get']
    t.ok(get0?.responses['429']?.headers?.['retry-after'], '429 carries retry-after')
    t.same(get0?.responses['500']?.headers?.['x-kindling-error']?.schema.enum, ['handled'])
    t.same(get0?.responses['502']?.headers?.['x-kindling-error']?.schema.enum, ['unhandled'])
    const kinds = get0?.responses['200']?.headers?.['x-kindling-start']?.schema.enum ?? []

    const deployed = await request(`${p.url}/v1/functions/hi`, {
      method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: 'export default () => "hi"' }),
    })
    t.equal(deployed.statusCode, 201, await deployed.body.text())
    const call = await p.invoke('hi', { path: '/a/b' })
    t.equal(call.status, 200)
    t.ok(kinds.includes(call.headers['x-kindling-start'] ?? ''), `x-kindling-start ${call.headers['x-kindling-start']} is one of ${kinds.join(', ')}`)
    const missing = await p.invoke('nope')
    t.equal(missing.status, 404)
    t.ok(get0?.['x-kindling-errors']?.includes((missing.json() as { code: string }).code), 'its error code is documented')
  })
})

t.test('without KINDLING_API_TOKEN the /v1 operations need no token and answer no 401', async (t) => {
  const p = await startPlatform(t)
  const doc = JSON.parse((await get(`${p.url}/docs/json`)).text) as Doc
  t.same(undescribed(p.routes, doc, false), [])
  const v1 = operations(doc).filter(([path]) => path.startsWith('/v1/'))
  t.ok(v1.length >= 11)
  t.same(v1.filter(([, , op]) => op.security !== undefined || op.responses['401'] !== undefined).map(([path, m]) => `${m} ${path}`), [])
})

t.test('the check fails for a /v1 route added without a description', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const routes = collectRoutes(app)
  await registerOpenApi(app, { auth: true })
  await app.register(async (api) => {
    api.get('/v1/described/:id', { schema: { summary: 'A described route', tags: ['platform'], response: { 200: { description: 'Fine.', type: 'object' } } } }, async () => ({}))
    api.post('/v1/undescribed/:id', async () => ({}))
  })
  await app.ready()
  const doc = JSON.parse((await app.inject('/docs/json')).body) as Doc
  t.same(undescribed(routes, doc, true), [
    'POST /v1/undescribed/:id: no summary',
    'POST /v1/undescribed/:id: no tag, or a tag the document does not list',
    'POST /v1/undescribed/:id: its success answer is not described',
    'POST /v1/undescribed/:id: no bearer requirement',
    'POST /v1/undescribed/:id: no 401 answer',
  ], 'the described route passes, the other is named with each lack')
})
