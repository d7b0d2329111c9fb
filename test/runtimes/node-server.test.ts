import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, watch, writeFileSync } from 'node:fs'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { Client, Pool, type Dispatcher } from 'undici'
import { waitFor } from '../fixtures/wait.js'

const SERVER = fileURLToPath(new URL('../../runtimes/node/server.mjs', import.meta.url))
const FIXTURES = fileURLToPath(new URL('../fixtures/functions/', import.meta.url))

interface Reply {
  status: number
  headers: Record<string, string | string[] | undefined>
  text: string
  json: () => any
}

interface CallOptions {
  method?: string
  headers?: Record<string, string>
  body?: string
  /** Send without x-kindling-invocation-id (a control request). */
  control?: boolean
}

interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

interface Runtime {
  proc: ChildProcess
  sock: string
  dir: string
  exited: Promise<Exit>
  /** Lines the server wrote to stdout so far. */
  stdout: string[]
  call(path: string, options?: CallOptions): Promise<Reply>
  load(fixture: string, entrypoint?: string, extra?: Record<string, unknown>): Promise<Reply>
}

let invocationSeq = 0

async function send(client: Client | Pool, path: string, options: CallOptions = {}): Promise<Reply> {
  const headers: Record<string, string> = { ...options.headers }
  if (options.control !== true) headers['x-kindling-invocation-id'] ??= `inv-${++invocationSeq}`
  const res = await client.request({
    path,
    method: (options.method ?? (options.body === undefined ? 'GET' : 'POST')) as Dispatcher.HttpMethod,
    headers,
    body: options.body,
  })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) }
}

/** Resolves once `sock` exists and answers GET /_/health; watches the directory instead of sleeping. */
async function waitReady(dir: string, sock: string, exited: Promise<Exit>): Promise<void> {
  let wake: () => void = () => {}
  let changed = true
  const watcher = watch(dir, () => {
    changed = true
    wake()
  })
  let dead = false
  void exited.then(() => {
    dead = true
    wake()
  })
  try {
    for (;;) {
      if (dead) throw new Error('the runtime server exited before it was ready')
      if (changed) {
        changed = false
        if (existsSync(sock)) {
          const client = new Client('http://localhost', { socketPath: sock })
          try {
            const res = await send(client, '/_/health', { control: true })
            if (res.status === 200) return
          } catch {
            // a stale socket left by a killed server: its replacement will show up as another event
          } finally {
            await client.close()
          }
        }
        continue
      }
      await new Promise<void>((resolve) => {
        wake = resolve
      })
    }
  } finally {
    watcher.close()
  }
}

async function startRuntime(t: Test, existingDir?: string, env: Record<string, string> = {}): Promise<Runtime> {
  const dir = existingDir ?? mkdtempSync(join(tmpdir(), 'kindling-node-rt-'))
  const sock = join(dir, 'rt.sock')
  const proc = spawn(process.execPath, [SERVER], {
    env: { KINDLING_LISTEN: `unix:${sock}`, PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise<Exit>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })))
  const stdout: string[] = []
  let partial = ''
  proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n')
    partial = lines.pop() ?? ''
    stdout.push(...lines)
  })
  const client = new Client('http://localhost', { socketPath: sock })
  t.teardown(async () => {
    await client.close()
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await exited
    }
    if (existingDir === undefined) rmSync(dir, { recursive: true, force: true })
  })
  await waitReady(dir, sock, exited)
  const call = (path: string, options?: CallOptions): Promise<Reply> => send(client, path, options)
  const load = (fixture: string, entrypoint = 'index.mjs', extra: Record<string, unknown> = {}): Promise<Reply> =>
    call('/_/load', {
      control: true,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ codeDir: join(FIXTURES, fixture), entrypoint, function: fixture, version: '1', env: {}, ...extra }),
    })
  return { proc, sock, dir, exited, stdout, call, load }
}

async function loaded(t: Test, fixture: string, entrypoint?: string): Promise<Runtime> {
  const rt = await startRuntime(t)
  const res = await rt.load(fixture, entrypoint)
  t.equal(res.status, 200, `${fixture} loads: ${res.text}`)
  return rt
}

