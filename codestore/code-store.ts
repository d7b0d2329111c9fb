import { createHash, randomBytes } from 'node:crypto'
import { chmod, copyFile, link, lstat, mkdir, mkdtemp, readdir, readlink, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { constants as fsConstants } from 'node:fs'
import { constants as bufferConstants } from 'node:buffer'
import { join, sep } from 'node:path'
import { promisify } from 'node:util'
import { gunzip } from 'node:zlib'
import { Parser, type ReadEntry } from 'tar'
import { KdlError } from '../common/errors.js'

const gunzipAsync = promisify(gunzip)

/** sha256 hex: the only shape a code directory name may have. */
const HASH_RE = /^[0-9a-f]{64}$/
const EXPORT_RE = /^[A-Za-z_$][\w$]*$/
const TMP = '.tmp'
/** Symlink hops followed while resolving one link target (Linux uses 40 too). */
const MAX_LINK_HOPS = 40
/** Tar framing (headers, padding, pax records) allowed on top of maxUnpackedBytes when inflating. */
const FRAMING_PER_ENTRY = 4096
const FRAMING_SLACK = 1024 * 1024

export interface CodeStoreOptions {
  /** Host directory holding one sub-directory per code hash, plus `.tmp/` for unpacking. Created on first put. */
  root: string
  /** Largest sum of file sizes an archive may unpack to, in bytes. */
  maxUnpackedBytes: number
  /** Largest number of entries (files, directories, links) an archive may hold. */
  maxEntries: number
  /** `gc()` removes leftovers under `root/.tmp/` (from a crash mid-put) older than this. @default 3_600_000 */
  staleTmpMs?: number
}

/** Where a piece of code landed: its content hash and its directory (`root/<hash>`). */
export interface StoredCode {
  hash: string
  dir: string
}

/** One validated archive entry, in archive order; paths are normalised (no `./`, no trailing `/`). */
type Planned =
  | { kind: 'dir'; path: string }
  | { kind: 'file'; path: string; mode: number; body: Buffer }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'hardlink'; path: string; target: string }

const badArchive = (message: string, cause?: unknown): KdlError =>
  new KdlError('KDL_ERR_BAD_ARCHIVE', message, cause === undefined ? {} : { cause })

/**
 * Content-addressed code cache on the host: `root/<sha256>/` holds the code of one deploy, read-only in
 * spirit (dirs 0755, files 0644/0755) so any instance uid (65534 included) can read it.
 *
 * Archives are `.tar.gz` whose root is the code root: a single top-level directory is NOT stripped, so an
 * archive made with `tar czf code.tgz myfn/` needs the entrypoint `myfn/index.js`. Every entry is checked
 * before anything is written; a hostile entry rejects the whole archive (never sanitised).
 */
export class CodeStore {
  readonly #root: string
  readonly #maxUnpackedBytes: number
  readonly #maxEntries: number
  readonly #staleTmpMs: number
  /** Hashes being put right now; gc() leaves them alone even when the caller's keep set lacks them. */
  readonly #inflight = new Map<string, number>()

  constructor(options: CodeStoreOptions) {
    this.#root = options.root
    this.#maxUnpackedBytes = options.maxUnpackedBytes
    this.#maxEntries = options.maxEntries
    this.#staleTmpMs = options.staleTmpMs ?? 3_600_000
  }

