import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { lstat, mkdir, open, readdir, realpath, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join, sep } from 'node:path'
import { errorBody, KdlError } from '../../common/errors.js'
import { silent, type BackendLog } from '../docker/docker-common.js'

/** Options of a {@link CodeServer}. */
export interface CodeServerOptions {
  /** HMAC key of the tokens (at least 32 bytes; a random one per platform start is enough: grants live minutes). */
  secret: Buffer
  /** Directory the archives are written to (`<sha256>.tar`), created on first use. */
  workDir: string
  /** When set, grants refuse a code directory outside it (the code cache), as docker's prepareCode does. */
  codeRoot?: string
  /**
   * Archives kept in workDir, bytes: beyond it the least recently granted ones no live token can name are
   * removed (a later grant makes them again). @default 1_073_741_824
   */
  maxCacheBytes?: number
  /** How long a grant's token is accepted, ms. @default 300_000 */
  ttlMs?: number
  /** The clock tokens expire by (tests inject one). @default Date.now */
  now?: () => number
  /** Archives sent at once; further fetches wait their turn. @default 8 */
  maxTransfers?: number
  /** How long one transfer may take once started (a pod that reads too slowly is cut off and frees its turn), ms. @default 120_000 */
  transferTimeoutMs?: number
  /** Largest sum of file sizes of one code directory, bytes. @default 268_435_456 (KINDLING_MAX_UNPACKED_BYTES) */
  maxBytes?: number
  /** Most entries (files and directories) of one code directory. @default 200_000 */
  maxEntries?: number
  log?: BackendLog
}

/** What a pod needs to fetch its code: the request of `fetchCode` (protocol/runtime-client.ts) minus the instance. */
export interface CodeGrant {
  /** `<base>/code/<sha256>` */
  url: string
  sha256: string
  /** `Authorization: Bearer <token>` */
  token: string
  /** Size of the archive. */
  bytes: number
  /** Epoch ms after which the token is refused. */
  expiresAt: number
}

interface Archive {
  sha256: string
  path: string
  bytes: number
  /** When it was last granted (the server's clock): no token names it after this + ttl. */
  granted: number
}

/** One entry of a code directory as it goes into the archive. */
interface TreeEntry {
  /** Relative, `/`-separated, no trailing slash. */
  path: string
  kind: 'dir' | 'file'
  mode: number
  size: number
  /** Where the bytes are read from (a symlink's resolved target). */
  source: string
}

const URL_RE = /^\/code\/([0-9a-f]{64})$/
const BLOCK = 512
const FORBIDDEN = 'the token does not grant this archive to this instance'

const badTree = (message: string): KdlError => new KdlError('KDL_ERR_BAD_ARCHIVE', message)

/**
 * Code delivery into pods (issue 10): the platform serves each function's code as one archive over HTTP, and a
 * pod's runtime server fetches it (`POST /_/fetch`, runtimes/PROTOCOL.md §4.6), checks its sha256 and unpacks it
 * into its `/code` emptyDir before the load.
 *
 * Why a fetch step in the runtime and not a fetcher sidecar (the reference design's): one process per pod, so
 * a pod costs one Node floor (~44 MB) and one start, not two; no shared volume between a writer and a reader to
 * sequence (the sidecar would have to signal "done" across containers, and the runtime would have to trust
 * that signal); and the sha256 is checked by the same process that then loads the code, right before it does,
 * with nothing in between that could swap the files. The pod's emptyDir at `/code` is the only place it writes.
 *
 * What a pod may fetch: a grant is made for one instance and one archive; its token is an HMAC over the
 * instance id, the archive's sha256, an expiry (`ttlMs`, a few minutes) and the grant epoch of that instance,
 * so a pod holding it fetches that archive only, only under its own instance id (`x-kindling-instance`), only
 * until it expires, only once (a transfer takes the grant), and only while the grant stands (`revoke(instance)`
 * ends it at once). Every refusal is the
 * same `403 KDL_ERR_CODE_FORBIDDEN`; an unknown archive is `404 KDL_ERR_CODE_NOT_FOUND` only once the token
 * checked out, so the server is no oracle of which code it holds.
 *
 * The archive is a deterministic, uncompressed POSIX ustar of the code directory: entries sorted by path bytes,
 * directories 0755, files 0644 or 0755 (any exec bit), owner 0:0, mtime 0 — the same directory always gives the
 * same bytes, hence the same sha256. Symlinks are followed when they stay inside the directory (the pod receives
 * files and directories only, so its unpacker handles no link at all) and refused when they leave it.
 * Written here rather than with node-tar's `create` (which cluster/code-share.ts packs with): node-tar may add pax
 * headers (long or non-ASCII paths) and link entries, and the pod's unpacker (runtimes/node/untar.mjs, dependency-free
 * like every runtime file) accepts exactly this subset and refuses the rest.
 *
 * Plain tar rather than tar.gz, measured on a 0.95 MB function (the `yaml` package and `pino/lib`, ~250 files;
 * Node 20, a shared 2-CPU host, medians): gzip -6 shrinks it to 18 % (171 KB) for ~15 ms once per code version
 * and ~6 ms of gunzip in every pod. The plain archive crosses loopback in ~12 ms and a 1 Gbit/s link in ~8 ms, so
 * compression would save a pod about what its gunzip costs (at 10 Gbit/s plain wins outright), and the pod's
 * unpacker stays a small ustar reader with no inflate bound to get right. A pod's whole fetch (connect, download,
 * sha256, unpack) takes 70–80 ms there, ~35 ms of it unpacking the 250 files.
 */
