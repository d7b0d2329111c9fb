import { spawnSync } from 'node:child_process'
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import t, { type Test } from 'tap'
import { create, Header, Pax, type HeaderData } from 'tar'
import { CodeStore } from '../../codestore/code-store.js'

interface RawEntry {
  path: string
  type?: HeaderData['type']
  body?: string | Buffer
  /** Declared size when it differs from the body (size bombs, truncation). */
  size?: number
  linkpath?: string
  mode?: number
  /** PAX extended-header fields emitted before this entry (e.g. a path override). */
  pax?: HeaderData
}

/** A tar written header by header, so hostile entries reach the archive exactly as given. */
function rawTar(entries: RawEntry[], trailer = 1024): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    if (e.pax !== undefined) blocks.push(new Pax(e.pax).encode())
    const body = typeof e.body === 'string' ? Buffer.from(e.body) : e.body ?? Buffer.alloc(0)
    const size = e.size ?? body.length
    const header = new Header({
      path: e.path,
      type: e.type ?? 'File',
      size,
      mode: e.mode ?? (e.type === 'Directory' ? 0o755 : 0o644),
      uid: 0,
      gid: 0,
      mtime: new Date(0),
      ...(e.linkpath === undefined ? {} : { linkpath: e.linkpath }),
    })
    header.encode()
    blocks.push(header.block as Buffer)
    if (body.length > 0) blocks.push(body, Buffer.alloc((512 - (body.length % 512)) % 512))
  }
  blocks.push(Buffer.alloc(trailer))
  return Buffer.concat(blocks)
}

const tgz = (entries: RawEntry[]): Buffer => gzipSync(rawTar(entries))

interface Env {
  base: string
  root: string
  sentinel: string
  store: CodeStore
}

async function setup(t: Test, opts: { maxUnpackedBytes?: number; maxEntries?: number } = {}): Promise<Env> {
  const base = await mkdtemp(join(tmpdir(), 'kindling-code-store-'))
  // mkdtemp makes 0700; the uid-65534 read check needs to traverse it.
  await chmod(base, 0o755)
  t.teardown(() => rm(base, { recursive: true, force: true }))
  const root = join(base, 'root')
  const sentinel = join(base, 'sentinel')
  await mkdir(sentinel)
  const store = new CodeStore({ root, maxUnpackedBytes: opts.maxUnpackedBytes ?? 1024 * 1024, maxEntries: opts.maxEntries ?? 100 })
  return { base, root, sentinel, store }
}

async function codeDirs(root: string): Promise<string[]> {
  try {
    return (await readdir(root)).filter((n) => n !== '.tmp').sort()
  } catch {
    return []
  }
}

/** Nothing landed outside root, and root holds no code dir and no leftover temp dir. */
async function assertNothingWritten(t: Test, env: Env): Promise<void> {
  const beside = (await readdir(env.base)).filter((n) => n !== 'root' && n !== 'sentinel')
  t.same(beside, [], 'nothing new beside root')
  t.same(await readdir(env.sentinel), [], 'sentinel dir untouched')
  t.same(await codeDirs(env.root), [], 'no code dir in root')
  const tmp = await readdir(join(env.root, '.tmp')).catch(() => [])
  t.same(tmp, [], 'no temp dir left behind')
}

