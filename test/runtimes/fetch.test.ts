import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import type { Dispatcher } from 'undici'
import { CodeServer } from '../../backends/kubernetes/code-server.js'
import { dispatcherFor, fetchCode, health, load, type FetchCodeRequest } from '../../protocol/runtime-client.js'
import { waitFor } from '../fixtures/wait.js'

const SERVER = fileURLToPath(new URL('../../runtimes/node/server.mjs', import.meta.url))

interface Runtime {
  proc: ChildProcess
  client: Dispatcher
  /** KINDLING_CODE_DIR */
  codeRoot: string
  /** The parent of codeRoot, which holds nothing else: anything written outside codeRoot shows here. */
  base: string
}

function tmp(t: Test, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port
      s.close(() => resolve(port))
    })
  })
}

/** The real runtime server on TCP (as in a pod), with KINDLING_CODE_DIR; ready once GET /_/health answers. */
async function startRuntime(t: Test, withCodeDir = true, env: Record<string, string> = {}): Promise<Runtime> {
  const base = tmp(t, 'kdl-fetch-rt-')
  const codeRoot = join(base, 'code')
  mkdirSync(codeRoot)
  // A free port can be taken between the probe and the runtime's listen: the runtime then exits 1, and we retry.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort()
    const proc = spawn(process.execPath, [SERVER], {
      env: { KINDLING_LISTEN: `tcp:127.0.0.1:${port}`, PATH: process.env.PATH, ...(withCodeDir ? { KINDLING_CODE_DIR: codeRoot } : {}), ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let exited = false
    const exit = new Promise<void>((resolve) => proc.once('exit', () => { exited = true; resolve() }))
    const client = dispatcherFor({ host: '127.0.0.1', port })
    t.teardown(async () => {
      await client.close()
      if (!exited) {
        proc.kill('SIGKILL')
        await exit
      }
    })
    const ready = await waitFor(async () => {
      if (exited) return 'exited'
      try {
        return (await health(client, 1000)).state === 'generic' ? 'ready' : false
      } catch {
        return false
      }
    }, 'the runtime answering /_/health')
    if (ready === 'ready') return { proc, client, codeRoot, base }
    if (attempt === 3) throw new Error('the runtime server exits at start-up')
  }
}

async function codeServer(t: Test): Promise<CodeServer> {
  const server = new CodeServer({ secret: randomBytes(32), workDir: tmp(t, 'kdl-fetch-cs-') })
  await server.start({ host: '127.0.0.1', port: 0 })
  t.teardown(() => server.close())
  return server
}

/** A function's code directory: its handler answers a greeting and what it sees of KINDLING_CODE_DIR. */
function functionDir(t: Test): string {
  const dir = tmp(t, 'kdl-fetch-fn-')
  writeFileSync(join(dir, 'index.mjs'), "import { greet } from './lib/greet.mjs'\nexport default (event) => ({ text: greet(event.query.name), codeDir: process.env.KINDLING_CODE_DIR ?? null })\n")
  mkdirSync(join(dir, 'lib'))
  writeFileSync(join(dir, 'lib', 'greet.mjs'), 'export const greet = (n) => `hello ${n}`\n')
  return dir
}

/** A tiny hostile code server: answers every request with `body` (and this status). */
async function hostile(t: Test, handler: (res: import('node:http').ServerResponse) => void): Promise<string> {
  const server: Server = createServer((req, res) => {
    req.resume()
    handler(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  }))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/code/`
}

const serve = (body: Buffer) => (res: import('node:http').ServerResponse): void => {
  res.writeHead(200, { 'content-length': body.length })
  res.end(body)
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

interface TarEntry { name: string; type?: string; mode?: number; body?: Buffer; size?: number; linkname?: string }

/** A hand-made ustar, so that tests can write what no honest tool would. */
function makeTar(entries: TarEntry[]): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    const h = Buffer.alloc(512)
    const body = e.body ?? Buffer.alloc(0)
    h.write(e.name, 0, 100, 'utf8')
    h.write(`${(e.mode ?? 0o644).toString(8).padStart(7, '0')}\0`, 100, 'latin1')
    h.write('0000000\0', 108, 'latin1')
    h.write('0000000\0', 116, 'latin1')
    h.write(`${(e.size ?? body.length).toString(8).padStart(11, '0')}\0`, 124, 'latin1')
    h.write('00000000000\0', 136, 'latin1')
    h.write(e.type ?? '0', 156, 'latin1')
    if (e.linkname !== undefined) h.write(e.linkname, 157, 100, 'utf8')
    h.write('ustar\u000000', 257, 'latin1')
    h.fill(0x20, 148, 156)
    let sum = 0
    for (const byte of h) sum += byte
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512))
  }
  blocks.push(Buffer.alloc(1024))
  return Buffer.concat(blocks)
}

const request = (url: string, sha256: string, instance = 'inst-1', extra: Partial<FetchCodeRequest> = {}): FetchCodeRequest => ({ url, sha256, token: 'not-checked-by-a-hostile-server', instance, ...extra })

t.test('a pod fetches its code from the code server, loads it and serves calls', async (t) => {
  const rt = await startRuntime(t)
  const cs = await codeServer(t)
  const g = await cs.grant('inst-1', functionDir(t))
  // What a killed runtime of the same pod left half-done (the emptyDir outlives a container restart).
  writeFileSync(join(rt.codeRoot, '.fetch-0123456789ab-1-old.tar'), 'partial')
  mkdirSync(join(rt.codeRoot, '.unpack-0123456789ab-1-old', 'lib'), { recursive: true })
  const got = await fetchCode(rt.client, { ...g, instance: 'inst-1' })
  t.equal(got.codeDir, join(rt.codeRoot, g.sha256), 'unpacked under KINDLING_CODE_DIR/<sha256>')
  t.equal(got.bytes, g.bytes)
  t.type(got.fetchMs, 'number')
  t.same(readdirSync(rt.codeRoot), [g.sha256], 'no temp file or directory left, nor the leftovers of an earlier process')
  t.equal(statSync(join(got.codeDir, 'index.mjs')).mode & 0o777, 0o644)
  t.equal(statSync(join(got.codeDir, 'lib')).mode & 0o777, 0o755)

  const again = await fetchCode(rt.client, { ...g, instance: 'inst-1' })
  t.same(again, { codeDir: got.codeDir, bytes: 0, fetchMs: again.fetchMs, cached: true }, 'a second fetch of the same code answers at once')

  await load(rt.client, { codeDir: got.codeDir, entrypoint: 'index.mjs', function: 'greeter', version: 1, env: {} })
  const res = await rt.client.request({ method: 'GET', path: '/?name=pod', headers: { 'x-kindling-invocation-id': 'i-1' } })
  t.equal(res.statusCode, 200)
  t.same(await res.body.json(), { text: 'hello pod', codeDir: null }, 'the code runs; KINDLING_CODE_DIR is not in its environment')

  await t.rejects(fetchCode(rt.client, { ...g, instance: 'inst-1' }), { code: 'KDL_ERR_CODE_FETCH', message: /before the load only.*greeter/, details: { status: 409 } }, 'no fetch once a function is loaded')
  const unload = await rt.client.request({ method: 'POST', path: '/_/unload', body: '{}', headers: { 'content-type': 'application/json' } })
  await unload.body.dump()
  await t.rejects(fetchCode(rt.client, { ...g, instance: 'inst-1' }), { code: 'KDL_ERR_CODE_FETCH', message: /bound to function greeter/ }, 'nor after an unload: the instance is bound')
})

t.test('what the code server archives, the runtime unpacks as it was: long paths, modes, inside symlinks as files', async (t) => {
  const rt = await startRuntime(t)
  const cs = await codeServer(t)
  const dir = functionDir(t)
  const deep = join('node_modules', 'a'.repeat(60), 'lib', 'b'.repeat(50))
  mkdirSync(join(dir, deep), { recursive: true })
  const long = join(deep, `${'c'.repeat(90)}.js`)
  writeFileSync(join(dir, long), 'module.exports = 1\n')
  writeFileSync(join(dir, 'run.sh'), '#!/bin/sh\n')
  chmodSync(join(dir, 'run.sh'), 0o700)
  symlinkSync('lib', join(dir, 'lib-link'))
  const g = await cs.grant('inst-1', dir)
  const got = await fetchCode(rt.client, { ...g, instance: 'inst-1' })
  t.equal(readFileSync(join(got.codeDir, long), 'utf8'), 'module.exports = 1\n', `a ${long.length}-byte path`)
  t.equal(statSync(join(got.codeDir, 'run.sh')).mode & 0o777, 0o755, 'an executable is 0755')
  t.ok(lstatSync(join(got.codeDir, 'lib-link')).isDirectory(), 'a symlink inside the code arrives as what it points to')
  t.equal(readFileSync(join(got.codeDir, 'lib-link', 'greet.mjs'), 'utf8'), readFileSync(join(dir, 'lib', 'greet.mjs'), 'utf8'))
})

t.test("the code server's refusal is KDL_ERR_CODE_FETCH naming it; nothing is written", async (t) => {
  const rt = await startRuntime(t)
  const cs = await codeServer(t)
  const g = await cs.grant('inst-1', functionDir(t))
  await t.rejects(fetchCode(rt.client, { ...g, instance: 'inst-2' }), { code: 'KDL_ERR_CODE_FETCH', message: /answered 403 KDL_ERR_CODE_FORBIDDEN/ }, "another instance's grant")
  cs.revoke('inst-1')
  await t.rejects(fetchCode(rt.client, { ...g, instance: 'inst-1' }), { code: 'KDL_ERR_CODE_FETCH', message: /403/ }, 'a revoked grant')
  await cs.close()
  await t.rejects(fetchCode(rt.client, { ...g, instance: 'inst-1' }), { code: 'KDL_ERR_CODE_FETCH', message: /failed: .*ECONNREFUSED/ }, 'no code server')
  t.same(readdirSync(rt.codeRoot), [])
})

t.test('an archive whose sha256 is not the granted one is KDL_ERR_CODE_INTEGRITY and nothing is unpacked', async (t) => {
  const rt = await startRuntime(t)
  const cs = await codeServer(t)
  const g = await cs.grant('inst-1', functionDir(t))
  const swapped = makeTar([{ name: 'index.mjs', body: Buffer.from('export default () => "evil"\n') }])
  const url = await hostile(t, serve(swapped))
  await t.rejects(fetchCode(rt.client, request(url + g.sha256, g.sha256)), { code: 'KDL_ERR_CODE_INTEGRITY', message: new RegExp(`sha256 ${sha(swapped)}, not ${g.sha256}`), details: { status: 502 } })
  t.same(readdirSync(rt.codeRoot), [], 'nothing in the code dir')
  const ok = await fetchCode(rt.client, { ...g, instance: 'inst-1' })
  t.equal(ok.codeDir, join(rt.codeRoot, g.sha256), 'the instance is still generic and fetches the real code')
})

t.test('hostile archives are refused with KDL_ERR_BAD_ARCHIVE and write nothing, inside or outside', async (t) => {
  const rt = await startRuntime(t)
  const outside = join(rt.base, 'escaped')
  const file = (name: string, extra: Partial<TarEntry> = {}): TarEntry => ({ name, body: Buffer.from('x'), ...extra })
  const cases: Array<[string, TarEntry[], RegExp, Partial<FetchCodeRequest>?]> = [
    ['a ../ path', [file('../escaped')], /"\.\.\/escaped" contains a "\.\." segment/],
    ['a .. inside a path', [{ name: 'a/', type: '5', mode: 0o755 }, file('a/../../escaped')], /contains a "\.\." segment/],
    ['an absolute path', [file(outside)], /is an absolute path/],
    ['a symlink', [{ name: 'link', type: '2', linkname: outside }], /"link" is a symlink/],
    ['a hard link', [file('a'), { name: 'b', type: '1', linkname: 'a' }], /"b" is a hard link/],
    ['a character device', [{ name: 'null', type: '3' }], /is a character device/],
    ['a FIFO', [{ name: 'p', type: '6' }], /is a FIFO/],
    ['a pax header', [{ name: 'PaxHeader', type: 'x', body: Buffer.from('30 path=../../../escaped\n') }, file('x')], /is a pax header/],
    ['a setuid file', [file('s', { mode: 0o4755 })], /mode 4755/],
    ['a world-writable file', [file('w', { mode: 0o666 })], /mode 0666/],
    ['a path twice', [file('a'), file('a')], /appears more than once/],
    ['a file before its directory', [file('d/x')], /comes before its directory "d"/],
    ['a file inside a file', [file('f'), file('f/x')], /comes before its directory "f"/],
    ['more bytes than allowed', [file('big', { body: Buffer.alloc(4096) })], /unpacks to more than 1000 bytes/, { maxBytes: 1000 }],
    ['more entries than allowed', [file('a'), file('b'), file('c')], /more than 2 entries/, { maxEntries: 2 }],
    ['a truncated archive', [file('a', { size: 100_000 })], /truncated/],
  ]
  for (const [what, entries, message, extra] of cases) {
    const tar = makeTar(entries)
    const url = await hostile(t, serve(what === 'a truncated archive' ? tar.subarray(0, 1536) : tar))
    const body = what === 'a truncated archive' ? tar.subarray(0, 1536) : tar
    await t.rejects(fetchCode(rt.client, request(url + sha(body), sha(body), 'inst-1', extra)), { code: 'KDL_ERR_BAD_ARCHIVE', message, details: { status: 400 } }, what)
    t.same(readdirSync(rt.codeRoot), [], `${what}: nothing in the code dir`)
    t.same(readdirSync(rt.base), ['code'], `${what}: nothing beside it`)
  }
  t.notOk(existsSync(outside))
  t.equal((await health(rt.client)).state, 'generic', 'the runtime is generic and unbound after all of them')
})

t.test('a bad checksum and a non-ustar header are refused', async (t) => {
  const rt = await startRuntime(t)
  const good = makeTar([{ name: 'a', body: Buffer.from('x') }])
  const badSum = Buffer.from(good)
  badSum[0] = 'b'.charCodeAt(0)
  const notUstar = Buffer.from(good)
  notUstar.write('gnutar', 257, 'latin1')
  for (const [what, body, message] of [['checksum', badSum, /bad checksum/], ['magic', notUstar, /not POSIX ustar|bad checksum/]] as const) {
    const url = await hostile(t, serve(body))
    await t.rejects(fetchCode(rt.client, request(url + sha(body), sha(body))), { code: 'KDL_ERR_BAD_ARCHIVE', message }, what)
  }
  t.same(readdirSync(rt.codeRoot), [])
})

t.test('downloads are bounded: the granted size, the size limit, the time limit', async (t) => {
  const rt = await startRuntime(t)
  const tar = makeTar([{ name: 'index.mjs', body: Buffer.from('export default () => 1\n') }])
  const url = await hostile(t, serve(tar))
  await t.rejects(fetchCode(rt.client, request(url + sha(tar), sha(tar), 'i', { bytes: tar.length - 512 })), { code: 'KDL_ERR_CODE_FETCH', message: /not the 1536 granted/ })
  await t.rejects(fetchCode(rt.client, request(url + sha(tar), sha(tar), 'i', { maxBytes: 10, maxEntries: 0 })), { code: 'KDL_ERR_CODE_FETCH', message: /over the 1034 allowed/ })
  // Chunked, with no length: cut while streaming.
  const chunked = await hostile(t, (res) => {
    res.writeHead(200)
    res.write(tar.subarray(0, 1024))
    res.end(tar.subarray(1024))
  })
  await t.rejects(fetchCode(rt.client, request(chunked + sha(tar), sha(tar), 'i', { maxBytes: 10, maxEntries: 0 })), { code: 'KDL_ERR_CODE_FETCH', message: /exceeds the 1034 bytes allowed/ })
  const silent = await hostile(t, () => {})
  await t.rejects(fetchCode(rt.client, request(silent + sha(tar), sha(tar), 'i', { timeoutMs: 300 })), { code: 'KDL_ERR_CODE_FETCH', message: /timed out after 300 ms/ })
  const stalls = await hostile(t, (res) => {
    res.writeHead(200, { 'content-length': tar.length })
    res.write(tar.subarray(0, 512))
  })
  await t.rejects(fetchCode(rt.client, request(stalls + sha(tar), sha(tar), 'i', { timeoutMs: 300 })), { code: 'KDL_ERR_CODE_FETCH', message: /timed out after 300 ms/ }, 'a stalled body')
  t.same(readdirSync(rt.codeRoot), [])
})

t.test('while a fetch runs, the same fetch shares it, and a load or a fetch of other code is refused', async (t) => {
  const rt = await startRuntime(t)
  const tar = makeTar([{ name: 'index.mjs', body: Buffer.from('export default () => "shared"\n') }])
  let requests = 0
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const url = await hostile(t, (res) => {
    requests++
    void held.then(() => serve(tar)(res))
  })
  const first = fetchCode(rt.client, request(url + sha(tar), sha(tar)))
  await waitFor(() => requests === 1, 'the download to start')
  const second = fetchCode(rt.client, request(url + sha(tar), sha(tar)))
  await t.rejects(fetchCode(rt.client, request(url + 'b'.repeat(64), 'b'.repeat(64))), { code: 'KDL_ERR_CODE_FETCH', message: /another code fetch is in progress/, details: { status: 409 } })
  await t.rejects(load(rt.client, { codeDir: join(rt.codeRoot, sha(tar)), entrypoint: 'index.mjs', function: 'f', version: 1, env: {} }), { code: 'KDL_ERR_LOAD_FAILED', message: /a code fetch is in progress/ })
  release()
  const [a, b] = await Promise.all([first, second])
  t.equal(a.codeDir, join(rt.codeRoot, sha(tar)))
  t.same(b, a, 'the second fetch shares the first one\'s answer')
  t.equal(requests, 1, 'one download')
  t.same(readdirSync(rt.codeRoot), [sha(tar)])
  await load(rt.client, { codeDir: a.codeDir, entrypoint: 'index.mjs', function: 'f', version: 1, env: {} })
})

t.test('bad requests are 400 KDL_ERR_BAD_REQUEST; a runtime without KINDLING_CODE_DIR refuses to fetch', async (t) => {
  const rt = await startRuntime(t)
  const good = request('http://127.0.0.1:1/code/x', 'a'.repeat(64))
  for (const [what, body] of [
    ['a file: URL', { ...good, url: 'file:///etc/passwd' }],
    ['an upper-case hash', { ...good, sha256: 'A'.repeat(64) }],
    ['a token with a newline', { ...good, token: 'a\nb' }],
    ['no instance', { ...good, instance: '' }],
    ['a zero timeout', { ...good, timeoutMs: 0 }],
  ] as const) {
    await t.rejects(fetchCode(rt.client, body as FetchCodeRequest), { code: 'KDL_ERR_BAD_REQUEST', details: { status: 400 } }, what)
  }
  const bare = await startRuntime(t, false)
  await t.rejects(fetchCode(bare.client, good), { code: 'KDL_ERR_CODE_FETCH', message: /without KINDLING_CODE_DIR/, details: { status: 409 } })
})

t.test('with KINDLING_CODE_ORIGIN, a fetch from another origin is refused before any download', async (t) => {
  const cs = await codeServer(t)
  const dir = functionDir(t)
  const g = await cs.grant('inst-1', dir)
  const rt = await startRuntime(t, true, { KINDLING_CODE_ORIGIN: new URL(g.url).origin })
  let requests = 0
  const elsewhere = await hostile(t, (res) => { requests++; serve(Buffer.alloc(0))(res) })
  await t.rejects(fetchCode(rt.client, request(elsewhere + g.sha256, g.sha256)), { code: 'KDL_ERR_CODE_FETCH', message: /fetched from http:\/\/127\.0\.0\.1:\d+ only/, details: { status: 409 } })
  t.equal(requests, 0, 'nothing was asked of the other origin')
  const got = await fetchCode(rt.client, { ...g, instance: 'inst-1' })
  t.equal(got.codeDir, join(rt.codeRoot, g.sha256), 'the code server itself is fine')
  const loaded = await rt.client.request({ method: 'POST', path: '/_/load', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ codeDir: got.codeDir, entrypoint: 'index.mjs', function: 'f', version: 1, env: {} }) })
  t.equal(loaded.statusCode, 200, await loaded.body.text())
})