const unload = (rt: Runtime): Promise<Reply> => rt.call('/_/unload', { method: 'POST', control: true })

t.test('a new server reports itself generic on GET /_/health', async (t) => {
  const rt = await startRuntime(t)
  const res = await rt.call('/_/health', { control: true })
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  t.same(res.json(), { state: 'generic', function: null, version: null, pid: rt.proc.pid, loads: 0, invocations: 0, inflight: 0, warmups: 0 })
})

t.test('answers 503 KDL_ERR_INTERNAL to an invocation while no function is loaded', async (t) => {
  const rt = await startRuntime(t)
  const res = await rt.call('/anything')
  t.equal(res.status, 503)
  t.same(res.json(), { code: 'KDL_ERR_INTERNAL', message: 'no function loaded' })
})

t.test('loading a function answers loadMs and turns health to loaded; health counts loads and invocations', async (t) => {
  const rt = await startRuntime(t)
  const res = await rt.load('hello')
  t.equal(res.status, 200)
  const body = res.json()
  t.type(body.loadMs, 'number')
  t.ok(body.loadMs >= 0)
  t.same(body, { loadMs: body.loadMs, function: 'hello', version: '1' })
  t.equal((await rt.call('/?name=kindling')).text, 'hello kindling')
  const health = await rt.call('/_/health', { control: true })
  t.same(health.json(), { state: 'loaded', function: 'hello', version: '1', pid: rt.proc.pid, loads: 1, invocations: 1, inflight: 0, warmups: 0 })
})

t.test('resolves the handler of each module kind', async (t) => {
  const cases: Array<[string, string, string, unknown]> = [
    ['an ESM default export', 'hello', 'index.mjs', 'hello ada'],
    ['an ESM "handler" export when there is no default', 'esm-handler', 'index.mjs', { kind: 'esm handler export' }],
    ['a .js file as ESM under a package.json of type module', 'esm-js', 'index.js', { kind: 'esm .js per package type' }],
    ['a CommonJS module.exports function', 'cjs', 'index.cjs', { kind: 'cjs module.exports', fn: 'cjs' }],
    ['a CommonJS "handler" export of a .js file under type commonjs', 'cjs-handler', 'index.js', { kind: 'cjs handler export' }],
    ['a CommonJS exports.default', 'cjs-default', 'index.cjs', { kind: 'cjs default export' }],
    ['the named export of a file.js:name entrypoint, not the default', 'named', 'lib.mjs:greet', { greeting: 'hi ada' }],
  ]
  for (const [what, fixture, entrypoint, expected] of cases) {
    await t.test(`runs ${what}`, async (t) => {
      const rt = await loaded(t, fixture, entrypoint)
      const res = await rt.call('/?name=ada')
      t.equal(res.status, 200)
      t.same(typeof expected === 'string' ? res.text : res.json(), expected)
    })
  }
})