t.test('putArchive rejects hostile entries with KDL_ERR_BAD_ARCHIVE and writes nothing', async (t) => {
  const cases: Array<[string, (env: Env) => RawEntry[], RegExp]> = [
    ['a ../ path', () => [{ path: 'ok.js', body: '1' }, { path: '../../../sentinel/evil', body: 'x' }], /"\.\.\/\.\.\/\.\.\/sentinel\/evil" contains a "\.\." segment/],
    ['a .. segment in the middle', () => [{ path: 'a/../../evil', body: 'x' }], /contains a "\.\." segment/],
    ['an absolute path', (env) => [{ path: join(env.sentinel, 'abs-evil'), body: 'x' }], /is an absolute path/],
    ['a Windows drive path', () => [{ path: 'C:/evil', body: 'x' }], /"C:\/evil" is a Windows drive path/],
    ['a backslash path', () => [{ path: '..\\evil', body: 'x' }], /contains a backslash/],
    ['a PAX path override with ..', () => [{ path: 'innocent.js', body: 'x', pax: { path: '../../../sentinel/pax-evil' } }], /pax-evil" contains a "\.\." segment/],
    ['a symlink escaping the root, then a file written through it', () => [
      { path: 'link', type: 'SymbolicLink', linkpath: '../../sentinel' },
      { path: 'link/x', body: 'through the link' },
    ], /symlink "link" -> "\.\.\/\.\.\/sentinel" points outside the archive/],
    ['a symlink ../../etc', () => [{ path: 'link', type: 'SymbolicLink', linkpath: '../../etc' }], /points outside the archive/],
    ['a symlink with an absolute target', () => [{ path: 'passwd', type: 'SymbolicLink', linkpath: '/etc/passwd' }], /absolute target/],
    ['a symlink escaping through another in-archive symlink', () => [
      { path: 'x/y/z', type: 'Directory' },
      { path: 'x/y/z/top', type: 'SymbolicLink', linkpath: '../../..' },
      { path: 'x/y/z/out', type: 'SymbolicLink', linkpath: 'top/..' },
    ], /symlink "x\/y\/z\/out" -> "top\/\.\." points outside/],
    ['a symlink loop', () => [{ path: 'a', type: 'SymbolicLink', linkpath: 'b' }, { path: 'b', type: 'SymbolicLink', linkpath: 'a' }], /symlink loop/],
    ['a file written through an in-archive symlink', () => [
      { path: 'sub', type: 'Directory' },
      { path: 'alias', type: 'SymbolicLink', linkpath: 'sub' },
      { path: 'alias/x.js', body: 'x' },
    ], /"alias\/x\.js" would be written through the symlink "alias"/],
    ['a hard link to /etc/passwd', () => [{ path: 'pw', type: 'Link', linkpath: '/etc/passwd' }], /hard link "pw" has the target "\/etc\/passwd", which is not a plain in-archive path/],
    ['a hard link with ..', () => [{ path: 'pw', type: 'Link', linkpath: '../../etc/passwd' }], /not a plain in-archive path/],
    ['a hard link to a missing file', () => [{ path: 'pw', type: 'Link', linkpath: 'nope.js' }], /does not point to a regular file earlier/],
    ['a character device', () => [{ path: 'null', type: 'CharacterDevice' }], /"null" is a character device/],
    ['a block device', () => [{ path: 'sda', type: 'BlockDevice' }], /"sda" is a block device/],
    ['a FIFO', () => [{ path: 'pipe', type: 'FIFO' }], /"pipe" is a FIFO/],
    ['a duplicate file', () => [{ path: 'a.js', body: '1' }, { path: './a.js', body: '2' }], /"\.\/a\.js" appears more than once/],
    ['a file under a file', () => [{ path: 'a', body: '1' }, { path: 'a/b', body: '2' }], /"a\/b" lies under the file "a"/],
  ]
  for (const [what, entries, message] of cases) {
    await t.test(what, async (t) => {
      const env = await setup(t)
      await t.rejects(env.store.putArchive(tgz(entries(env))), { code: 'KDL_ERR_BAD_ARCHIVE', message })
      await assertNothingWritten(t, env)
    })
  }
})

t.test('putArchive rejects data that is not a sound .tar.gz', async (t) => {
  const env = await setup(t)
  const good = tgz([{ path: 'index.js', body: 'x'.repeat(5000) }])
  const notTar = Buffer.from('definitely not a tar archive, just some text that goes on'.repeat(20))
  const cases: Array<[string, Buffer, RegExp]> = [
    ['gzip garbage', Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0]), Buffer.from('garbage garbage garbage garbage')]), /not valid gzip data/],
    ['a plain (uncompressed) tar', rawTar([{ path: 'index.js', body: 'x' }]), /not gzip-compressed/],
    ['random bytes', Buffer.from('hello world, this is no archive at all'), /not gzip-compressed/],
    ['a truncated gzip stream', good.subarray(0, Math.floor(good.length / 2)), /not valid gzip data/],
    ['gzip of something that is not a tar', gzipSync(notTar), /not a valid tar/],
    ['gzip of a tar cut inside a body', gzipSync(rawTar([{ path: 'index.js', body: 'x'.repeat(5000) }]).subarray(0, 2048)), /not a valid tar/],
    ['gzip of a tar with a bad checksum', gzipSync(Buffer.concat([Buffer.alloc(148, 0x41), Buffer.alloc(364)])), /not a valid tar/],
    ['a tar.gz inside a gzip', gzipSync(good), /compressed twice/],
    ['an empty tar', gzipSync(Buffer.alloc(1024)), /not a valid tar|holds no entries/],
  ]
  for (const [what, archive, message] of cases) {
    await t.rejects(env.store.putArchive(archive), { code: 'KDL_ERR_BAD_ARCHIVE', message }, what)
  }
  await assertNothingWritten(t, env)
})

