import { createServer } from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { create as createTar, extract, list } from 'tar'
import { cli, fakeApi, only, sink, type Recorded } from '../fixtures/cli.js'

async function unpack(t: Test, base64: unknown): Promise<{ names: string[]; dir: string }> {
  if (typeof base64 !== 'string') throw new Error('archive is not a string')
  const dir = mkdtempSync(join(tmpdir(), 'kindling-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'code.tar.gz')
  writeFileSync(file, Buffer.from(base64, 'base64'))
  const names: string[] = []
  await list({ file, onReadEntry: (e) => { names.push(e.path) } })
  const out = join(dir, 'out')
  mkdirSync(out)
  await extract({ file, cwd: out })
  return { names: names.sort(), dir: out }
}

t.test('fn deploy FILE sends the module text and every spec flag as PUT /v1/functions/NAME', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { name: 'hello', version: 3 } }))
  const dir = t.testdir({ 'hello.mjs': 'export default () => "hi"\n' })
  const r = await cli(['fn', 'deploy', 'hello', '--runtime', 'node', '--code', join(dir, 'hello.mjs'),
    '--mode', 'persistent', '--prewarm', '2', '--concurrency', '4', '--max-instances', '5',
    '--queue-timeout-ms', '100', '--timeout-ms', '2000', '--memory-mb', '256', '--cpu', '0.5',
    '--env', 'A=1', '--env', 'B=x=y', '--network', 'egress', '--max-invocations', '7',
    '--max-age-ms', '60000', '--idle-timeout-ms', '30000'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'deployed hello version 3\n')
  t.equal(r.stderr, '')
  const req = only(api.requests)
  t.equal(req.method, 'PUT')
  t.equal(req.url, '/v1/functions/hello?wait=true', 'the CLI waits for a build (and streams it, when there is one)')
  t.match(req.headers['content-type'], /^application\/json/)
  t.equal(req.headers['authorization'], undefined, 'no token, no authorization header')
  t.strictSame(req.json, {
    runtime: 'node', code: 'export default () => "hi"\n', mode: 'persistent', prewarm: 2, concurrency: 4,
    maxInstances: 5, queueTimeoutMs: 100, timeoutMs: 2000, memoryMb: 256, cpu: 0.5, env: { A: '1', B: 'x=y' },
    network: 'egress', maxInvocations: 7, maxAgeMs: 60000, idleTimeoutMs: 30000,
  })
})

t.test('fn deploy FILE sends only runtime and code when no flag is given', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, body: { version: 4 } }))
  const dir = t.testdir({ 'f.js': 'export default () => 1\n' })
  const r = await cli(['fn', 'deploy', 'f', '--runtime', 'node', '--code', join(dir, 'f.js'), '--entrypoint', 'main.mjs'], { KINDLING_URL: api.url })
  t.equal(r.stdout, 'deployed f version 4\n')
  t.strictSame(only(api.requests).json, { runtime: 'node', code: 'export default () => 1\n', entrypoint: 'main.mjs' })
})

t.test('fn deploy DIR packs the directory into a base64 .tar.gz that unpacks, without .git', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { version: 1 } }))
  const dir = t.testdir({
    'index.mjs': 'import { x } from "./lib/util.js"\nexport default () => x\n',
    lib: { 'util.js': 'export const x = 42\n' },
    '.git': { HEAD: 'ref: refs/heads/main\n' },
  })
  const r = await cli(['fn', 'deploy', 'packed', '--runtime', 'node', '--code', dir], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'deployed packed version 1\n')
  const req = only(api.requests)
  const body = req.json as Record<string, unknown>
  t.equal(body['runtime'], 'node')
  t.equal(body['code'], undefined)
  t.equal(body['entrypoint'], 'index.mjs', 'index.mjs is the default when there is no index.js')
  const { names, dir: out } = await unpack(t, body['archive'])
  t.strictSame(names.filter((n) => !n.endsWith('/')), ['index.mjs', 'lib/util.js'])
  t.notOk(names.some((n) => n.startsWith('.git')))
  t.equal(readFileSync(join(out, 'lib/util.js'), 'utf8'), 'export const x = 42\n')
})