t.test('turns each return shape into its response', async (t) => {
  const rt = await loaded(t, 'shapes')
  const shape = (name: string): Promise<Reply> => rt.call(`/?shape=${name}`)

  await t.test('a string is 200 text/plain', async (t) => {
    const res = await shape('string')
    t.equal(res.status, 200)
    t.match(res.headers['content-type'], /^text\/plain/)
    t.equal(res.text, 'plain text')
    t.equal(res.headers['content-length'], '10', 'sized, not chunked: a proxy in front pays one write per answer')
    t.notOk(res.headers['transfer-encoding'])
  })
  await t.test('undefined is 204 with no body', async (t) => {
    const res = await shape('undefined')
    t.equal(res.status, 204)
    t.equal(res.text, '')
  })
  await t.test('any other JSON value is 200 application/json', async (t) => {
    for (const [name, expected] of [['object', { ok: true }], ['array', [1, 'two']], ['null', null], ['number', 42]] as const) {
      const res = await shape(name)
      t.equal(res.status, 200, name)
      t.match(res.headers['content-type'], /^application\/json/, name)
      t.same(res.json(), expected, name)
    }
  })
  await t.test('{status, headers, body} sets a custom status and headers; an object body is JSON', async (t) => {
    const res = await shape('status')
    t.equal(res.status, 201)
    t.equal(res.headers['x-custom'], 'yes')
    t.match(res.headers['content-type'], /^application\/json/)
    t.same(res.json(), { created: true })
  })
  await t.test('{statusCode, body} works too; a string body is sent as it is', async (t) => {
    const res = await shape('statusCode')
    t.equal(res.status, 202)
    t.equal(res.text, 'accepted')
  })
  await t.test('a content-type given by the handler wins, whatever its case', async (t) => {
    const res = await shape('typed')
    t.equal(res.headers['content-type'], 'text/csv')
    t.equal(res.text, 'a,b\n1,2\n')
  })
  await t.test('a Buffer body is sent as bytes', async (t) => {
    const res = await rt.call('/?shape=bytes')
    t.equal(res.headers['content-type'], 'application/octet-stream')
    t.same([...Buffer.from(res.text, 'latin1')], [1, 2, 3])
  })
  await t.test('a status with no body answers an empty body', async (t) => {
    const res = await shape('empty')
    t.equal(res.status, 404)
    t.equal(res.text, '')
  })
  await t.test('an invalid status is a function error', async (t) => {
    const res = await shape('bad-status')
    t.equal(res.status, 500)
    t.equal(res.headers['x-kindling-error'], 'handled')
    t.equal(res.json().code, 'KDL_ERR_FN_ERROR')
  })
})

t.test('a rejecting handler answers 500 KDL_ERR_FN_ERROR with x-kindling-error: handled', async (t) => {
  const rt = await loaded(t, 'shapes')
  const res = await rt.call('/?shape=reject')
  t.equal(res.status, 500)
  t.equal(res.headers['x-kindling-error'], 'handled')
  const body = res.json()
  t.equal(body.code, 'KDL_ERR_FN_ERROR')
  t.equal(body.message, 'nope')
  t.match(body.stack, /^TypeError: nope\n\s+at /)
  t.equal((await rt.call('/?shape=string')).text, 'plain text', 'the instance keeps serving')
})

t.test('a handler that throws synchronously answers 500 KDL_ERR_FN_ERROR with x-kindling-error: handled', async (t) => {
  const rt = await loaded(t, 'named', 'lib.mjs:explode')
  const res = await rt.call('/')
  t.equal(res.status, 500)
  t.equal(res.headers['x-kindling-error'], 'handled')
  t.match(res.json(), { code: 'KDL_ERR_FN_ERROR', message: 'sync boom', stack: /lib\.mjs:8/ })
})

t.test('the event carries method, path, query, headers, body and parsed json; the context its ids', async (t) => {
  const rt = await loaded(t, 'shapes')
  const deadline = Date.now() + 5_000
  const res = await rt.call('/some/path?shape=event&a=1&b=x&b=y&flag&sp=a+b%20c', {
    method: 'PUT',
    headers: {
      'content-type': 'application/json',
      'X-Custom': 'Value',
      'x-kindling-invocation-id': 'inv-event',
      'x-kindling-deadline-ms': String(deadline),
    },
    body: '{"hello":"wörld"}',
  })
  t.equal(res.status, 200)
  const { event, context } = res.json()
  t.equal(event.method, 'PUT')
  t.equal(event.path, '/some/path')
  t.same(event.query, { shape: 'event', a: '1', b: ['x', 'y'], flag: '', sp: 'a b c' })
  t.equal(event.headers['x-custom'], 'Value', 'header names are lower-case')
  t.equal(event.headers['content-type'], 'application/json')
  t.equal(event.body, '{"hello":"wörld"}', 'the body is a UTF-8 string')
  t.same(event.json, { hello: 'wörld' })
  t.same(context, { function: 'shapes', version: '1', invocationId: 'inv-event', deadlineMs: deadline, log: 'function' })
})