t.test('putArchive enforces maxUnpackedBytes and maxEntries', async (t) => {
  await t.test('a declared size over the limit (size bomb)', async (t) => {
    const env = await setup(t, { maxUnpackedBytes: 64 * 1024 })
    const bomb = tgz([{ path: 'small.js', body: 'x' }, { path: 'bomb.bin', body: Buffer.alloc(65 * 1024) }])
    t.ok(bomb.length < 2048, 'the archive itself is small')
    await t.rejects(env.store.putArchive(bomb), { code: 'KDL_ERR_BAD_ARCHIVE', message: /more than maxUnpackedBytes \(65536 bytes\) at entry "bomb\.bin"/ })
    await assertNothingWritten(t, env)
  })
  await t.test('many files that add up past the limit', async (t) => {
    const env = await setup(t, { maxUnpackedBytes: 10_000 })
    const entries = Array.from({ length: 11 }, (_, i) => ({ path: `f${i}.js`, body: Buffer.alloc(1000, 0x61) }))
    await t.rejects(env.store.putArchive(tgz(entries)), { code: 'KDL_ERR_BAD_ARCHIVE', message: /"f10\.js"/ })
    await assertNothingWritten(t, env)
  })
  await t.test('a gzip stream that inflates far past the limit stops inflating', async (t) => {
    const env = await setup(t, { maxUnpackedBytes: 64 * 1024, maxEntries: 10 })
    const archive = gzipSync(rawTar([{ path: 'index.js', body: 'x' }], 32 * 1024 * 1024))
    await t.rejects(env.store.putArchive(archive), { code: 'KDL_ERR_BAD_ARCHIVE', message: /more than maxUnpackedBytes/ })
    await assertNothingWritten(t, env)
  })
  await t.test('too many entries', async (t) => {
    const env = await setup(t, { maxEntries: 5 })
    const entries = Array.from({ length: 6 }, (_, i) => ({ path: `f${i}.js`, body: 'x' }))
    await t.rejects(env.store.putArchive(tgz(entries)), { code: 'KDL_ERR_BAD_ARCHIVE', message: /more than maxEntries \(5\)/ })
    await assertNothingWritten(t, env)
    const ok = await env.store.putArchive(tgz(entries.slice(0, 5)))
    t.same((await readdir(ok.dir)).sort(), ['f0.js', 'f1.js', 'f2.js', 'f3.js', 'f4.js'], 'exactly maxEntries is fine')
  })
})