t.test('fn deploy DIR defaults the entrypoint to index.js when it exists', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { version: 1 } }))
  const dir = t.testdir({ 'index.js': 'module.exports = () => 1\n', 'index.mjs': 'export default () => 2\n' })
  await cli(['fn', 'deploy', 'both', '--runtime', 'node', '--code', dir], { KINDLING_URL: api.url })
  t.equal((only(api.requests).json as Record<string, unknown>)['entrypoint'], 'index.js')
})

t.test('fn deploy FILE.tgz sends the archive bytes as base64', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: { version: 1 } }))
  const root = t.testdir({ src: { 'index.js': 'module.exports = () => 1\n' } })
  const src = join(root, 'src')
  const tgz = join(root, 'code.tgz')
  await createTar({ gzip: true, cwd: src, file: tgz, portable: true }, ['index.js'])
  await cli(['fn', 'deploy', 'arch', '--runtime', 'node', '--code', tgz], { KINDLING_URL: api.url })
  t.strictSame(only(api.requests).json, { runtime: 'node', archive: readFileSync(tgz).toString('base64') })
})

t.test('fn deploy reports a missing --code path without calling the API', async (t) => {
  const api = await fakeApi(t)
  const r = await cli(['fn', 'deploy', 'x', '--runtime', 'node', '--code', join(t.testdir({}), 'nope.mjs')], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.match(r.stderr, /^error: --code .*nope\.mjs: no such file or directory\n$/)
  t.equal(api.requests.length, 0)
})

t.test('fn invoke sends -X, -d, -H and --path and prints status, headers and body with -i', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, headers: { 'x-kindling-start': 'prewarmed', 'content-type': 'text/plain' }, body: 'hello back' }))
  const r = await cli(['fn', 'invoke', 'hello', '-X', 'PUT', '-d', '{"a":1}', '-H', 'x-one: 1', '-H', 'X-Two:two words',
    '--path', '/sub/p?q=1', '-i'], { KINDLING_URL: api.url, KINDLING_API_TOKEN: 's3cret' })
  t.equal(r.code, 0)
  const req = only(api.requests)
  t.equal(req.method, 'PUT')
  t.equal(req.url, '/fn/hello/sub/p?q=1')
  t.equal(req.body.toString(), '{"a":1}')
  t.equal(req.headers['content-type'], 'application/json')
  t.equal(req.headers['x-one'], '1')
  t.equal(req.headers['x-two'], 'two words')
  t.equal(req.headers['authorization'], undefined, 'the operator token is not handed to function code')
  const [head, body] = r.stdout.split('\n\n')
  t.equal(body, 'hello back')
  t.match(head, /^HTTP\/1\.1 200 OK\n/)
  t.match(head, /\nx-kindling-start: prewarmed(\n|$)/)
  t.match(head, /\ncontent-type: text\/plain(\n|$)/)
})