  /** Stores an inline ES module as `index.mjs`; the hash covers a canonical form (`'inline\0' + code`). */
  async putInline(code: string): Promise<StoredCode> {
    const hash = createHash('sha256').update('inline\0').update(code).digest('hex')
    return this.#put(hash, async (dir) => {
      const file = join(dir, 'index.mjs')
      await writeFile(file, code, { flag: 'wx', mode: 0o644 })
      await chmod(file, 0o644)
    })
  }

  /**
   * Validates and unpacks a `.tar.gz`. The hash covers the tree the archive unpacks to (paths, kinds, the
   * normalised modes, contents, link targets), not the archive bytes: the same directory packed again — another
   * entry order, other mtimes or owners, another gzip — is the same code (issue 14: `kindling apply` tells
   * unchanged code from changed code by this hash).
   */
  async putArchive(archive: Buffer): Promise<StoredCode> {
    const planned = await this.#inspect(archive)
    const hash = treeHash(planned)
    if (await this.has(hash)) return { hash, dir: this.dirOf(hash) }
    return this.#put(hash, (dir) => writeTree(dir, planned))
  }

  /**
   * Stores an archive under a hash the caller vouches for (issue 11: code another replica deployed, fetched from
   * the shared store, whose hash may be of code assembled with its build): every entry is checked as in
   * putArchive; `maxEntries` may exceed the deploy limit (a build's node_modules).
   */
  async putArchiveAs(hash: string, archive: Buffer, maxEntries = this.#maxEntries): Promise<StoredCode> {
    if (await this.has(hash)) return { hash, dir: this.dirOf(hash) }
    const planned = await this.#inspect(archive, maxEntries)
    return this.#put(hash, (dir) => writeTree(dir, planned))
  }

  /**
   * Stores the union of directories under `hash` (a hash the caller derives from what they hold, e.g. code +
   * build): every file hard-linked (copied across file systems), symlinks recreated, never followed. A name in
   * two sources is refused.
   */
  async putLinked(hash: string, sources: readonly string[]): Promise<StoredCode> {
    return this.#put(hash, async (dir) => { for (const src of sources) await linkTree(src, dir) })
  }

  /** The directory of a hash (whether or not it exists). Throws KDL_ERR_BAD_REQUEST for a non-hash. */
  dirOf(hash: string): string {
    if (!HASH_RE.test(hash)) throw new KdlError('KDL_ERR_BAD_REQUEST', `"${hash}" is not a code hash (64 lower-case hex digits)`)
    return join(this.#root, hash)
  }

  async has(hash: string): Promise<boolean> {
    try {
      return (await lstat(this.dirOf(hash))).isDirectory()
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false
      throw err
    }
  }

  /**
   * Checks that `entrypoint` (`file` or `file:export`) names a regular file inside `dir`, after resolving
   * symlinks. Throws KDL_ERR_BAD_SPEC otherwise.
   */
  async assertEntrypoint(dir: string, entrypoint: string): Promise<void> {
    const colon = entrypoint.lastIndexOf(':')
    const file = colon === -1 ? entrypoint : entrypoint.slice(0, colon)
    const exportName = colon === -1 ? undefined : entrypoint.slice(colon + 1)
    if (exportName !== undefined && !EXPORT_RE.test(exportName)) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `entrypoint "${entrypoint}" names an invalid export "${exportName}"`)
    }
    const problem = pathProblem(file)
    if (problem !== undefined || normalise(file) === '') {
      throw new KdlError('KDL_ERR_BAD_SPEC', `entrypoint "${entrypoint}" must be a relative file path inside the code${problem === undefined ? '' : ` (${problem})`}`)
    }
    const notFound = new KdlError('KDL_ERR_BAD_SPEC', `entrypoint "${entrypoint}" not found in the code`)
    let base: string
    let real: string
    try {
      base = await realpath(dir)
      real = await realpath(join(base, file))
    } catch {
      throw notFound
    }
    if (!real.startsWith(base + sep)) throw notFound
    if (!(await stat(real)).isFile()) throw notFound
  }

  /** Removes one code directory (idempotent). The directory vanishes under its name at once. */
  async remove(hash: string): Promise<void> {
    const dir = this.dirOf(hash)
    const tmp = join(this.#root, TMP, `rm-${hash}-${randomBytes(6).toString('hex')}`)
    await mkdir(join(this.#root, TMP), { recursive: true })
    try {
      await rename(dir, tmp)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return
      throw err
    }
    await rm(tmp, { recursive: true, force: true })
  }

  /**
   * Removes every code directory whose hash is not in `keep` nor being put right now, and leftovers in
   * `.tmp/` older than `staleTmpMs`. Names that are not hashes are never touched. Resolves the removed hashes.
   */
  async gc(keep: Set<string>): Promise<string[]> {
    let names: string[]
    try {
      names = await readdir(this.#root)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return []
      throw err
    }
    const removed: string[] = []
    for (const name of names) {
      if (!HASH_RE.test(name) || keep.has(name) || this.#inflight.has(name)) continue
      await this.remove(name)
      removed.push(name)
    }
    await this.#sweepTmp()
    return removed
  }

  async #sweepTmp(): Promise<void> {
    const tmpRoot = join(this.#root, TMP)
    let names: string[]
    try {
      names = await readdir(tmpRoot)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return
      throw err
    }
    const cutoff = Date.now() - this.#staleTmpMs
    for (const name of names) {
      try {
        if ((await lstat(join(tmpRoot, name))).mtimeMs < cutoff) await rm(join(tmpRoot, name), { recursive: true, force: true })
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err
      }
    }
  }

  /** Fills a fresh temp dir, normalises its mode, renames it to `root/<hash>`; an existing one wins. */
  async #put(hash: string, fill: (dir: string) => Promise<void>): Promise<StoredCode> {
    const final = this.dirOf(hash)
    this.#inflight.set(hash, (this.#inflight.get(hash) ?? 0) + 1)
    let tmp: string | undefined
    try {
      if (await this.has(hash)) return { hash, dir: final }
      await mkdir(this.#root, { recursive: true, mode: 0o755 })
      await mkdir(join(this.#root, TMP), { recursive: true, mode: 0o700 })
      tmp = await mkdtemp(join(this.#root, TMP, `put-${hash.slice(0, 12)}-`))
      try {
        await fill(tmp)
      } catch (err) {
        if ((err as { code?: unknown }).code === 'KDL_ERR_BAD_ARCHIVE') throw err
        if (isErrno(err, 'ENAMETOOLONG') || isErrno(err, 'EEXIST') || isErrno(err, 'ENOTDIR') || isErrno(err, 'EISDIR')) {
          throw badArchive(`archive entry cannot be unpacked: ${(err as Error).message}`, err)
        }
        throw new KdlError('KDL_ERR_INTERNAL', 'writing code to the code cache failed', { cause: err })
      }
      // mkdtemp makes 0700; instances run as another uid and must traverse the code root.
      await chmod(tmp, 0o755)
      try {
        await rename(tmp, final)
        tmp = undefined
      } catch (err) {
        // Same content landed first (an earlier or concurrent deploy): keep that one.
        if (!(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST'))) throw err
      }
      return { hash, dir: final }
    } finally {
      if (tmp !== undefined) await rm(tmp, { recursive: true, force: true })
      const n = (this.#inflight.get(hash) ?? 1) - 1
      if (n === 0) this.#inflight.delete(hash)
      else this.#inflight.set(hash, n)
    }
  }

  /** Inflates (bounded) and lists every entry; throws KDL_ERR_BAD_ARCHIVE before anything is written. */
  async #inspect(archive: Buffer, maxEntries = this.#maxEntries): Promise<Planned[]> {
    if (archive.length < 18 || archive[0] !== 0x1f || archive[1] !== 0x8b || archive[2] !== 0x08) {
      throw badArchive('archive is not gzip-compressed (a .tar.gz is required)')
    }
    const limit = Math.min(bufferConstants.MAX_LENGTH, this.#maxUnpackedBytes + maxEntries * FRAMING_PER_ENTRY + FRAMING_SLACK)
    let tar: Buffer
    try {
      tar = await gunzipAsync(archive, { maxOutputLength: limit })
    } catch (err) {
      if (isErrno(err, 'ERR_BUFFER_TOO_LARGE')) {
        throw badArchive(`archive unpacks to more than maxUnpackedBytes (${this.#maxUnpackedBytes} bytes)`, err)
      }
      throw badArchive(`archive is not valid gzip data: ${(err as Error).message}`, err)
    }
    // The tar parser would silently inflate a second gzip/zstd layer, outside the size bound above.
    if ((tar[0] === 0x1f && tar[1] === 0x8b) || (tar[0] === 0x28 && tar[1] === 0xb5 && tar[2] === 0x2f && tar[3] === 0xfd)) {
      throw badArchive('archive is compressed twice')
    }
    const planned = await parseTar(tar, maxEntries, this.#maxUnpackedBytes)
    if (planned.length === 0) throw badArchive('archive holds no entries')
    checkTree(planned)
    return planned
  }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code
}

/** Why a tar path (or hard link target) is unacceptable, or undefined when it is a plain relative path. */
function pathProblem(raw: string): string | undefined {
  if (raw.includes('\0')) return 'contains a NUL byte'
  if (raw.includes('\\')) return 'contains a backslash'
  if (/^[A-Za-z]:/.test(raw)) return 'is a Windows drive path'
  if (raw.startsWith('/')) return 'is an absolute path'
  if (raw.split('/').includes('..')) return 'contains a ".." segment'
  return undefined
}

/** `./a//b/` → `a/b`; the archive root itself is `''`. */
function normalise(raw: string): string {
  return raw.split('/').filter((s) => s !== '' && s !== '.').join('/')
}

function parseTar(tar: Buffer, maxEntries: number, maxUnpackedBytes: number): Promise<Planned[]> {
  return new Promise<Planned[]>((resolve, reject) => {
    const planned: Planned[] = []
    const seen = new Map<string, Planned['kind']>()
    let failure: KdlError | undefined
    let settled = false
    let count = 0
    let total = 0
    const parser = new Parser({ strict: true, brotli: false, zstd: false })

    const settle = (err: KdlError | undefined): void => {
      if (settled) return
      settled = true
      if (err === undefined) resolve(planned)
      else reject(err)
    }
    const fail = (message: string): void => {
      failure ??= badArchive(message)
      // A separate Error: abort() decorates what it is given with tar's own fields.
      parser.abort(new Error(message))
    }

    const onEntry = (entry: ReadEntry): void => {
      if (failure !== undefined) {
        entry.resume()
        return
      }
      const name = JSON.stringify(entry.path)
      if (++count > maxEntries) return fail(`archive has more than maxEntries (${maxEntries}) entries`)
      const problem = pathProblem(entry.path)
      if (problem !== undefined) return fail(`entry ${name} ${problem}`)
      const path = normalise(entry.path)
      let item: Planned
      switch (entry.type) {
        case 'File':
        case 'OldFile':
        case 'ContiguousFile': {
          total += entry.size
          if (total > maxUnpackedBytes) return fail(`archive unpacks to more than maxUnpackedBytes (${maxUnpackedBytes} bytes) at entry ${name}`)
          item = { kind: 'file', path, mode: (entry.mode ?? 0o644) & 0o111 ? 0o755 : 0o644, body: Buffer.alloc(0) }
          break
        }
        case 'Directory':
          item = { kind: 'dir', path }
          break
        case 'SymbolicLink': {
          const target = entry.linkpath ?? ''
          if (target.startsWith('/') || /^[A-Za-z]:/.test(target)) return fail(`symlink ${name} has the absolute target ${JSON.stringify(target)}`)
          if (target.includes('\\') || target.includes('\0')) return fail(`symlink ${name} has a target with a backslash or NUL`)
          item = { kind: 'symlink', path, target }
          break
        }
        case 'Link': {
          const raw = entry.linkpath ?? ''
          const bad = pathProblem(raw)
          if (bad !== undefined || normalise(raw) === '') return fail(`hard link ${name} has the target ${JSON.stringify(raw)}, which is not a plain in-archive path`)
          item = { kind: 'hardlink', path, target: normalise(raw) }
          break
        }
        case 'CharacterDevice':
          return fail(`entry ${name} is a character device`)
        case 'BlockDevice':
          return fail(`entry ${name} is a block device`)
        case 'FIFO':
          return fail(`entry ${name} is a FIFO`)
        default:
          return fail(`entry ${name} has the unsupported type ${entry.type}`)
      }
      if (path === '') {
        if (item.kind !== 'dir') return fail(`entry ${name} replaces the archive root`)
        entry.resume()
        return
      }
      const before = seen.get(path)
      if (before !== undefined && !(before === 'dir' && item.kind === 'dir')) return fail(`entry ${name} appears more than once`)
      seen.set(path, item.kind)
      if (item.kind === 'dir' && before === 'dir') {
        entry.resume()
        return
      }
      planned.push(item)
      if (item.kind === 'file') {
        const file = item
        const chunks: Buffer[] = []
        // 'end' first: adding a 'data' listener resumes the entry, which may end it synchronously.
        entry.on('end', () => { file.body = Buffer.concat(chunks) })
        entry.on('data', (c: Buffer) => chunks.push(c))
      } else {
        entry.resume()
      }
    }

    parser.on('entry', onEntry)
    parser.on('ignoredEntry', (entry: ReadEntry) => {
      fail(entry.meta ? `archive has an oversized ${entry.type} header near ${JSON.stringify(entry.path)}` : `entry ${JSON.stringify(entry.path)} has the unsupported type ${entry.type}`)
    })
    parser.on('error', (err: Error) => settle(failure ?? badArchive(`archive is not a valid tar: ${err.message}`, err)))
    parser.on('end', () => settle(failure))
    parser.end(tar)
  })
}

/** Whole-archive rules: nothing under a symlink or a file, hard links to earlier files, symlinks stay inside. */
function checkTree(planned: Planned[]): void {
  const byPath = new Map<string, { item: Planned; index: number }>()
  planned.forEach((item, index) => byPath.set(item.path, { item, index }))
  const links = new Map<string, string>()
  for (const item of planned) if (item.kind === 'symlink') links.set(item.path, item.target)

  planned.forEach((item, index) => {
    const parts = item.path.split('/')
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join('/')
      const kind = byPath.get(prefix)?.item.kind
      if (kind === 'symlink') throw badArchive(`entry "${item.path}" would be written through the symlink "${prefix}"`)
      if (kind === 'file' || kind === 'hardlink') throw badArchive(`entry "${item.path}" lies under the file "${prefix}"`)
    }
    if (item.kind === 'hardlink') {
      const target = byPath.get(item.target)
      if (target === undefined || target.index >= index || (target.item.kind !== 'file' && target.item.kind !== 'hardlink')) {
        throw badArchive(`hard link "${item.path}" -> "${item.target}" does not point to a regular file earlier in the archive`)
      }
    }
    if (item.kind === 'symlink') resolveInside(item.path, item.target, links)
  })
}

/** Resolves a symlink the way the kernel would, through the archive's other symlinks; throws when it leaves the root. */
function resolveInside(linkPath: string, target: string, links: Map<string, string>): void {
  const parts = linkPath.split('/').slice(0, -1)
  const pending = target.split('/')
  let hops = 0
  for (let seg = pending.shift(); seg !== undefined; seg = pending.shift()) {
    if (seg === '' || seg === '.') continue
    if (seg === '..') {
      if (parts.length === 0) throw badArchive(`symlink "${linkPath}" -> "${target}" points outside the archive`)
      parts.pop()
      continue
    }
    parts.push(seg)
    const next = links.get(parts.join('/'))
    if (next === undefined) continue
    if (++hops > MAX_LINK_HOPS) throw badArchive(`symlink "${linkPath}" -> "${target}" is part of a symlink loop`)
    parts.pop()
    pending.unshift(...next.split('/'))
  }
}

/**
 * sha256 of a canonical listing of the tree validated entries unpack to: every directory (explicit or implied),
 * file (mode as written: 0644 or 0755; a hard link counts as a file with its target's content) and symlink,
 * sorted by path.
 */
function treeHash(planned: Planned[]): string {
  const files = new Map<string, { mode: number; body: Buffer }>()
  const lines = new Map<string, string>()
  const addParents = (path: string): void => {
    const parts = path.split('/')
    for (let i = 1; i < parts.length; i++) lines.set(parts.slice(0, i).join('/'), 'dir')
  }
  for (const item of planned) {
    addParents(item.path)
    if (item.kind === 'dir') lines.set(item.path, 'dir')
    else if (item.kind === 'symlink') lines.set(item.path, `symlink\0${item.target}`)
    else {
      const file = item.kind === 'file' ? item : files.get(item.target)
      // checkTree guarantees a hard link's target is an earlier file; the fallback is never taken.
      if (file === undefined) throw badArchive(`hard link "${item.path}" has no target`)
      files.set(item.path, file)
      lines.set(item.path, `file\0${file.mode.toString(8)}\0${createHash('sha256').update(file.body).digest('hex')}`)
    }
  }
  const h = createHash('sha256').update('kindling-tree/1\n')
  for (const path of [...lines.keys()].sort()) h.update(path).update('\0').update(lines.get(path) ?? '').update('\n')
  return h.digest('hex')
}

/** Writes validated entries: directories, then files, then hard links, and symlinks last so nothing is written through one. */
async function linkTree(src: string, dst: string): Promise<void> {
  for (const e of await readdir(src, { withFileTypes: true })) {
    const from = join(src, e.name)
    const to = join(dst, e.name)
    if (e.isDirectory()) {
      await mkdir(to, { mode: 0o755 }).catch((err: unknown) => { if (!isErrno(err, 'EEXIST')) throw err })
      await linkTree(from, to)
    } else if (e.isSymbolicLink()) {
      await symlink(await readlink(from), to)
    } else if (e.isFile()) {
      try {
        await link(from, to)
      } catch (err) {
        if (!isErrno(err, 'EXDEV') && !isErrno(err, 'EPERM')) throw err
        await copyFile(from, to, fsConstants.COPYFILE_EXCL)
      }
    }
  }
}

async function writeTree(root: string, planned: Planned[]): Promise<void> {
  const dirs = new Set<string>()
  for (const item of planned) {
    const parts = item.path.split('/')
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
    if (item.kind === 'dir') dirs.add(item.path)
  }
  for (const dir of [...dirs].sort((a, b) => a.split('/').length - b.split('/').length)) {
    await mkdir(join(root, dir), { mode: 0o755 })
    await chmod(join(root, dir), 0o755)
  }
  for (const item of planned) {
    if (item.kind !== 'file') continue
    // 'wx' is O_CREAT|O_EXCL: it never follows or overwrites an existing path.
    await writeFile(join(root, item.path), item.body, { flag: 'wx', mode: item.mode })
    await chmod(join(root, item.path), item.mode)
  }
  for (const item of planned) if (item.kind === 'hardlink') await link(join(root, item.target), join(root, item.path))
  for (const item of planned) if (item.kind === 'symlink') await symlink(item.target, join(root, item.path))
}