async function makeArchive(base: string): Promise<Buffer> {
  const src = join(base, 'src-tree')
  await mkdir(join(src, 'lib', 'deep'), { recursive: true })
  await mkdir(join(src, 'bin'))
  await writeFile(join(src, 'index.js'), 'export default () => "hi"\n')
  await writeFile(join(src, 'lib', 'util.js'), 'export const x = 1\n')
  await writeFile(join(src, 'lib', 'deep', 'data.json'), '{"a":1}\n', { mode: 0o600 })
  await writeFile(join(src, 'bin', 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o700 })
  await symlink('../lib/util.js', join(src, 'bin', 'util.js'))
  await symlink('lib', join(src, 'current'))
  const file = join(base, 'code.tgz')
  await create({ gzip: true, cwd: src, file, portable: true }, ['index.js', 'lib', 'bin', 'current'])
  return readFile(file)
}

t.test('putArchive unpacks a valid archive with nested dirs and relative symlinks', async (t) => {
  const env = await setup(t)
  const archive = await makeArchive(env.base)
  const { hash, dir } = await env.store.putArchive(archive)
  t.match(hash, /^[0-9a-f]{64}$/)
  t.equal(dir, join(env.root, hash))
  t.equal(env.store.dirOf(hash), dir)
  t.ok(await env.store.has(hash))
  t.equal(await readFile(join(dir, 'lib', 'deep', 'data.json'), 'utf8'), '{"a":1}\n')
  t.equal(await readlink(join(dir, 'bin', 'util.js')), '../lib/util.js', 'symlink kept as written')
  t.equal(await readFile(join(dir, 'bin', 'util.js'), 'utf8'), 'export const x = 1\n', 'symlink resolves inside')
  t.equal(await readFile(join(dir, 'current', 'util.js'), 'utf8'), 'export const x = 1\n', 'directory symlink resolves inside')
  t.equal((await stat(dir)).mode & 0o7777, 0o755, 'code root 0755')
  t.equal((await stat(join(dir, 'lib', 'deep'))).mode & 0o7777, 0o755, 'dirs 0755')
  t.equal((await stat(join(dir, 'lib', 'deep', 'data.json'))).mode & 0o7777, 0o644, '0600 file becomes 0644')
  t.equal((await stat(join(dir, 'bin', 'run.sh'))).mode & 0o7777, 0o755, 'executable file becomes 0755')
  t.same(await readdir(join(env.root, '.tmp')), [], 'temp dir renamed away')

  if (process.getuid?.() === 0) {
    const read = spawnSync('sh', ['-c', 'cat index.js lib/util.js lib/deep/data.json bin/run.sh bin/util.js current/util.js >/dev/null && ls -R . >/dev/null'], { cwd: dir, uid: 65534, gid: 65534 })
    t.equal(read.status, 0, `uid 65534 reads every file: ${read.stderr.toString()}`)
  }
})

t.test('putArchive normalises setuid, setgid and odd modes', async (t) => {
  const env = await setup(t)
  const { dir } = await env.store.putArchive(tgz([
    { path: 'd/', type: 'Directory', mode: 0o2700 },
    { path: 'd/suid', body: 'x', mode: 0o4755 },
    { path: 'd/sgid', body: 'x', mode: 0o2644 },
    { path: 'd/none', body: 'x', mode: 0o000 },
    { path: 'd/hard', type: 'Link', linkpath: 'd/suid' },
  ]))
  t.equal((await stat(join(dir, 'd'))).mode & 0o7777, 0o755)
  t.equal((await stat(join(dir, 'd', 'suid'))).mode & 0o7777, 0o755)
  t.equal((await stat(join(dir, 'd', 'sgid'))).mode & 0o7777, 0o644)
  t.equal((await stat(join(dir, 'd', 'none'))).mode & 0o7777, 0o644)
  t.equal((await stat(join(dir, 'd', 'hard'))).ino, (await stat(join(dir, 'd', 'suid'))).ino, 'in-archive hard link is a hard link')
})