t.test('json is absent when the body is not JSON or does not parse; a bodiless request has body ""', async (t) => {
  const rt = await loaded(t, 'shapes')
  const text = (await rt.call('/?shape=event', { headers: { 'content-type': 'text/plain' }, body: '{"a":1}' })).json().event
  t.equal(text.body, '{"a":1}')
  t.notOk('json' in text)
  const broken = (await rt.call('/?shape=event', { headers: { 'content-type': 'application/json' }, body: '{nope' })).json().event
  t.equal(broken.body, '{nope')
  t.notOk('json' in broken)
  const none = (await rt.call('/plain?shape=event')).json()
  t.equal(none.event.body, '')
  t.equal(none.event.method, 'GET')
  t.notOk('deadlineMs' in none.context, 'no deadline header, no deadlineMs')
})

t.test('context.log writes one JSON line {t, level, fn, inv, msg} to stdout', async (t) => {
  const rt = await loaded(t, 'shapes')
  const before = Date.now()
  const res = await rt.call('/?shape=log', { headers: { 'x-kindling-invocation-id': 'inv-log' } })
  t.equal(res.text, 'logged')
  // the line is written before the response, but reaches us over another pipe
  while (!rt.stdout.some((l) => l.includes('inv-log'))) await new Promise((r) => rt.proc.stdout?.once('data', r))
  const line = JSON.parse(rt.stdout.find((l) => l.includes('inv-log')) ?? '')
  t.same(Object.keys(line), ['t', 'level', 'fn', 'inv', 'msg'])
  t.ok(line.t >= before)
  t.match(line, { level: 'info', fn: 'shapes', inv: 'inv-log', msg: 'hello { a: 1 }' })
})

t.test('control paths sent with x-kindling-invocation-id reach the handler', async (t) => {
  const rt = await loaded(t, 'shapes')
  t.same((await rt.call('/_/health')).json(), { path: '/_/health' })
  t.same((await rt.call('/_/unload', { method: 'POST' })).json(), { path: '/_/unload' })
  t.equal((await rt.call('/_/health', { control: true })).json().state, 'loaded', 'the function is still loaded')
})

t.test('answers 10 concurrent invocations that are all in the handler at once', async (t) => {
  const rt = await loaded(t, 'shapes')
  const pool = new Pool('http://localhost', { socketPath: rt.sock, connections: 10 })
  t.teardown(() => pool.close())
  const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => send(pool, `/?shape=barrier&n=10&id=${i}`)))
  t.same(replies.map((r) => r.status), Array(10).fill(200))
  t.same(replies.map((r) => r.json().id), Array.from({ length: 10 }, (_, i) => String(i)))
  t.equal((await rt.call('/_/health', { control: true })).json().invocations, 10)
})

t.test('load failures answer 422 KDL_ERR_LOAD_FAILED naming the file and line', async (t) => {
  const cases: Array<[string, string, string, RegExp]> = [
    ['an ES module syntax error', 'syntax-error', 'index.mjs', /^SyntaxError in index\.mjs:4: Unexpected token/],
    ['a syntax error in an imported module', 'syntax-error-import', 'index.mjs', /^SyntaxError in lib\/broken\.mjs:3: /],
    ['a CommonJS syntax error', 'syntax-error-cjs', 'index.cjs', /^SyntaxError in index\.cjs:4: Unexpected token/],
    ['a module that throws at top level', 'top-level-throw', 'index.mjs', /^Error in index\.mjs:3: cannot start: no database$/],
    ['a missing entrypoint file', 'hello', 'nope.mjs', /nope\.mjs not found/],
    ['a default export that is not a function', 'not-a-function', 'index.mjs', /index\.mjs has no handler/],
    ['a named export that does not exist', 'named', 'lib.mjs:missing', /export "missing"/],
  ]
  for (const [what, fixture, entrypoint, message] of cases) {
    await t.test(`for ${what}`, async (t) => {
      const rt = await startRuntime(t)
      const res = await rt.load(fixture, entrypoint)
      t.equal(res.status, 422)
      const body = res.json()
      t.equal(body.code, 'KDL_ERR_LOAD_FAILED')
      t.match(body.message, message)
      t.equal((await rt.call('/_/health', { control: true })).json().state, 'generic', 'the server stays generic')
    })
  }
  await t.test('the stack of an ES module syntax error shows the offending line', async (t) => {
    const rt = await startRuntime(t)
    const body = (await rt.load('syntax-error')).json()
    t.match(body.stack, /^file:\/\/.*\/syntax-error\/index\.mjs:4\n {2}\}\n {2}\^/)
  })
})

