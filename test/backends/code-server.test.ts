import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { waitFor } from '../fixtures/wait.js'
import { CodeServer, type CodeServerOptions } from '../../backends/kubernetes/code-server.js'

interface Fetched {
  status: number
  body: Buffer
  json: () => any
  length: string | undefined
}

async function fetchArchive(url: string, headers: Record<string, string>, method: 'GET' | 'POST' = 'GET'): Promise<Fetched> {
  const res = await request(url, { headers, method })
  const body = Buffer.from(await res.body.arrayBuffer())
  return { status: res.statusCode, body, json: () => JSON.parse(body.toString('utf8')), length: res.headers['content-length'] as string | undefined }
}

function tmp(t: Test, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A small function with a sub-directory, an executable and an inside symlink. */
function codeDir(t: Test): string {
  const dir = tmp(t, 'kdl-code-')
  writeFileSync(join(dir, 'index.mjs'), 'export default () => "hi"\n')
  mkdirSync(join(dir, 'lib'))
  writeFileSync(join(dir, 'lib', 'util.mjs'), 'export const x = 1\n')
  writeFileSync(join(dir, 'lib', 'run.sh'), '#!/bin/sh\necho hi\n')
  chmodSync(join(dir, 'lib', 'run.sh'), 0o775)
  symlinkSync('lib/util.mjs', join(dir, 'alias.mjs'))
  return dir
}

async function started(t: Test, extra: Partial<CodeServerOptions> = {}): Promise<{ server: CodeServer; work: string }> {
  const work = tmp(t, 'kdl-codesrv-')
  const server = new CodeServer({ secret: randomBytes(32), workDir: work, ...extra })
  await server.start({ host: '127.0.0.1', port: 0 })
  t.teardown(() => server.close())
  return { server, work }
}

const auth = (token: string, instance: string): Record<string, string> => ({ authorization: `Bearer ${token}`, 'x-kindling-instance': instance })

t.test('a grant fetched with its token and instance answers the archive, whose sha256 and size it names', async (t) => {
  const { server } = await started(t)
  const dir = codeDir(t)
  const g = await server.grant('inst-1', dir)
  t.match(g.url, /^http:\/\/127\.0\.0\.1:\d+\/code\/[0-9a-f]{64}$/)
  const res = await fetchArchive(g.url, auth(g.token, 'inst-1'))
  t.equal(res.status, 200)
  t.equal(res.length, String(g.bytes))
  t.equal(res.body.length, g.bytes)
  t.equal(createHash('sha256').update(res.body).digest('hex'), g.sha256)
  // GNU tar reads it: files and directories only (the inside symlink became a file), modes normalised, owner 0.
  const out = tmp(t, 'kdl-tar-')
  writeFileSync(join(out, 'a.tar'), res.body)
  const listing = execFileSync('tar', ['-tvf', join(out, 'a.tar'), '--numeric-owner'], { encoding: 'utf8' }).trim().split('\n')
  t.same(listing.map((l) => l.split(/\s+/).slice(-1)[0]), ['alias.mjs', 'index.mjs', 'lib/', 'lib/run.sh', 'lib/util.mjs'])
  t.same(listing.map((l) => l.slice(0, 10)), ['-rw-r--r--', '-rw-r--r--', 'drwxr-xr-x', '-rwxr-xr-x', '-rw-r--r--'])
  t.ok(listing.every((l) => l.includes(' 0/0 ')), 'owner 0/0')
})

t.test('the archive is deterministic and made once per version of the directory', async (t) => {
  const { server, work } = await started(t)
  const dir = codeDir(t)
  const a = await server.grant('inst-1', dir)
  const b = await server.grant('inst-2', dir)
  t.equal(a.sha256, b.sha256)
  t.not(a.token, b.token)
  t.same(readdirSync(work), [`${a.sha256}.tar`], 'one archive, no leftovers')
  const other = await started(t)
  t.equal((await other.server.grant('x', dir)).sha256, a.sha256, 'another server makes the same bytes')
  writeFileSync(join(dir, 'index.mjs'), 'export default () => "changed"\n')
  const c = await server.grant('inst-3', dir)
  t.not(c.sha256, a.sha256, 'a changed file makes a new archive')
})

t.test('long paths are split over the ustar prefix; tar unpacks them', async (t) => {
  const { server } = await started(t)
  const dir = tmp(t, 'kdl-code-')
  const deep = join(dir, 'node_modules', 'a'.repeat(60), 'lib', 'b'.repeat(50))
  mkdirSync(deep, { recursive: true })
  writeFileSync(join(deep, `${'c'.repeat(90)}.js`), 'module.exports = 1\n')
  const g = await server.grant('i', dir)
  const res = await fetchArchive(g.url, auth(g.token, 'i'))
  const out = tmp(t, 'kdl-tar-')
  writeFileSync(join(out, 'a.tar'), res.body)
  mkdirSync(join(out, 'x'))
  execFileSync('tar', ['-xf', join(out, 'a.tar'), '-C', join(out, 'x')])
  t.same(readdirSync(join(out, 'x', 'node_modules', 'a'.repeat(60), 'lib', 'b'.repeat(50))), [`${'c'.repeat(90)}.js`])
})

t.test('refuses to archive a symlink that leaves the code directory', async (t) => {
  const { server } = await started(t)
  const dir = codeDir(t)
  symlinkSync('/etc/passwd', join(dir, 'passwd'))
  await t.rejects(server.grant('i', dir), { code: 'KDL_ERR_BAD_ARCHIVE', message: /passwd" leaves the code directory/ })
  rmSync(join(dir, 'passwd'))
  symlinkSync('..', join(dir, 'up'))
  await t.rejects(server.grant('i', dir), { code: 'KDL_ERR_BAD_ARCHIVE', message: /up" leaves/ })
  rmSync(join(dir, 'up'))
  symlinkSync('.', join(dir, 'loop'))
  await t.rejects(server.grant('i', dir), { code: 'KDL_ERR_BAD_ARCHIVE', message: /loop" makes a loop/ })
  rmSync(join(dir, 'loop'))
  symlinkSync('nowhere', join(dir, 'dangling'))
  await t.rejects(server.grant('i', dir), { code: 'KDL_ERR_BAD_ARCHIVE', message: /dangling" of the code directory dangles/ })
})

t.test('a transfer slower than transferTimeoutMs is cut and frees its turn', async (t) => {
  const { server } = await started(t, { maxTransfers: 1, transferTimeoutMs: 1000 })
  const dir = tmp(t, 'kdl-code-')
  writeFileSync(join(dir, 'big.bin'), randomBytes(32 << 20))
  const slow = await server.grant('slow', dir)
  // Small, so that its own transfer is far within the deadline.
  const next = await server.grant('next', codeDir(t))
  const res = await request(slow.url, { headers: auth(slow.token, 'slow') })
  t.equal(res.statusCode, 200)
  // Never read: the server's writes stall, the deadline cuts it, and the waiting fetch gets the turn.
  const after = await fetchArchive(next.url, auth(next.token, 'next'))
  t.equal(after.status, 200)
  t.equal(after.body.length, next.bytes)
  await t.rejects(res.body.arrayBuffer(), 'the slow transfer was cut')
})

t.test('refusals are 403 KDL_ERR_CODE_FORBIDDEN, the same for every reason', async (t) => {
  let now = 1_000_000
  const { server } = await started(t, { now: () => now, ttlMs: 60_000 })
  const dir = codeDir(t)
  const other = tmp(t, 'kdl-code-')
  writeFileSync(join(other, 'index.mjs'), 'export default () => "other"\n')
  const g = await server.grant('inst-1', dir)
  const g2 = await server.grant('inst-2', other)
  const forbidden = async (what: string, url: string, headers: Record<string, string>): Promise<void> => {
    const res = await fetchArchive(url, headers)
    t.equal(res.status, 403, what)
    t.same(res.json(), { statusCode: 403, code: 'KDL_ERR_CODE_FORBIDDEN', error: 'Forbidden', message: 'the token does not grant this archive to this instance' }, what)
  }
  await forbidden('no token', g.url, { 'x-kindling-instance': 'inst-1' })
  await forbidden('no instance header', g.url, { authorization: `Bearer ${g.token}` })
  await forbidden('another instance', g.url, auth(g.token, 'inst-2'))
  await forbidden("another hash's token", g.url, auth(g2.token, 'inst-1'))
  await forbidden("another instance's token for another hash", g.url, auth(g2.token, 'inst-2'))
  const parts = g.token.split('.')
  await forbidden('a tampered expiry', g.url, auth([parts[0], String(Number(parts[1]) + 1_000_000), parts[2], parts[3]].join('.'), 'inst-1'))
  const mac = Buffer.from(parts[3] ?? '', 'base64url')
  mac[0] = (mac[0] ?? 0) ^ 1
  await forbidden('a tampered signature', g.url, auth([parts[0], parts[1], parts[2], mac.toString('base64url')].join('.'), 'inst-1'))
  await forbidden('garbage', g.url, auth('nonsense', 'inst-1'))
  const ok = await fetchArchive(g.url, auth(g.token, 'inst-1'))
  t.equal(ok.status, 200, 'the real token still works')
  await forbidden('a token used once', g.url, auth(g.token, 'inst-1'))
  t.equal((await fetchArchive(g.url, auth(g.token, 'inst-1'), 'POST')).status, 403, 'a POST')
  await forbidden('another path', g.url.replace('/code/', '/code/x'), auth(g.token, 'inst-1'))

  await t.test('an expired token', async (t) => {
    const unused = await server.grant('inst-3', dir)
    now += 59_999
    t.equal((await fetchArchive(unused.url, auth(unused.token, 'inst-3'))).status, 200, 'good until its last millisecond')
    const late = await server.grant('inst-4', dir)
    now += 60_000
    await forbidden('expired', late.url, auth(late.token, 'inst-4'))
    const again = await server.grant('inst-4', dir)
    t.equal((await fetchArchive(again.url, auth(again.token, 'inst-4'))).status, 200, 'a new grant works')
  })

  await t.test('a newer grant supersedes an older token; two requests with one token get one transfer', async (t) => {
    now += 1
    const first = await server.grant('inst-5', dir)
    now += 1
    const second = await server.grant('inst-5', dir)
    await forbidden('superseded', first.url, auth(first.token, 'inst-5'))
    const both = await Promise.all([fetchArchive(second.url, auth(second.token, 'inst-5')), fetchArchive(second.url, auth(second.token, 'inst-5'))])
    t.same(both.map((r) => r.status).sort(), [200, 403])
  })

  await t.test('a revoked grant, even unexpired; a new grant after it does not revive the old token', async (t) => {
    const fresh = await server.grant('inst-9', dir)
    server.revoke('inst-9')
    await forbidden('revoked', fresh.url, auth(fresh.token, 'inst-9'))
    const regrant = await server.grant('inst-9', dir)
    await forbidden('old token after a re-grant', fresh.url, auth(fresh.token, 'inst-9'))
    t.equal((await fetchArchive(regrant.url, auth(regrant.token, 'inst-9'))).status, 200)
  })
})

t.test('an archive gone from the server is 404 KDL_ERR_CODE_NOT_FOUND, told only to a valid token', async (t) => {
  const { server, work } = await started(t)
  const grantDir = codeDir(t)
  const g = await server.grant('i', grantDir)
  const unknown = g.url.replace(/[0-9a-f]{64}$/, 'f'.repeat(64))
  t.equal((await fetchArchive(unknown, auth(g.token, 'i'))).status, 403, 'an unknown hash without its token: 403, no oracle')
  await server.drop(g.sha256)
  t.same(readdirSync(work), [], 'the archive file is gone')
  const res = await fetchArchive(g.url, auth(g.token, 'i'))
  t.equal(res.status, 404)
  t.equal(res.json().code, 'KDL_ERR_CODE_NOT_FOUND')
  const again = await server.grant('i', grantDir)
  t.equal((await fetchArchive(again.url, auth(again.token, 'i'))).status, 200, 'a later grant makes it again')
})

t.test('transfers beyond maxTransfers wait their turn and all complete', async (t) => {
  const { server } = await started(t, { maxTransfers: 2 })
  const dir = tmp(t, 'kdl-code-')
  // Larger than what loopback socket buffers hold: an unread transfer stays active.
  writeFileSync(join(dir, 'big.bin'), randomBytes(32 << 20))
  const grants = await Promise.all(Array.from({ length: 6 }, (_, i) => server.grant(`i-${i}`, dir)))
  const pending = grants.map((g, i) => request(g.url, { headers: auth(g.token, `i-${i}`) }))
  await waitFor(() => { const s = server.transfers(); return s.active === 2 && s.waiting === 4 }, 'two transfers active, four waiting')
  const results = await Promise.all(pending.map(async (p) => {
    const res = await p
    return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) }
  }))
  // The client may hold every byte a moment before the server sees its response closed.
  await waitFor(() => { const s = server.transfers(); return s.active === 0 && s.waiting === 0 }, 'every slot released')
  for (const r of results) {
    t.equal(r.status, 200)
    t.equal(createHash('sha256').update(r.body).digest('hex'), grants[0]?.sha256)
  }
})

t.test('with codeRoot set, a directory outside it is refused', async (t) => {
  const root = tmp(t, 'kdl-root-')
  const { server } = await started(t, { codeRoot: root })
  await t.rejects(server.grant('i', codeDir(t)), { code: 'KDL_ERR_BACKEND', message: /outside the code root/ })
  const inside = join(root, 'f'.repeat(64))
  mkdirSync(inside)
  writeFileSync(join(inside, 'index.mjs'), 'export default () => 1\n')
  t.match((await server.grant('i', inside)).sha256, /^[0-9a-f]{64}$/)
  await t.rejects(server.grant('i', root), { code: 'KDL_ERR_BACKEND' }, 'nor the root itself')
})

t.test('listening on a wildcard address needs advertiseHost, which the URLs then name', async (t) => {
  const work = tmp(t, 'kdl-codesrv-')
  const server = new CodeServer({ secret: randomBytes(32), workDir: work })
  t.teardown(() => server.close())
  await t.rejects(server.start({ host: '0.0.0.0', port: 0 }), { code: 'KDL_ERR_BAD_REQUEST', message: /advertiseHost/ })
  const base = await server.start({ host: '0.0.0.0', port: 0, advertiseHost: '127.0.0.1' })
  t.match(base, /^http:\/\/127\.0\.0\.1:\d+$/)
  const g = await server.grant('i', codeDir(t))
  t.ok(g.url.startsWith(`${base}/code/`))
  t.equal((await fetchArchive(g.url, auth(g.token, 'i'))).status, 200)
})

t.test('beyond maxCacheBytes the least recently granted archives no token can name are removed', async (t) => {
  let now = 5_000_000
  const { server, work } = await started(t, { now: () => now, ttlMs: 1000, maxCacheBytes: 1 })
  const a = codeDir(t)
  const b = tmp(t, 'kdl-code-')
  writeFileSync(join(b, 'index.mjs'), 'export default () => "b"\n')
  const ga = await server.grant('i-a', a)
  const gb = await server.grant('i-b', b)
  t.same(readdirSync(work).sort(), [`${ga.sha256}.tar`, `${gb.sha256}.tar`].sort(), 'both kept while their tokens live')
  now += 1000
  const gb2 = await server.grant('i-b2', b)
  t.same(readdirSync(work), [`${gb.sha256}.tar`], 'a is gone, b (just granted) stays')
  t.equal((await fetchArchive(gb2.url, auth(gb2.token, 'i-b2'))).status, 200)
  const ga2 = await server.grant('i-a2', a)
  t.equal(ga2.sha256, ga.sha256, 'a later grant makes it again')
  t.equal((await fetchArchive(ga2.url, auth(ga2.token, 'i-a2'))).status, 200)
})

t.test('a fetch waiting for its turn still gets the whole archive when it is dropped meanwhile', async (t) => {
  const { server } = await started(t, { maxTransfers: 1 })
  const big = tmp(t, 'kdl-code-')
  writeFileSync(join(big, 'big.bin'), randomBytes(32 << 20))
  const first = await server.grant('first', big)
  const next = await server.grant('next', codeDir(t))
  const holding = await request(first.url, { headers: auth(first.token, 'first') })
  const waiting = fetchArchive(next.url, auth(next.token, 'next'))
  await waitFor(() => server.transfers().waiting === 1, 'the second fetch waiting for its turn')
  await server.drop(next.sha256)
  await holding.body.arrayBuffer()
  const got = await waiting
  t.equal(got.status, 200)
  t.equal(createHash('sha256').update(got.body).digest('hex'), next.sha256)
})