t.test('putArchive does not strip a single top-level directory', async (t) => {
  const env = await setup(t)
  const { dir } = await env.store.putArchive(tgz([{ path: 'myfn/', type: 'Directory' }, { path: 'myfn/index.js', body: 'x' }]))
  t.same(await readdir(dir), ['myfn'])
  await env.store.assertEntrypoint(dir, 'myfn/index.js')
  await t.rejects(env.store.assertEntrypoint(dir, 'index.js'), { code: 'KDL_ERR_BAD_SPEC' })
})

t.test('the same archive twice, or concurrently, gives one hash and one dir', async (t) => {
  const env = await setup(t)
  const archive = await makeArchive(env.base)
  const first = await env.store.putArchive(archive)
  const second = await env.store.putArchive(Buffer.from(archive))
  t.equal(second.hash, first.hash)
  const [a, b, c] = await Promise.all([archive, archive, archive].map(async (x) => {
    await env.store.remove(first.hash)
    return env.store.putArchive(x)
  }))
  t.equal(a?.hash, first.hash)
  t.equal(b?.hash, first.hash)
  t.equal(c?.hash, first.hash)
  t.same(await codeDirs(env.root), [first.hash], 'exactly one code dir')
  t.same(await readdir(join(env.root, '.tmp')), [], 'losing temp dirs removed')
  t.equal(await readFile(join(first.dir, 'index.js'), 'utf8'), 'export default () => "hi"\n')
})

t.test('an archive is named by the tree it unpacks to: the same files packed another way are one hash, a change is another', async (t) => {
  const env = await setup(t)
  const files: RawEntry[] = [
    { path: 'lib/', type: 'Directory' },
    { path: 'lib/util.js', body: 'export const x = 1\n' },
    { path: 'index.js', body: 'export default () => 1\n' },
    { path: 'run.sh', body: '#!/bin/sh\n', mode: 0o755 },
  ]
  const base = await env.store.putArchive(tgz(files))
  // Other entry order, implied instead of explicit directory, other mtime and owner, another compression level.
  const reordered = rawTar([files[3]!, files[2]!, files[1]!])
  const again = await env.store.putArchive(gzipSync(reordered, { level: 1 }))
  t.equal(again.hash, base.hash, 'order, implied directory and compression do not change the hash')
  const withOddMode = await env.store.putArchive(tgz([files[0]!, files[1]!, files[2]!, { ...files[3]!, mode: 0o700 }]))
  t.equal(withOddMode.hash, base.hash, 'modes count as the store writes them (0700 is 0755)')
  const changed = await env.store.putArchive(tgz([files[0]!, files[1]!, { path: 'index.js', body: 'export default () => 2\n' }, files[3]!]))
  t.not(changed.hash, base.hash, 'a changed file is another hash')
  const notExec = await env.store.putArchive(tgz([files[0]!, files[1]!, files[2]!, { ...files[3]!, mode: 0o644 }]))
  t.not(notExec.hash, base.hash, 'a lost executable bit is another hash')
  const emptyDir = await env.store.putArchive(tgz([...files, { path: 'empty/', type: 'Directory' }]))
  t.not(emptyDir.hash, base.hash, 'an added empty directory is another hash')
  t.same(await codeDirs(env.root), [base.hash, changed.hash, notExec.hash, emptyDir.hash].sort(), 'one directory per tree')
})

t.test('putInline stores index.mjs under a hash of its canonical form', async (t) => {
  const env = await setup(t)
  const code = 'export default () => 42\n'
  const one = await env.store.putInline(code)
  const two = await env.store.putInline(code)
  const other = await env.store.putInline(code + ' ')
  t.equal(one.hash, two.hash)
  t.not(other.hash, one.hash)
  t.same(await readdir(one.dir), ['index.mjs'])
  t.equal(await readFile(join(one.dir, 'index.mjs'), 'utf8'), code)
  t.equal((await stat(join(one.dir, 'index.mjs'))).mode & 0o7777, 0o644)
  t.equal((await stat(one.dir)).mode & 0o7777, 0o755)
  t.same(await codeDirs(env.root), [one.hash, other.hash].sort())
  await env.store.assertEntrypoint(one.dir, 'index.mjs')
  await env.store.assertEntrypoint(one.dir, 'index.mjs:default')
})