export class CodeServer {
  readonly #secret: Buffer
  readonly #workDir: string
  readonly #ttlMs: number
  readonly #now: () => number
  readonly #maxTransfers: number
  readonly #transferTimeoutMs: number
  readonly #maxBytes: number
  readonly #maxEntries: number
  readonly #codeRoot: string | undefined
  readonly #maxCacheBytes: number
  readonly #log: BackendLog
  /** Per real code directory: the signature of its tree when archived, and the archive. */
  readonly #byDir = new Map<string, { signature: string; archive: Promise<Archive> }>()
  readonly #archives = new Map<string, Archive>()
  /**
   * Standing grants: instance → its epoch (in the token: a revoke voids tokens issued before) and, per sha256, the
   * expiry of the one token that is good for it (a transfer deletes it; a newer grant replaces it).
   */
  readonly #grants = new Map<string, { epoch: number; shas: Map<string, number> }>()
  #epochs = 0
  #lastSweep = 0
  #transfers = 0
  readonly #waiting: Array<() => void> = []
  #server: Server | undefined
  #base: string | undefined

  constructor(opts: CodeServerOptions) {
    if (opts.secret.length < 32) throw new KdlError('KDL_ERR_BAD_REQUEST', 'the code server secret must have at least 32 bytes')
    this.#secret = opts.secret
    this.#workDir = opts.workDir
    this.#ttlMs = opts.ttlMs ?? 300_000
    this.#now = opts.now ?? Date.now
    this.#maxTransfers = opts.maxTransfers ?? 8
    this.#transferTimeoutMs = opts.transferTimeoutMs ?? 120_000
    this.#maxBytes = opts.maxBytes ?? 256 * 1024 * 1024
    this.#maxEntries = opts.maxEntries ?? 200_000
    this.#codeRoot = opts.codeRoot
    this.#maxCacheBytes = opts.maxCacheBytes ?? 1024 * 1024 * 1024
    this.#log = opts.log ?? silent
  }