t.test('fn invoke defaults to GET without -d and prints only the body', async (t) => {
  const api = await fakeApi(t, () => ({ body: { ok: true } }))
  const r = await cli(['fn', 'invoke', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, '{"ok":true}')
  const req = only(api.requests)
  t.equal(req.method, 'GET')
  t.equal(req.url, '/fn/hello')
  t.equal(req.body.length, 0)
})

t.test('fn invoke -d @file POSTs the file bytes', async (t) => {
  const api = await fakeApi(t, () => ({ body: 'ok' }))
  const dir = t.testdir({ 'payload.txt': 'line one\nline two\n' })
  const r = await cli(['fn', 'invoke', 'hello', '-d', `@${join(dir, 'payload.txt')}`], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  const req = only(api.requests)
  t.equal(req.method, 'POST')
  t.equal(req.body.toString(), 'line one\nline two\n')
  t.equal(req.headers['content-type'], 'application/octet-stream')
})

t.test('fn invoke -d with text sends text/plain unless -H sets the content type', async (t) => {
  const api = await fakeApi(t, () => ({ body: 'ok' }))
  await cli(['fn', 'invoke', 'hello', '-d', 'plain words'], { KINDLING_URL: api.url })
  await cli(['fn', 'invoke', 'hello', '-d', 'a=1', '-H', 'Content-Type: application/x-www-form-urlencoded'], { KINDLING_URL: api.url })
  t.equal(api.requests[0]?.headers['content-type'], 'text/plain; charset=utf-8')
  t.equal(api.requests[1]?.headers['content-type'], 'application/x-www-form-urlencoded')
})

t.test('fn invoke exits 1 on a non-2xx answer, prints the body and names a Kindling error', async (t) => {
  const api = await fakeApi(t, () => ({ status: 504, body: { statusCode: 504, code: 'KDL_ERR_FN_TIMEOUT', error: 'Gateway Timeout', message: 'call exceeded 30000 ms' } }))
  const r = await cli(['fn', 'invoke', 'slow'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.match(r.stdout, /"code":"KDL_ERR_FN_TIMEOUT"/)
  t.equal(r.stderr, 'error KDL_ERR_FN_TIMEOUT: call exceeded 30000 ms\n')
})

t.test('fn invoke exits 1 on a function answering 404 itself, with nothing on stderr', async (t) => {
  const api = await fakeApi(t, () => ({ status: 404, body: 'no such item' }))
  const r = await cli(['fn', 'invoke', 'shop', '--path', 'items/9'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(only(api.requests).url, '/fn/shop/items/9')
  t.equal(r.stdout, 'no such item')
  t.equal(r.stderr, '')
})

t.test('fn list prints a table of name, runtime, version, mode, prewarm and instances', async (t) => {
  const api = await fakeApi(t, () => ({
    body: [
      { name: 'hello', runtime: 'node', version: 3, mode: 'recycle', prewarm: 2, instances: { idle: 2, busy: 1, starting: 0 } },
      { name: 'resize-image', spec: { runtime: 'node', mode: 'ephemeral', prewarm: 0 }, version: 12, status: { instances: {} } },
    ],
  }))
  const r = await cli(['fn', 'list'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/functions?limit=1000')
  t.equal(r.stdout, [
    'NAME          RUNTIME  VERSION  MODE       PREWARM  INSTANCES',
    'hello         node     3        recycle    2        idle=2 busy=1',
    'resize-image  node     12       ephemeral  0        0',
    '',
  ].join('\n'))
})

t.test('fn list follows every page; --limit prints one and names the next', async (t) => {
  const fn = (name: string): Record<string, unknown> => ({ name, runtime: 'node', version: 1, mode: 'recycle', prewarm: 0, status: { instances: {} } })
  const api = await fakeApi(t, (req) => ({
    body: req.url.includes('cursor=Yg') ? { functions: [fn('c')] } : { functions: [fn('a'), fn('b')], next: 'Yg' },
  }))
  const all = await cli(['fn', 'list'], { KINDLING_URL: api.url })
  t.same(api.requests.map((r) => r.url), ['/v1/functions?limit=1000', '/v1/functions?limit=1000&cursor=Yg'])
  t.same(all.stdout.trim().split('\n').slice(1).map((l) => l.split(' ')[0]), ['a', 'b', 'c'], 'one table of every page')
  t.equal(all.stderr, '')
  api.requests.length = 0
  const one = await cli(['fn', 'list', '--limit', '2'], { KINDLING_URL: api.url })
  t.same(api.requests.map((r) => r.url), ['/v1/functions?limit=2'])
  t.equal(one.stdout.trim().split('\n').length, 3, 'the header and one page')
  t.equal(one.stderr, 'more: kindling fn list --limit 2 --cursor Yg\n')
})

t.test('fn get prints the function as indented JSON', async (t) => {
  const fn = { name: 'hello', runtime: 'node', version: 3, instances: { idle: 1 } }
  const api = await fakeApi(t, () => ({ body: fn }))
  const r = await cli(['fn', 'get', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).method, 'GET')
  t.equal(api.requests[0]?.url, '/v1/functions/hello')
  t.equal(r.stdout, JSON.stringify(fn, null, 2) + '\n')
})

t.test('fn delete sends DELETE /v1/functions/NAME', async (t) => {
  const api = await fakeApi(t, () => ({ status: 204 }))
  const r = await cli(['fn', 'delete', 'hello'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  const req = only(api.requests)
  t.equal(req.method, 'DELETE')
  t.equal(req.url, '/v1/functions/hello')
  t.equal(r.stdout, 'deleted hello\n')
})

t.test('pools prints the pools and the functions being served as tables', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      pools: [
        { pool: 'generic:node', kind: 'generic', runtime: 'node', target: 2, idle: 2, starting: 0 },
        { pool: 'fn:hello@3', kind: 'prewarm', runtime: 'node', function: 'hello', version: 3, target: 1, idle: 0, starting: 1 },
      ],
      functions: [{ function: 'hello', version: 3, instances: 2, busy: 1, waiting: 0, pending: 0 }],
      starts: { running: 1, waiting: 3, limit: 4 },
    },
  }))
  const r = await cli(['pools'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/pools')
  t.equal(r.stdout, [
    'POOL          TARGET  IDLE  STARTING',
    'generic:node  2       2     0',
    'fn:hello@3    1       0     1',
    'instance starts: 1 running, 3 waiting (at most 4 at once)',
    '',
    'FUNCTION  VERSION  INSTANCES  BUSY  WAITING  STARTING',
    'hello     3        2          1     0        0',
    '',
  ].join('\n'))
})

t.test('pools prints JSON when the answer has a shape it does not know', async (t) => {
  const body = { memoryBudgetMb: 4096, something: [1, 2] }
  const api = await fakeApi(t, () => ({ body }))
  const r = await cli(['pools'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.strictSame(JSON.parse(r.stdout), body)
})

t.test('events prints time, type, function, message, instance and the numbers behind each event', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      events: [
        { id: 7, at: '2025-01-01T00:00:00.000Z', type: 'loadguard-throttle', function: 'hog', instance: 'i-1', message: 'cpu over limit', data: { cpu: 0.95 } },
        { id: 8, at: '2025-01-01T00:00:01.000Z', type: 'deleted', function: 'calm', message: 'function deleted' },
      ],
    },
  }))
  const r = await cli(['events'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/events')
  t.equal(r.stdout, [
    'TIME                      TYPE                FUNCTION  DETAILS',
    '2025-01-01T00:00:00.000Z  loadguard-throttle  hog       cpu over limit instance=i-1 cpu=0.95',
    '2025-01-01T00:00:01.000Z  deleted             calm      function deleted',
    '',
  ].join('\n'))
})

t.test('events --fn and --limit are sent as the API\'s query parameters', async (t) => {
  const api = await fakeApi(t, () => ({ body: { events: [] } }))
  const r = await cli(['events', '--fn', 'one', '--limit', '2'], { KINDLING_URL: api.url })
  t.equal(only(api.requests).url, '/v1/events?function=one&limit=2')
  t.equal(r.stderr, 'no events\n')
})

t.test('runtimes set PUTs only the given fields', async (t) => {
  const api = await fakeApi(t, () => ({ body: { name: 'node', poolSize: 4, memoryMb: 256, cpu: 0.5 } }))
  const r = await cli(['runtimes', 'set', 'node', '--pool-size', '4', '--memory-mb', '256', '--cpu', '0.5'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  const req = only(api.requests)
  t.equal(req.method, 'PUT')
  t.equal(req.url, '/v1/runtimes/node')
  t.strictSame(req.json, { poolSize: 4, memoryMb: 256, cpu: 0.5 })
  t.match(r.stdout, /^runtime node set\n/)
})

t.test('an API error is printed as "error CODE: message" and exits 1', async (t) => {
  const api = await fakeApi(t, () => ({
    status: 404, body: { statusCode: 404, code: 'KDL_ERR_FN_NOT_FOUND', error: 'Not Found', message: 'function "nope" is not deployed' },
  }))
  const r = await cli(['fn', 'get', 'nope'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, 'error KDL_ERR_FN_NOT_FOUND: function "nope" is not deployed\n')
})

t.test('a non-JSON error answer from /v1 names the status', async (t) => {
  const api = await fakeApi(t, () => ({ status: 502, body: 'upstream down' }))
  const r = await cli(['pools'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stderr, 'error: GET /v1/pools answered 502 Bad Gateway: upstream down\n')
})

t.test('an unreachable platform is reported with its URL and exits 1', async (t) => {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  server.close()
  await once(server, 'close')
  const r = await cli(['fn', 'list'], { KINDLING_URL: url })
  t.equal(r.code, 1)
  t.equal(r.stderr, `error: cannot reach Kindling at ${url} (is "kindling up" running?)\n`)
})

t.test('KINDLING_API_TOKEN is sent as a bearer token to /v1', async (t) => {
  const api = await fakeApi(t, () => ({ body: [] }))
  await cli(['fn', 'list'], { KINDLING_URL: api.url, KINDLING_API_TOKEN: 's3cret' })
  t.equal(only(api.requests).headers['authorization'], 'Bearer s3cret')
})

t.test('KINDLING_URL defaults to http://127.0.0.1:8080', async (t) => {
  // Only the message is checked: whether something listens on 8080 here is not ours to decide.
  const r = await cli(['fn', 'get', 'x'], { KINDLING_URL: 'not a url' })
  t.equal(r.code, 1)
  t.equal(r.stderr, 'error: KINDLING_URL "not a url" is not an http(s) URL\n')
  const d = await cli(['fn', 'delete', 'x'], {})
  if (d.code === 1 && d.stderr.startsWith('error: cannot reach')) t.match(d.stderr, /Kindling at http:\/\/127\.0\.0\.1:8080 /)
  else t.pass('something answers on 8080')
})

t.test('bad usage prints commander\'s message and exits 2', async (t) => {
  const api = await fakeApi(t)
  const env = { KINDLING_URL: api.url }
  const missing = await cli(['fn', 'deploy', 'x', '--runtime', 'node'], env)
  t.equal(missing.code, 2)
  t.match(missing.stderr, /required option '--code <path>' not specified/)
  const badInt = await cli(['fn', 'deploy', 'x', '--runtime', 'node', '--code', 'f.js', '--prewarm', 'lots'], env)
  t.equal(badInt.code, 2)
  t.match(badInt.stderr, /--prewarm <n>.*must be a non-negative integer/)
  const badMode = await cli(['fn', 'deploy', 'x', '--runtime', 'node', '--code', 'f.js', '--mode', 'forever'], env)
  t.equal(badMode.code, 2)
  const badHeader = await cli(['fn', 'invoke', 'x', '-H', 'no-colon'], env)
  t.equal(badHeader.code, 2)
  const unknown = await cli(['frobnicate'], env)
  t.equal(unknown.code, 2)
  t.match(unknown.stderr, /unknown command 'frobnicate'/)
  t.equal(api.requests.length, 0)
  const help = await cli(['--help'], env)
  t.equal(help.code, 0)
  t.match(help.stdout, /Usage: kindling/)
})

t.test('bin/kindling.mjs asks for a build when dist/ is missing', async (t) => {
  const root = t.testdir({ bin: {} })
  copyFileSync(new URL('../../bin/kindling.mjs', import.meta.url), join(root, 'bin', 'kindling.mjs'))
  const r = spawnSync(process.execPath, [join(root, 'bin', 'kindling.mjs'), 'fn', 'list'], { encoding: 'utf8' })
  t.equal(r.status, 1)
  t.equal(r.stderr, 'kindling: run "npm run build" first\n')
})