t.test('rejects an absolute or ".." entrypoint with 400 KDL_ERR_BAD_REQUEST', async (t) => {
  const rt = await startRuntime(t)
  for (const entrypoint of ['../hello/index.mjs', '/etc/passwd', 'lib/../../x.mjs']) {
    const res = await rt.load('hello', entrypoint)
    t.equal(res.status, 400, entrypoint)
    t.equal(res.json().code, 'KDL_ERR_BAD_REQUEST', entrypoint)
  }
  const bad = await rt.call('/_/load', { control: true, body: 'not json' })
  t.equal(bad.status, 400)
})

t.test('an instance serves one function: other loads answer 409 KDL_ERR_LOAD_FAILED', async (t) => {
  const rt = await loaded(t, 'hello')
  const other = await rt.load('shapes')
  t.equal(other.status, 409)
  t.equal(other.json().code, 'KDL_ERR_LOAD_FAILED')
  t.match(other.json().message, /hello/)
  const again = await rt.load('hello')
  t.equal(again.status, 409, 'loading the loaded function again needs an unload first')
  t.same((await unload(rt)).json(), { unloaded: true })
  t.equal((await rt.load('shapes')).status, 409, 'still bound to hello after an unload')
  t.equal((await rt.load('hello')).status, 200, 'the same function loads again after an unload')
  t.equal((await rt.call('/')).text, 'hello world')
})

t.test('POST /_/unload answers {unloaded: true} when nothing is loaded', async (t) => {
  const rt = await startRuntime(t)
  const res = await unload(rt)
  t.equal(res.status, 200)
  t.same(res.json(), { unloaded: true })
})

t.test('unload then load evaluates the code afresh and drops the previous environment', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter', 'index.mjs', { env: { GREETING: 'hi' } })).status, 200)
  t.same((await rt.call('/')).json(), { calls: 1, imported: 1, cjs: 1, greeting: 'hi', leftover: null })
  t.same((await rt.call('/?mutate')).json(), { calls: 2, imported: 2, cjs: 2, greeting: 'hi', leftover: null })
  t.same((await rt.call('/')).json(), { calls: 3, imported: 3, cjs: 3, greeting: 'hi', leftover: 'set by the handler' })

  t.same((await unload(rt)).json(), { unloaded: true })
  t.same((await rt.call('/_/health', { control: true })).json().state, 'generic')
  t.equal((await rt.call('/')).status, 503, 'no handler after unload')

  for (const round of [2, 3]) {
    t.equal((await rt.load('counter')).status, 200, `load #${round}`)
    t.same((await rt.call('/')).json(), { calls: 1, imported: 1, cjs: 1, greeting: null, leftover: null }, `fresh after load #${round}`)
    t.same((await rt.call('/?mutate')).json().calls, 2)
    t.same((await unload(rt)).json(), { unloaded: true })
  }
  t.equal((await rt.load('counter', 'index.mjs', { env: { GREETING: 'again' } })).status, 200)
  t.same((await rt.call('/')).json(), { calls: 1, imported: 1, cjs: 1, greeting: 'again', leftover: null })
  t.equal((await rt.call('/_/health', { control: true })).json().loads, 4)
})

t.test('unload then load re-runs a CommonJS entry and the modules it requires', async (t) => {
  const rt = await loaded(t, 'counter-cjs', 'index.cjs')
  t.same((await rt.call('/')).json(), { calls: 1, required: 1 })
  t.same((await rt.call('/')).json(), { calls: 2, required: 2 })
  await unload(rt)
  t.equal((await rt.load('counter-cjs', 'index.cjs')).status, 200)
  t.same((await rt.call('/')).json(), { calls: 1, required: 1 })
})