  /**
   * Listens; resolves the base URL pods fetch from: `http://<advertiseHost ?? host>:<port>`. A wildcard `host`
   * (`0.0.0.0`, `::`) needs `advertiseHost`, the address pods reach this process at (e.g. its pod IP).
   */
  async start({ host, port, advertiseHost }: { host: string; port: number; advertiseHost?: string }): Promise<string> {
    if (this.#server !== undefined) throw new KdlError('KDL_ERR_INTERNAL', 'the code server is already started')
    const shown = advertiseHost ?? host
    if (shown === '0.0.0.0' || shown === '::' || shown === '') {
      throw new KdlError('KDL_ERR_BAD_REQUEST', `the code server listens on "${host}": pods need advertiseHost, an address they can reach it at`)
    }
    await this.#sweepBuilds()
    const server = createServer((req, res) => { this.#onRequest(req, res) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => { server.off('error', reject); resolve() })
    })
    this.#server = server
    const addr = server.address() as AddressInfo
    this.#base = `http://${shown.includes(':') ? `[${shown}]` : shown}:${addr.port}`
    return this.#base
  }

  /**
   * Grants `instanceId` the code of `hostCodeDir`: archives the directory (once per version of its tree: a grant
   * of an unchanged directory costs a walk of its lstat()s) and signs a token for that archive and instance.
   */
  async grant(instanceId: string, hostCodeDir: string): Promise<CodeGrant> {
    if (this.#base === undefined) throw new KdlError('KDL_ERR_INTERNAL', 'the code server is not started')
    if (instanceId === '' || !/^[\x21-\x7e]{1,253}$/.test(instanceId)) {
      throw new KdlError('KDL_ERR_BAD_REQUEST', `instance id ${JSON.stringify(instanceId)} cannot travel in a header`)
    }
    const archive = await this.#archiveOf(hostCodeDir)
    const now = this.#now()
    archive.granted = now
    this.#sweep(now)
    await this.#evict(now)
    let grant = this.#grants.get(instanceId)
    if (grant === undefined) {
      grant = { epoch: ++this.#epochs, shas: new Map() }
      this.#grants.set(instanceId, grant)
    }
    const expiresAt = now + this.#ttlMs
    // The latest grant of an archive to an instance supersedes earlier ones (whose tokens may have been used).
    grant.shas.set(archive.sha256, expiresAt)
    const token = `v1.${expiresAt}.${grant.epoch}.${this.#mac(instanceId, archive.sha256, expiresAt, grant.epoch).toString('base64url')}`
    return { url: `${this.#base}/code/${archive.sha256}`, sha256: archive.sha256, token, bytes: archive.bytes, expiresAt }
  }

  /** Ends every grant of the instance at once: its tokens are refused from now on, even unexpired. */
  revoke(instanceId: string): void {
    this.#grants.delete(instanceId)
  }

  /** Archives being sent now, and fetches waiting for a turn. */
  transfers(): { active: number; waiting: number } {
    return { active: this.#transfers, waiting: this.#waiting.length }
  }

  /** Forgets an archive (its code was deleted): fetches of it answer 404 from now on; a later grant makes it again. */
  async drop(sha256: string): Promise<void> {
    const archive = this.#archives.get(sha256)
    if (archive === undefined) return
    this.#archives.delete(sha256)
    for (const [dir, known] of this.#byDir) if ((await known.archive.catch(() => undefined))?.sha256 === sha256) this.#byDir.delete(dir)
    // A transfer in flight keeps reading its open file.
    await rm(archive.path, { force: true })
  }

  /** Keeps the archives within maxCacheBytes: least recently granted first, never one a live token may name. */
  async #evict(now: number): Promise<void> {
    let total = 0
    for (const a of this.#archives.values()) total += a.bytes
    if (total <= this.#maxCacheBytes) return
    const idle = [...this.#archives.values()].filter((a) => a.granted + this.#ttlMs <= now).sort((a, b) => a.granted - b.granted)
    for (const a of idle) {
      if (total <= this.#maxCacheBytes) break
      total -= a.bytes
      await this.drop(a.sha256)
      this.#log.info({ sha256: a.sha256, bytes: a.bytes }, 'code archive evicted')
    }
  }

  /** Stops listening and drops every connection (a transfer in flight is cut). */
  async close(): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    this.#base = undefined
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeAllConnections()
    await closed
  }

  /** Removes half-written archives a crash left in workDir. */
  async #sweepBuilds(): Promise<void> {
    let names: string[]
    try {
      names = await readdir(this.#workDir)
    } catch {
      return
    }
    for (const name of names) if (name.startsWith('.build-')) await rm(join(this.#workDir, name), { force: true })
  }

  #mac(instance: string, sha256: string, expiresAt: number, epoch: number): Buffer {
    return createHmac('sha256', this.#secret).update(`kindling-code/1\0${instance}\0${sha256}\0${expiresAt}\0${epoch}`).digest()
  }

  /** Why a request may not have the archive, or undefined when it may. */
  #refusal(instance: string, sha256: string, token: string): string | undefined {
    const parts = token.split('.')
    if (parts.length !== 4 || parts[0] !== 'v1' || !/^\d{1,16}$/.test(parts[1] ?? '') || !/^\d{1,16}$/.test(parts[2] ?? '')) return 'malformed token'
    const expiresAt = Number(parts[1])
    const epoch = Number(parts[2])
    const mac = Buffer.from(parts[3] ?? '', 'base64url')
    const expected = this.#mac(instance, sha256, expiresAt, epoch)
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return 'token not signed for this instance and archive'
    if (expiresAt <= this.#now()) return 'token expired'
    const grant = this.#grants.get(instance)
    if (grant === undefined || grant.epoch !== epoch) return 'grant revoked'
    if (grant.shas.get(sha256) !== expiresAt) return 'token used or superseded'
    return undefined
  }

  /** Forgets grants whose tokens have all expired (at most once a ttl). */
  #sweep(now: number): void {
    if (now - this.#lastSweep < this.#ttlMs) return
    this.#lastSweep = now
    for (const [instance, grant] of this.#grants) {
      for (const [sha, expiresAt] of grant.shas) if (expiresAt <= now) grant.shas.delete(sha)
      if (grant.shas.size === 0) this.#grants.delete(instance)
    }
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    req.resume()
    const m = URL_RE.exec(req.url ?? '')
    const sha256 = m?.[1]
    const instance = req.headers['x-kindling-instance']
    const auth = req.headers.authorization
    let why: string | undefined
    if (req.method !== 'GET' || sha256 === undefined) why = 'not GET /code/<sha256>'
    else if (typeof instance !== 'string' || instance === '') why = 'no x-kindling-instance'
    else if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) why = 'no bearer token'
    else why = this.#refusal(instance, sha256, auth.slice(7))
    if (why !== undefined) {
      this.#log.info({ instance, reason: why }, 'code fetch refused')
      return sendError(res, new KdlError('KDL_ERR_CODE_FORBIDDEN', FORBIDDEN))
    }
    const archive = this.#archives.get(sha256 as string)
    if (archive === undefined) return sendError(res, new KdlError('KDL_ERR_CODE_NOT_FOUND', `no archive ${sha256 as string} on this code server`))
    // A token is good for one transfer: taken now, so that two requests with it cannot both pass.
    this.#grants.get(instance as string)?.shas.delete(archive.sha256)
    void this.#send(res, archive, instance as string)
  }

  async #send(res: ServerResponse, archive: Archive, instance: string): Promise<void> {
    // Opened before waiting for a turn: an archive dropped or evicted meanwhile is still sent whole.
    let file: FileHandle
    try {
      file = await open(archive.path, 'r')
    } catch (err) {
      this.#log.error({ err, instance, sha256: archive.sha256 }, 'code archive unreadable')
      return sendError(res, new KdlError('KDL_ERR_INTERNAL', 'the archive cannot be read'))
    }
    await this.#acquire()
    if (res.destroyed) {
      this.#release()
      await file.close()
      return
    }
    const started = Date.now()
    const deadline = setTimeout(() => {
      this.#log.warn({ instance, sha256: archive.sha256, ms: this.#transferTimeoutMs }, 'code transfer cut: too slow')
      res.destroy()
    }, this.#transferTimeoutMs)
    const body = file.createReadStream()
    res.once('close', () => {
      clearTimeout(deadline)
      body.destroy()
      this.#release()
    })
    body.once('error', (err) => {
      this.#log.error({ err, instance, sha256: archive.sha256 }, 'code archive unreadable')
      res.destroy()
    })
    res.once('finish', () => this.#log.debug({ instance, sha256: archive.sha256, bytes: archive.bytes, ms: Date.now() - started }, 'code sent'))
    res.writeHead(200, { 'content-type': 'application/x-tar', 'content-length': archive.bytes, 'cache-control': 'no-store' })
    body.pipe(res)
  }

  #acquire(): Promise<void> {
    if (this.#transfers < this.#maxTransfers) {
      this.#transfers++
      return Promise.resolve()
    }
    return new Promise((resolve) => this.#waiting.push(resolve))
  }

  #release(): void {
    const next = this.#waiting.shift()
    if (next !== undefined) next()
    else this.#transfers--
  }

  /** The archive of a code directory's current tree: reused while the tree's lstat()s are unchanged. */
  async #archiveOf(hostCodeDir: string): Promise<Archive> {
    let root: string
    let codeRoot: string | undefined
    try {
      root = await realpath(hostCodeDir)
      if (!(await stat(root)).isDirectory()) throw new Error('not a directory')
      codeRoot = this.#codeRoot === undefined ? undefined : await realpath(this.#codeRoot)
    } catch (err) {
      throw new KdlError('KDL_ERR_BACKEND', `code directory ${hostCodeDir} cannot be read: ${(err as Error).message}`, { cause: err })
    }
    if (codeRoot !== undefined && !root.startsWith(codeRoot + sep)) {
      throw new KdlError('KDL_ERR_BACKEND', `code directory ${hostCodeDir} is outside the code root ${this.#codeRoot as string}`)
    }
    const { entries, signature } = await this.#walk(root)
    const known = this.#byDir.get(root)
    if (known !== undefined && known.signature === signature) return known.archive
    const archive = this.#build(entries)
    this.#byDir.set(root, { signature, archive })
    archive.catch(() => { if (this.#byDir.get(root)?.archive === archive) this.#byDir.delete(root) })
    return archive
  }

  /** Lists the tree sorted by path bytes (parents first), following symlinks that stay inside `root`. */
  async #walk(root: string): Promise<{ entries: TreeEntry[]; signature: string }> {
    const entries: TreeEntry[] = []
    const sig = createHash('sha256').update(`${root}\n`)
    let total = 0
    const visit = async (realDir: string, rel: string, chain: Set<string>): Promise<void> => {
      for (const name of await readdir(realDir)) {
        const path = rel === '' ? name : `${rel}/${name}`
        let source = join(realDir, name)
        let st = await lstat(source, { bigint: true })
        if (st.isSymbolicLink()) {
          let target: string
          try {
            target = await realpath(source)
          } catch {
            throw badTree(`symlink "${path}" of the code directory dangles`)
          }
          if (target !== root && !target.startsWith(root + sep)) throw badTree(`symlink "${path}" leaves the code directory`)
          source = target
          st = await stat(target, { bigint: true })
        }
        if (entries.length >= this.#maxEntries) throw badTree(`the code directory has more than ${this.#maxEntries} entries`)
        sig.update(`${path}\0${st.mode}\0${st.size}\0${st.mtimeNs}\0${st.ctimeNs}\0${st.ino}\0${st.dev}\n`)
        if (st.isDirectory()) {
          if (chain.has(source)) throw badTree(`symlink "${path}" makes a loop`)
          entries.push({ path, kind: 'dir', mode: 0o755, size: 0, source })
          await visit(source, path, new Set(chain).add(source))
        } else if (st.isFile()) {
          const size = Number(st.size)
          total += size
          if (total > this.#maxBytes) throw badTree(`the code directory holds more than ${this.#maxBytes} bytes`)
          entries.push({ path, kind: 'file', mode: (Number(st.mode) & 0o111) !== 0 ? 0o755 : 0o644, size, source })
        } else {
          throw badTree(`"${path}" of the code directory is not a file, directory or symlink`)
        }
      }
    }
    await visit(root, '', new Set([root]))
    entries.sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)))
    return { entries, signature: sig.digest('hex') }
  }

  /** Writes the ustar to a temp file while hashing it, then renames it to `<sha256>.tar`. */
  async #build(entries: TreeEntry[]): Promise<Archive> {
    await mkdir(this.#workDir, { recursive: true, mode: 0o700 })
    const tmp = join(this.#workDir, `.build-${randomBytes(8).toString('hex')}.tar`)
    const fh = await open(tmp, 'wx', 0o600)
    const out = new HashingWriter(fh)
    try {
      for (const e of entries) {
        await out.write(header(e))
        if (e.kind === 'file') await copyFileInto(out, e)
      }
      await out.write(Buffer.alloc(2 * BLOCK))
      await out.flush()
    } catch (err) {
      await fh.close()
      await rm(tmp, { force: true })
      throw err
    }
    await fh.close()
    const sha256 = out.hash.digest('hex')
    const path = join(this.#workDir, `${sha256}.tar`)
    await rename(tmp, path)
    const archive = { sha256, path, bytes: out.bytes, granted: this.#now() }
    this.#archives.set(sha256, archive)
    this.#log.info({ sha256, bytes: out.bytes, entries: entries.length }, 'code archive made')
    return archive
  }
}

function sendError(res: ServerResponse, err: KdlError): void {
  const body = JSON.stringify(errorBody(err))
  res.writeHead(err.statusCode, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

/** Buffers writes into 1 MiB chunks and hashes what it writes. */
class HashingWriter {
  readonly hash = createHash('sha256')
  bytes = 0
  readonly #fh: FileHandle
  #buf = Buffer.allocUnsafe(1 << 20)
  #used = 0

  constructor(fh: FileHandle) {
    this.#fh = fh
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.#used + chunk.length > this.#buf.length) await this.flush()
    if (chunk.length > this.#buf.length) return this.#put(chunk)
    chunk.copy(this.#buf, this.#used)
    this.#used += chunk.length
  }

  async flush(): Promise<void> {
    if (this.#used === 0) return
    const data = this.#buf.subarray(0, this.#used)
    await this.#put(data)
    this.#buf = Buffer.allocUnsafe(this.#buf.length)
    this.#used = 0
  }

  async #put(data: Buffer): Promise<void> {
    this.hash.update(data)
    this.bytes += data.length
    let off = 0
    while (off < data.length) off += (await this.#fh.write(data, off, data.length - off)).bytesWritten
  }
}

/** Copies exactly `e.size` bytes and the padding; a file that changed size meanwhile fails the archive. */
async function copyFileInto(out: HashingWriter, e: TreeEntry): Promise<void> {
  const src = await open(e.source, 'r')
  try {
    const chunk = Buffer.allocUnsafe(Math.min(1 << 20, Math.max(e.size, 1)))
    let done = 0
    while (done < e.size) {
      const { bytesRead } = await src.read(chunk, 0, Math.min(chunk.length, e.size - done), done)
      if (bytesRead === 0) break
      await out.write(chunk.subarray(0, bytesRead))
      done += bytesRead
    }
    const { bytesRead: more } = await src.read(Buffer.alloc(1), 0, 1, done)
    if (done !== e.size || more !== 0) throw new KdlError('KDL_ERR_BACKEND', `"${e.path}" of the code directory changed while it was archived`)
    const pad = (BLOCK - (e.size % BLOCK)) % BLOCK
    if (pad > 0) await out.write(Buffer.alloc(pad))
  } finally {
    await src.close()
  }
}

/** A POSIX ustar header (`ustar\0` `00`): owner 0:0, mtime 0, the path split over prefix/name when over 100 bytes. */
function header(e: TreeEntry): Buffer {
  const h = Buffer.alloc(BLOCK)
  const full = e.kind === 'dir' ? `${e.path}/` : e.path
  const [prefix, name] = splitPath(full)
  h.write(name, 0, 100, 'utf8')
  octal(h, 100, 8, e.mode)
  octal(h, 108, 8, 0)
  octal(h, 116, 8, 0)
  octal(h, 124, 12, e.kind === 'file' ? e.size : 0)
  octal(h, 136, 12, 0)
  h.write(e.kind === 'file' ? '0' : '5', 156, 1, 'latin1')
  h.write('ustar\u000000', 257, 8, 'latin1')
  h.write(prefix, 345, 155, 'utf8')
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of h) sum += byte
  h.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8, 'latin1')
  return h
}

function octal(h: Buffer, at: number, width: number, value: number): void {
  const digits = value.toString(8)
  if (digits.length > width - 1) throw badTree(`a value of ${value} does not fit a ustar header`)
  h.write(`${digits.padStart(width - 1, '0')}\u0000`, at, width, 'latin1')
}

/** `[prefix, name]` with name ≤ 100 and prefix ≤ 155 bytes, split at a `/`; paths that do not fit are refused. */
function splitPath(path: string): [string, string] {
  const bytes = Buffer.byteLength(path)
  if (bytes <= 100) return ['', path]
  // A directory's trailing `/` belongs to the name part.
  const body = path.endsWith('/') ? path.slice(0, -1) : path
  for (let i = body.indexOf('/'); i !== -1; i = body.indexOf('/', i + 1)) {
    const prefix = body.slice(0, i)
    const name = path.slice(i + 1)
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100 && name !== '' && name !== '/') return [prefix, name]
  }
  throw badTree(`the path "${path}" is too long for a ustar archive (at most 255 bytes, split at a "/")`)
}
