import { createHash, randomBytes } from 'node:crypto'
import { chmod, lchown, lstat, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { CodeStore, StoredCode } from '../codestore/code-store.js'
import type { BuildJob, BuildJobResult } from '../common/backend.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import { BuildLog } from './build-log.js'
import { RegistryProxy } from './registry-proxy.js'

/** What a build is, as `GET /v1/builds/:id` shows it. */
export interface BuildRecord {
  id: string
  /** sha256 of the build's inputs (package.json, lockfile, runtime, npm, registry): builds of one hash are one build. */
  inputsHash: string
  runtime: string
  state: 'queued' | 'running' | 'succeeded' | 'failed'
  /** `npm ci --omit=dev` when the code brought a lockfile, `npm install --omit=dev` (its lockfile kept) otherwise. */
  command: string
  lockfile: 'provided' | 'generated'
  /** Functions whose deploys asked for this build, in order. */
  functions: string[]
  createdAt: string
  startedAt?: string | undefined
  finishedAt?: string | undefined
  /** Time the install ran (start of the build instance to its end), ms. */
  durationMs?: number | undefined
  /** Why it failed: `exit` (npm failed), `memory`, `timeout`, `interrupted` (the platform stopped), `output`, `sandbox`. */
  error?: { code: 'KDL_ERR_BUILD_FAILED'; reason: string; message: string } | undefined
}

/** What a deploy's code asks of the builder: its dependencies, read from the package.json at its root. */
export interface BuildPlan {
  inputsHash: string
  runtime: string
  packageJson: Buffer
  lockfile?: { name: string; body: Buffer } | undefined
}

/** A deploy's view of a build: the record now, and the build's end. */
export interface BuildTicket {
  record: BuildRecord
  /** True when a finished build of the same inputs was taken: nothing was installed. */
  reused: boolean
  /** Resolves with the build's output directory; rejects with KDL_ERR_BUILD_FAILED (details: build, logTail). */
  done: Promise<string>
  log: BuildLog | undefined
}

export interface BuilderOptions {
  /** `<data>/builds`: records/, logs/, out/<inputsHash>/ (finished builds), work/ (running ones). */
  root: string
  codeStore: CodeStore
  /** The backend's build instance; undefined when the backend cannot build (deploys that need one are refused). */
  run: ((job: BuildJob) => Promise<BuildJobResult>) | undefined
  /**
   * npm as builds use it, found on first need: its host directory (`<dir>/bin/npm-cli.js`), its version and
   * the registry builds reach (the host npm's own by default). Rejects when there is no npm.
   */
  npm: () => Promise<NpmSetup>
  /** Each runtime's version (a build's output depends on it). */
  runtimeVersion: (runtime: string) => string
  limits: { memoryMb: number; cpu: number; pidsLimit: number; timeoutMs: number }
  /** Builds that run at once; more wait (state `queued`). */
  concurrency: number
  maxLogBytes: number
  /** Largest build output (node_modules) taken into the code cache: bytes of its files, entries. */
  maxOutput: { bytes: number; entries: number }
  /** Records kept (newest first; the build of a stored output is kept while its output is). */
  maxRecords?: number
  log: Logger
  events?: EventLog | undefined
}

export interface NpmSetup {
  dir: string
  version: string
  registry: string
}

const HASH_RE = /^[0-9a-f]{64}$/
const ID_RE = /^b-[0-9a-z]{6,40}$/
const LOCKFILES = ['npm-shrinkwrap.json', 'package-lock.json'] as const

/**
 * The builder (issue 9): turns code with a package.json into code with its node_modules, once per set of
 * inputs. A build runs the runtime's build step (npm) in a sandboxed build instance on the backend, with only
 * the registry reachable (RegistryProxy); its output lands in `out/<inputsHash>/` by rename, so a platform
 * stopped mid-build leaves nothing half-written, and a deploy with the same dependencies takes that output
 * without installing anything. The deployed code is the function's own files plus those outputs, hard-linked
 * into one content-addressed directory of the code cache.
 */
export class Builder {
  readonly #o: BuilderOptions
  readonly #records = new Map<string, BuildRecord>()
  /** inputsHash → the build of it running or queued now (never two at once). */
  readonly #running = new Map<string, { record: BuildRecord; done: Promise<string>; log: BuildLog }>()
  readonly #logs = new Map<string, BuildLog>()
  readonly #abort = new AbortController()
  readonly #waiters: Array<() => void> = []
  #active = 0
  #npm: Promise<NpmSetup> | undefined

  constructor(opts: BuilderOptions) {
    this.#o = opts
  }

  #npmSetup(): Promise<NpmSetup> {
    this.#npm ??= this.#o.npm().catch((err: unknown) => {
      this.#npm = undefined
      throw new KdlError('KDL_ERR_SANDBOX_UNAVAILABLE', `builds need npm on the platform's host: ${(err as Error).message}`, { cause: err })
    })
    return this.#npm
  }

  get #dirs(): { records: string; logs: string; out: string; work: string } {
    const r = this.#o.root
    return { records: join(r, 'records'), logs: join(r, 'logs'), out: join(r, 'out'), work: join(r, 'work') }
  }

  /**
   * Loads the records; a build that was queued or running when the platform stopped is failed
   * (`interrupted`), and what it left in work/ and out/ is removed.
   */
  async init(): Promise<void> {
    const d = this.#dirs
    for (const dir of Object.values(d)) await mkdir(dir, { recursive: true, mode: 0o755 })
    await chmod(d.work, 0o711)
    for (const name of await readdir(d.records)) {
      if (name.endsWith('.tmp')) { await rm(join(d.records, name), { force: true }); continue }
      if (!name.endsWith('.json')) continue
      try {
        const r = JSON.parse(await readFile(join(d.records, name), 'utf8')) as BuildRecord
        if (!ID_RE.test(r.id)) continue
        if (r.state === 'queued' || r.state === 'running') {
          r.state = 'failed'
          r.finishedAt = new Date().toISOString()
          r.error = { code: 'KDL_ERR_BUILD_FAILED', reason: 'interrupted', message: 'the platform stopped during the build; deploy again to build' }
          await this.#save(r)
          this.#o.log.warn({ build: r.id }, 'a build was interrupted by a platform stop')
        }
        this.#records.set(r.id, r)
      } catch (err) {
        this.#o.log.warn({ err, file: name }, 'unreadable build record skipped')
      }
    }
    for (const name of await readdir(d.work)) await rm(join(d.work, name), { recursive: true, force: true })
    for (const name of await readdir(d.out)) if (!HASH_RE.test(name)) await rm(join(d.out, name), { recursive: true, force: true })
  }

  /**
   * The build a deploy's code needs, or undefined: no package.json at its root, no dependencies in it, or a
   * node_modules of its own (vendored code is taken as it is).
   */
  async plan(codeDir: string, runtime: string): Promise<BuildPlan | undefined> {
    let packageJson: Buffer
    try {
      packageJson = await readFile(join(codeDir, 'package.json'))
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT' || (err as { code?: string }).code === 'EISDIR') return undefined
      throw err
    }
    let pkg: unknown
    try { pkg = JSON.parse(packageJson.toString('utf8')) } catch (err) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `package.json is not valid JSON: ${(err as Error).message}`)
    }
    if (typeof pkg !== 'object' || pkg === null || Array.isArray(pkg)) throw new KdlError('KDL_ERR_BAD_SPEC', 'package.json must hold a JSON object')
    const p = pkg as Record<string, unknown>
    const count = (k: string): number => {
      const v = p[k]
      if (v === undefined) return 0
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new KdlError('KDL_ERR_BAD_SPEC', `package.json "${k}" must be an object of package → version`)
      return Object.keys(v).length
    }
    if (count('dependencies') + count('optionalDependencies') === 0) return undefined
    if (await exists(join(codeDir, 'node_modules'))) return undefined
    let lockfile: BuildPlan['lockfile']
    for (const name of LOCKFILES) {
      if (lockfile === undefined && await exists(join(codeDir, name))) lockfile = { name, body: await readFile(join(codeDir, name)) }
    }
    const npm = await this.#npmSetup()
    const h = createHash('sha256')
    for (const part of ['kindling-build/1', runtime, this.#o.runtimeVersion(runtime), npm.version, npm.registry]) h.update(part).update('\0')
    h.update(packageJson).update('\0').update(lockfile?.name ?? '-').update('\0').update(lockfile?.body ?? '')
    return { inputsHash: h.digest('hex'), runtime, packageJson, lockfile }
  }

  /**
   * The build of a plan: a finished one of the same inputs (reused: nothing runs), the one running now, or a
   * new one. `fn` is recorded on the build.
   */
  async ensure(plan: BuildPlan, fn: string): Promise<BuildTicket> {
    // One at a time per inputs hash: the checks below await, and two deploys must never both start a build.
    const before = this.#ensuring.get(plan.inputsHash) ?? Promise.resolve()
    const mine = before.then(() => this.#ensure(plan, fn))
    const tail = mine.then(() => {}, () => {})
    this.#ensuring.set(plan.inputsHash, tail)
    void tail.then(() => { if (this.#ensuring.get(plan.inputsHash) === tail) this.#ensuring.delete(plan.inputsHash) })
    return mine
  }

  readonly #ensuring = new Map<string, Promise<void>>()

  async #ensure(plan: BuildPlan, fn: string): Promise<BuildTicket> {
    if (this.#o.run === undefined) throw new KdlError('KDL_ERR_SANDBOX_UNAVAILABLE', 'this backend cannot run builds: deploy the code with its node_modules')
    const out = join(this.#dirs.out, plan.inputsHash)
    const running = this.#running.get(plan.inputsHash)
    if (running !== undefined) {
      if (!running.record.functions.includes(fn)) { running.record.functions.push(fn); await this.#save(running.record) }
      return { record: running.record, reused: false, done: running.done, log: running.log }
    }
    if (await exists(out)) {
      const record = this.#latest(plan.inputsHash)
      if (record !== undefined) {
        if (!record.functions.includes(fn)) { record.functions.push(fn); await this.#save(record) }
        return { record, reused: true, done: Promise.resolve(out), log: undefined }
      }
      // An output without its record (records pruned): build again rather than serve something unexplained.
      await rm(out, { recursive: true, force: true })
    }
    const now = new Date().toISOString()
    const command = plan.lockfile !== undefined ? 'ci' : 'install'
    const record: BuildRecord = {
      id: `b-${Date.now().toString(36)}${randomBytes(5).toString('hex')}`,
      inputsHash: plan.inputsHash,
      runtime: plan.runtime,
      state: 'queued',
      command: `npm ${command} --omit=dev`,
      lockfile: plan.lockfile !== undefined ? 'provided' : 'generated',
      functions: [fn],
      createdAt: now,
    }
    this.#records.set(record.id, record)
    await this.#save(record)
    const log = new BuildLog(join(this.#dirs.logs, `${record.id}.log`), this.#o.maxLogBytes)
    this.#logs.set(record.id, log)
    const done = this.#build(plan, record, log, command)
    done.catch(() => {})
    this.#running.set(plan.inputsHash, { record, done, log })
    void done.finally(() => this.#running.delete(plan.inputsHash)).catch(() => {})
    await this.#prune()
    return { record, reused: false, done, log }
  }

  async #build(plan: BuildPlan, record: BuildRecord, log: BuildLog, command: 'ci' | 'install'): Promise<string> {
    const fail = async (reason: string, message: string): Promise<never> => {
      record.state = 'failed'
      record.finishedAt = new Date().toISOString()
      record.error = { code: 'KDL_ERR_BUILD_FAILED', reason, message }
      log.line(`kindling build: failed (${reason}): ${message}`)
      log.end()
      await this.#save(record).catch((err: unknown) => this.#o.log.error({ err, build: record.id }, 'cannot write a build record'))
      this.#o.events?.add({ type: 'build.failed', function: record.functions[0], message: `build ${record.id} failed: ${message}`, data: { build: record.id, reason } })
      this.#o.log.warn({ build: record.id, reason }, 'build failed')
      throw buildFailed(record, log.tail())
    }
    await this.#slot()
    const work = join(this.#dirs.work, record.id)
    let proxy: RegistryProxy | undefined
    try {
      if (this.#abort.signal.aborted) return await fail('interrupted', 'the platform is stopping')
      record.state = 'running'
      record.startedAt = new Date().toISOString()
      await this.#save(record)
      this.#o.events?.add({ type: 'build.started', function: record.functions[0], message: `build ${record.id} started (${record.command})`, data: { build: record.id, inputsHash: record.inputsHash } })
      await mkdir(join(work, 'app'), { recursive: true, mode: 0o755 })
      await mkdir(join(work, 'tmp'), { recursive: true, mode: 0o700 })
      await writeFile(join(work, 'app', 'package.json'), plan.packageJson, { mode: 0o644 })
      if (plan.lockfile !== undefined) await writeFile(join(work, 'app', plan.lockfile.name), plan.lockfile.body, { mode: 0o644 })
      const npm = await this.#npmSetup()
      proxy = await RegistryProxy.listen({ socketPath: join(work, 'proxy.sock'), registry: new URL(npm.registry), refused: (line) => log.line(line) })
      await chmod(join(work, 'proxy.sock'), 0o666)
      const t0 = performance.now()
      let result: BuildJobResult
      try {
        result = await this.#o.run!({
          id: record.id, runtime: plan.runtime, dir: work, npmDir: npm.dir, registry: npm.registry, command,
          ...this.#o.limits, onLine: (_stream, line) => log.line(line), signal: this.#abort.signal,
        })
      } catch (err) {
        return await fail('sandbox', `the build instance could not run: ${(err as Error).message}`)
      }
      record.durationMs = Math.round(performance.now() - t0)
      const { limits } = this.#o
      switch (result.outcome) {
        case 'memory': return await fail('memory', `the build exceeded its memory limit (${limits.memoryMb} MiB, KINDLING_BUILD_MEMORY_MB) and was stopped`)
        case 'timeout': return await fail('timeout', `the build ran past its time limit (${limits.timeoutMs} ms, KINDLING_BUILD_TIMEOUT_MS) and was stopped`)
        case 'aborted': return await fail('interrupted', 'the platform stopped during the build')
        case 'failed': return await fail('exit', `npm ${command} failed (exit code ${result.code ?? result.signal})`)
        case 'ok': break
      }
      const out = await this.#keep(work, plan).catch((err: unknown) => fail('output', (err as Error).message))
      record.state = 'succeeded'
      record.finishedAt = new Date().toISOString()
      log.line(`kindling build: done in ${record.durationMs} ms`)
      log.end()
      await this.#save(record)
      this.#o.events?.add({ type: 'build.succeeded', function: record.functions[0], message: `build ${record.id} succeeded in ${record.durationMs} ms`, data: { build: record.id, durationMs: record.durationMs } })
      this.#o.log.info({ build: record.id, ms: record.durationMs }, 'build succeeded')
      return out
    } catch (err) {
      if ((err as { code?: string }).code === 'KDL_ERR_BUILD_FAILED') throw err
      return await fail('sandbox', (err as Error).message)
    } finally {
      await proxy?.close().catch(() => {})
      await rm(work, { recursive: true, force: true }).catch(() => {})
      this.#release()
    }
  }

  /**
   * The build's output (node_modules, and the lockfile npm wrote when none came with the code) moves into
   * `out/<inputsHash>/` by one rename, owned by the platform and readable by every instance user.
   */
  async #keep(work: string, plan: BuildPlan): Promise<string> {
    const app = join(work, 'app')
    const staged = join(work, 'out')
    await mkdir(staged, { mode: 0o755 })
    if (await exists(join(app, 'node_modules'))) await rename(join(app, 'node_modules'), join(staged, 'node_modules'))
    else await mkdir(join(staged, 'node_modules'), { mode: 0o755 })
    if (plan.lockfile === undefined && await exists(join(app, 'package-lock.json'))) await rename(join(app, 'package-lock.json'), join(staged, 'package-lock.json'))
    await normalise(staged, process.getuid?.() === 0, { bytes: 0, entries: 0, max: this.#o.maxOutput })
    const out = join(this.#dirs.out, plan.inputsHash)
    try {
      await rename(staged, out)
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err
    }
    return out
  }

  /**
   * The deployed code: the function's files and its build's output, hard-linked into one directory of the
   * code cache (named by both hashes, so the same code and build are one directory).
   */
  async assemble(code: StoredCode, inputsHash: string): Promise<StoredCode> {
    if (!HASH_RE.test(inputsHash)) throw new KdlError('KDL_ERR_INTERNAL', `bad inputs hash ${inputsHash}`)
    return this.#o.codeStore.putLinked(assembledHash(code.hash, inputsHash), [code.dir, join(this.#dirs.out, inputsHash)])
  }

  get(id: string): BuildRecord | undefined {
    return ID_RE.test(id) ? this.#records.get(id) : undefined
  }

  /** Newest first. */
  list(): BuildRecord[] {
    return [...this.#records.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id))
  }

  /** The live log of a running build; undefined once it ended (read the file) or for an unknown id. */
  liveLog(id: string): BuildLog | undefined {
    const l = this.#logs.get(id)
    return l !== undefined && !l.done ? l : undefined
  }

  logPath(id: string): string {
    if (!ID_RE.test(id)) throw new KdlError('KDL_ERR_BUILD_NOT_FOUND', `no build "${id}"`)
    return join(this.#dirs.logs, `${id}.log`)
  }

  /** Stops the builds running now (their records say `interrupted`) and waits for them. */
  async close(): Promise<void> {
    this.#abort.abort()
    await Promise.allSettled([...this.#running.values()].map((r) => r.done))
  }

  #latest(inputsHash: string): BuildRecord | undefined {
    return this.list().find((r) => r.inputsHash === inputsHash && r.state === 'succeeded')
  }

  /** Writes a record (temp + rename), one write at a time per record so the last state written is the last state. */
  #save(r: BuildRecord): Promise<void> {
    const file = join(this.#dirs.records, `${r.id}.json`)
    const write = async (): Promise<void> => {
      const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
      await writeFile(tmp, JSON.stringify(r, null, 2))
      await rename(tmp, file)
    }
    const next = (this.#saving.get(r.id) ?? Promise.resolve()).then(write, write)
    this.#saving.set(r.id, next)
    void next.then(() => { if (this.#saving.get(r.id) === next) this.#saving.delete(r.id) }, () => {})
    return next
  }

  readonly #saving = new Map<string, Promise<void>>()

  /** Keeps the newest `maxRecords` records (and every one whose output is still stored); drops the rest with their logs. */
  async #prune(): Promise<void> {
    const max = this.#o.maxRecords ?? 500
    const all = this.list()
    if (all.length <= max) return
    // The newest success of each inputs hash explains a stored output: kept whatever its age.
    const needed = new Set<string>()
    const hashes = new Set<string>()
    for (const r of all) if (r.state === 'succeeded' && !hashes.has(r.inputsHash)) { hashes.add(r.inputsHash); needed.add(r.id) }
    for (const r of all.slice(max)) {
      if (needed.has(r.id) || r.state === 'queued' || r.state === 'running') continue
      this.#records.delete(r.id)
      this.#logs.delete(r.id)
      await rm(join(this.#dirs.records, `${r.id}.json`), { force: true })
      await rm(join(this.#dirs.logs, `${r.id}.log`), { force: true })
    }
  }

  async #slot(): Promise<void> {
    if (this.#active < Math.max(1, this.#o.concurrency)) { this.#active++; return }
    await new Promise<void>((resolve) => this.#waiters.push(resolve))
  }

  #release(): void {
    const next = this.#waiters.shift()
    if (next !== undefined) next()
    else this.#active--
  }
}

/** The error a deploy gets for a failed build: its record and the log's last lines. */
export function buildFailed(record: BuildRecord, logTail: string[]): KdlError {
  return new KdlError('KDL_ERR_BUILD_FAILED', `build ${record.id} failed: ${record.error?.message ?? 'unknown'}`, {
    details: { build: { id: record.id, inputsHash: record.inputsHash, reason: record.error?.reason }, logTail },
  })
}

async function exists(p: string): Promise<boolean> {
  try { await lstat(p); return true } catch { return false }
}

/**
 * Makes a build's output the platform's: owned by root (when the platform is root), directories 0755, files
 * 0644 or 0755 — nothing an instance could write, everything any instance user can read. Symlinks are left
 * as they are (never followed).
 */
async function normalise(dir: string, asRoot: boolean, size: { bytes: number; entries: number; max: { bytes: number; entries: number } }): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (++size.entries > size.max.entries) throw new Error(`the build's output holds more than ${size.max.entries} entries (the code cache's limit)`)
    if (asRoot) await lchown(p, 0, 0)
    if (e.isSymbolicLink()) continue
    if (e.isDirectory()) { await chmod(p, 0o755); await normalise(p, asRoot, size); continue }
    if (e.isFile()) {
      const st = await lstat(p)
      size.bytes += st.size
      if (size.bytes > size.max.bytes) throw new Error(`the build's output is larger than ${size.max.bytes} bytes (KINDLING_MAX_UNPACKED_BYTES)`)
      await chmod(p, (st.mode & 0o111) !== 0 ? 0o755 : 0o644)
    } else {
      await rm(p, { force: true }) // sockets, fifos: nothing code needs
    }
  }
  if (asRoot) await lchown(dir, 0, 0)
}

/** The code hash of a function's files assembled with a build's output (`kindling apply` compares by it before building). */
export function assembledHash(codeHash: string, inputsHash: string): string {
  return createHash('sha256').update('built\0').update(codeHash).update('\0').update(inputsHash).digest('hex')
}