/** Health once the server has finished `n` warm-up runs. */
function warmedUp(rt: Runtime, n: number): Promise<Record<string, any>> {
  return waitFor(async () => {
    const h = (await rt.call('/_/health', { control: true })).json()
    return h.warmups >= n ? h : undefined
  }, `${n} warm-up runs`)
}

t.test('warm-up: a server started with KINDLING_WARMUP=1 warms its request path without any function code, invisibly', async (t) => {
  const rt = await startRuntime(t, undefined, { KINDLING_WARMUP: '1' })
  const h = await warmedUp(rt, 1)
  t.equal(h.state, 'generic', 'still generic')
  t.equal(h.invocations, 0, 'warm-up calls are not invocations')
  t.equal((await rt.call('/')).status, 503, 'no function: a real invocation still gets 503')
  const envFn = 'export default () => Object.keys(process.env).filter((k) => k.startsWith("KINDLING_"))'
  const codeDir = mkdtempSync(join(tmpdir(), 'kindling-warm-fn-'))
  t.teardown(() => rmSync(codeDir, { recursive: true, force: true }))
  writeFileSync(join(codeDir, 'index.mjs'), envFn)
  const load = await rt.call('/_/load', { control: true, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ codeDir, entrypoint: 'index.mjs', function: 'envfn', prepare: true }) })
  t.equal(load.status, 200, load.text)
  await warmedUp(rt, 2)
  t.same((await rt.call('/')).json(), ['KINDLING_LISTEN'], 'KINDLING_WARMUP is not in the function environment')
})

t.test('warm-up after a load made ahead (prepare) never runs the function', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter', 'index.mjs', { prepare: true })).status, 200)
  await warmedUp(rt, 1)
  t.same((await rt.call('/')).json().calls, 1, 'the first real call is the function\'s first')
  t.equal((await rt.call('/_/health', { control: true })).json().invocations, 1)
})

t.test('warm-up in recycle mode does not use up the loaded copy', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter', 'index.mjs', { prepare: true, recycle: true })).status, 200)
  const h = await warmedUp(rt, 1)
  t.equal(h.loads, 1, 'no reload was caused by the warm-up')
  t.same((await rt.call('/')).json().calls, 1)
})

t.test('recycle: every call runs on a copy of the function evaluated afresh by the server between calls', async (t) => {
  const rt = await startRuntime(t)
  const res = await rt.load('counter', 'index.mjs', { env: { GREETING: 'hi' }, recycle: true })
  t.equal(res.status, 200, res.text)
  for (let i = 0; i < 4; i++) {
    t.same((await rt.call('/?mutate')).json(), { calls: 1, imported: 1, cjs: 1, greeting: 'hi', leftover: null }, `call ${i} sees nothing of the one before`)
  }
  const health = (await rt.call('/_/health', { control: true })).json()
  t.equal(health.state, 'loaded')
  t.ok(health.loads >= 4, `the server reloaded by itself (${health.loads} loads)`)
})

t.test('recycle: calls sent at once and back to back each get a fresh copy', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter', 'index.mjs', { recycle: true, prepare: true })).status, 200)
  const pool = new Pool('http://localhost', { socketPath: rt.sock, connections: 8 })
  t.teardown(() => pool.close())
  const answers = await Promise.all(Array.from({ length: 24 }, () => send(pool, '/?mutate')))
  t.same(answers.map((a) => a.status), Array(24).fill(200))
  t.same(answers.map((a) => a.json().calls), Array(24).fill(1), 'no call saw another call of its copy')
  t.same(answers.map((a) => a.json().leftover), Array(24).fill(null), 'no call saw the environment another call left')
})

t.test('recycle: a CommonJS entry and what it requires are fresh on every call', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter-cjs', 'index.cjs', { recycle: true })).status, 200)
  for (let i = 0; i < 3; i++) t.same((await rt.call('/')).json(), { calls: 1, required: 1 })
})