t.test('assertEntrypoint accepts files inside the code and rejects the rest with KDL_ERR_BAD_SPEC', async (t) => {
  const env = await setup(t)
  const { dir } = await env.store.putArchive(await makeArchive(env.base))
  await symlink(join(env.sentinel), join(dir, 'outside'))
  await writeFile(join(env.sentinel, 'secret.js'), 'x')
  await symlink(join(env.sentinel, 'secret.js'), join(dir, 'outside.js'))

  for (const ok of ['index.js', 'index.js:handler', './index.js', 'lib/util.js', 'bin/util.js', 'current/util.js:x', 'lib/deep/data.json']) {
    await t.resolves(env.store.assertEntrypoint(dir, ok), ok)
  }
  const notFound = [
    'missing.js', 'missing.js:handler', 'lib', 'lib/', 'outside/secret.js', 'outside.js',
  ]
  for (const ep of notFound) {
    await t.rejects(env.store.assertEntrypoint(dir, ep), { code: 'KDL_ERR_BAD_SPEC', message: `entrypoint "${ep}" not found in the code` }, ep)
  }
  const malformed = ['../index.js', 'lib/../../x.js', '/etc/passwd', '', ':handler', 'C:/x.js', 'index.js:not-an-identifier']
  for (const ep of malformed) {
    await t.rejects(env.store.assertEntrypoint(dir, ep), { code: 'KDL_ERR_BAD_SPEC' }, JSON.stringify(ep))
  }
  await t.rejects(env.store.assertEntrypoint(join(env.root, 'f'.repeat(64)), 'index.js'), { code: 'KDL_ERR_BAD_SPEC' }, 'missing dir')
})

t.test('remove and gc delete unreferenced code dirs only', async (t) => {
  const env = await setup(t)
  const a = await env.store.putInline('export default () => "a"')
  const b = await env.store.putInline('export default () => "b"')
  const c = await env.store.putInline('export default () => "c"')
  await mkdir(join(env.root, 'not-a-hash'))

  await env.store.remove(c.hash)
  t.notOk(await env.store.has(c.hash))
  await t.resolves(env.store.remove(c.hash), 'remove is idempotent')

  const stale = join(env.root, '.tmp', 'put-stale')
  const fresh = join(env.root, '.tmp', 'put-fresh')
  await mkdir(stale)
  await mkdir(fresh)
  const old = new Date(Date.now() - 2 * 3_600_000)
  await utimes(stale, old, old)

  const removed = await env.store.gc(new Set([a.hash]))
  t.same(removed, [b.hash])
  t.ok(await env.store.has(a.hash))
  t.notOk(await env.store.has(b.hash))
  t.ok((await lstat(join(env.root, 'not-a-hash'))).isDirectory(), 'names that are not hashes are left alone')
  t.same((await readdir(join(env.root, '.tmp'))).sort(), ['put-fresh'], 'stale temp leftovers swept, fresh kept')
  t.same(await new CodeStore({ root: join(env.base, 'nothing'), maxEntries: 1, maxUnpackedBytes: 1 }).gc(new Set()), [], 'gc of a missing root')
})

t.test('dirOf, has and remove refuse anything but a hash', async (t) => {
  const env = await setup(t)
  for (const bad of ['../etc', '', 'ABC', 'a'.repeat(63), `${'a'.repeat(64)}/..`]) {
    t.throws(() => env.store.dirOf(bad), { code: 'KDL_ERR_BAD_REQUEST' }, JSON.stringify(bad))
    await t.rejects(env.store.remove(bad), { code: 'KDL_ERR_BAD_REQUEST' })
  }
  t.notOk(await env.store.has('0'.repeat(64)))
})