t.test('recycle: when a fresh copy no longer loads, calls are refused unrun with x-kindling-retire', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('one-copy-only', 'index.mjs', { recycle: true })).status, 200)
  t.same((await rt.call('/')).json(), { copy: 1 })
  const refused = await rt.call('/')
  t.equal(refused.status, 503)
  t.equal(refused.headers['x-kindling-retire'], 'unrun')
  t.equal(refused.json().code, 'KDL_ERR_LOAD_FAILED')
  t.match(refused.json().message, /copy 3 cannot start/, 'a second attempt was made before giving up')
  t.equal((await rt.call('/')).status, 503, 'and it stays refused')
})

t.test('recycle and prepare must be booleans', async (t) => {
  const rt = await startRuntime(t)
  t.equal((await rt.load('counter', 'index.mjs', { recycle: 'yes' })).status, 400)
  t.equal((await rt.load('counter', 'index.mjs', { prepare: 1 })).status, 400)
})

t.test('a failed load can be retried and evaluates the module again', async (t) => {
  const rt = await startRuntime(t)
  const first = await rt.load('flaky-start')
  t.equal(first.status, 422)
  t.match(first.json().message, /^Error in index\.mjs:3: first start fails$/)
  t.equal((await rt.load('flaky-start')).status, 200)
  t.same((await rt.call('/')).json(), { starts: 2 })
})

t.test('keeps connections alive with a long idle timeout', async (t) => {
  const rt = await loaded(t, 'hello')
  const res = await rt.call('/')
  t.match(res.headers['keep-alive'], /timeout=600/)
  t.not(res.headers.connection, 'close')
})

t.test('SIGTERM closes the server: exit code 0 and the socket file is gone', async (t) => {
  const rt = await loaded(t, 'hello')
  rt.proc.kill('SIGTERM')
  t.same(await rt.exited, { code: 0, signal: null })
  t.notOk(existsSync(rt.sock))
})

t.test('starts on a socket path left behind by a killed server', async (t) => {
  const first = await startRuntime(t)
  first.proc.kill('SIGKILL')
  await first.exited
  t.ok(existsSync(first.sock), 'the killed server left its socket file')
  const second = await startRuntime(t, first.dir)
  t.equal((await second.call('/_/health', { control: true })).json().pid, second.proc.pid)
})

async function runToExit(env: Record<string, string | undefined>): Promise<Exit & { stderr: string }> {
  const proc = spawn(process.execPath, [SERVER], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  const exit = await new Promise<Exit>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })))
  return { ...exit, stderr }
}

t.test('exits 1 with a message naming KINDLING_LISTEN when it is missing or malformed', async (t) => {
  for (const value of [undefined, 'bogus', 'unix:relative.sock', 'tcp:127.0.0.1:99999']) {
    const res = await runToExit({ KINDLING_LISTEN: value })
    t.equal(res.code, 1, String(value))
    t.match(res.stderr, /KINDLING_LISTEN/, String(value))
  }
})

t.test('refuses to replace a file that is not a socket', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-node-rt-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'rt.sock')
  writeFileSync(path, 'precious')
  const res = await runToExit({ KINDLING_LISTEN: `unix:${path}` })
  t.equal(res.code, 1)
  t.match(res.stderr, /is not a socket/)
  t.equal(readFileSync(path, 'utf8'), 'precious')
})

t.test('listens on tcp:HOST:PORT', async (t) => {
  const port = await new Promise<number>((resolve) => {
    const probe = createNetServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo
      probe.close(() => resolve(port))
    })
  })
  const proc = spawn(process.execPath, [SERVER], { env: { KINDLING_LISTEN: `tcp:127.0.0.1:${port}`, PATH: process.env.PATH }, stdio: 'ignore' })
  const exited = new Promise<Exit>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })))
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(async () => {
    await client.close()
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
    await exited
  })
  // TCP has no file to watch: each refused connection is the event that triggers the next attempt
  let health: Reply | undefined
  while (health === undefined) {
    if (proc.exitCode !== null) throw new Error('the runtime server exited')
    health = await send(client, '/_/health', { control: true }).catch(() => undefined)
  }
  t.equal(health.json().pid, proc.pid)
  proc.kill('SIGTERM')
  t.same(await exited, { code: 0, signal: null })
})
