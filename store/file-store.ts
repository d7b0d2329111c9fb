import { readdir, rm, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { KdlError } from '../common/errors.js'
import { assertName, NAME_PATTERN } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord, RuntimeSpec } from '../common/types.js'
import { atomicWrite, isErrno, readText, syncDir } from './atomic-file.js'

export interface FileStoreOptions {
  /**
   * Data directory; records live in `functions/<name>.json`, `versions/<name>/<version>.json` and
   * `runtimes/<name>.json`. Created on first write.
   */
  dir: string
}

type Kind = 'function' | 'runtime'

const FOLDER: Record<Kind, string> = { function: 'functions', runtime: 'runtimes' }
/** Only files named like a record are read; temp files (`.<name>.json.<pid>.<rand>.tmp`) never match. */
const RECORD_FILE = new RegExp(`${NAME_PATTERN.slice(0, -1)}\\.json$`)
const VERSION_FILE = /^[1-9][0-9]*\.json$/

/**
 * The embedded store: one JSON file per record. A write goes to a temp file in the same directory, is
 * fsynced, renamed over the record and the directory fsynced, so a reader (or a restart after a crash)
 * sees either the old record or the new one, never a torn file. Concurrent writes to one name: the
 * last rename wins.
 */
export class FileStore implements Store {
  readonly #dir: string
  readonly #pending = new Set<Promise<unknown>>()
  #closed = false

  constructor(options: FileStoreOptions) {
    this.#dir = options.dir
  }

  async getFunction(name: string): Promise<FunctionRecord | undefined> {
    return this.#read<FunctionRecord>('function', name)
  }

  async listFunctions(page?: { after?: string | undefined; limit: number }): Promise<FunctionRecord[]> {
    return this.#list<FunctionRecord>('function', page)
  }

  async putFunction(record: FunctionRecord): Promise<void> {
    return this.#write('function', record.name, record)
  }

  async deleteFunction(name: string): Promise<boolean> {
    return this.#track((async () => {
      // The head goes first: it is the commit, so a crash midway leaves versions no head names (removed
      // by the next deploy of the name, which starts from an empty version folder).
      const removed = await this.#delete('function', name)
      const folder = this.#versionFolder(name)
      await rm(folder, { recursive: true, force: true }).catch((err: unknown) => {
        throw new KdlError('KDL_ERR_INTERNAL', `removing the versions of "${name}" failed`, { cause: err })
      })
      return removed
    })())
  }

  async getVersion(name: string, version: number): Promise<FunctionRecord | undefined> {
    this.#assertOpen()
    const text = await readText(this.#versionFile(name, version), `versions/${name}/${version}.json`)
    if (text === undefined) return undefined
    const record = parseRecord<FunctionRecord>('function', name, text)
    if (record.version !== version) throw new KdlError('KDL_ERR_INTERNAL', `stored version versions/${name}/${version}.json holds version ${record.version}`)
    return record
  }

  async listVersions(name: string): Promise<FunctionRecord[]> {
    this.#assertOpen()
    let files: string[]
    try {
      files = await readdir(this.#versionFolder(name))
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return []
      throw new KdlError('KDL_ERR_INTERNAL', `listing the versions of "${name}" failed`, { cause: err })
    }
    const numbers = files.filter((f) => VERSION_FILE.test(f)).map((f) => Number(f.slice(0, -'.json'.length))).sort((a, b) => a - b)
    const out: FunctionRecord[] = []
    for (const v of numbers) {
      const record = await this.getVersion(name, v)
      if (record !== undefined) out.push(record)
    }
    return out
  }

  async putVersion(record: FunctionRecord): Promise<void> {
    this.#assertOpen()
    const folder = this.#versionFolder(record.name)
    const { aliases: _a, lastVersion: _l, canary: _c, ...version } = record
    return this.#track(atomicWrite(folder, this.#versionFile(record.name, record.version), `${JSON.stringify(version, null, 2)}\n`, String(record.version)))
  }

  async deleteVersion(name: string, version: number): Promise<boolean> {
    this.#assertOpen()
    const file = this.#versionFile(name, version)
    return this.#track((async () => {
      try {
        await unlink(file)
      } catch (err) {
        if (isErrno(err, 'ENOENT')) return false
        throw new KdlError('KDL_ERR_INTERNAL', `deleting versions/${name}/${version}.json failed`, { cause: err })
      }
      await syncDir(this.#versionFolder(name))
      return true
    })())
  }

  async getRuntime(name: string): Promise<RuntimeSpec | undefined> {
    return this.#read<RuntimeSpec>('runtime', name)
  }

  async listRuntimes(): Promise<RuntimeSpec[]> {
    return this.#list<RuntimeSpec>('runtime')
  }

  async putRuntime(spec: RuntimeSpec): Promise<void> {
    return this.#write('runtime', spec.name, spec)
  }

  /** Waits for in-flight writes; later calls fail with KDL_ERR_SHUTTING_DOWN. */
  async close(): Promise<void> {
    this.#closed = true
    await Promise.allSettled([...this.#pending])
  }

  #assertOpen(): void {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the store is closed')
  }

  #folder(kind: Kind): string {
    return join(this.#dir, FOLDER[kind])
  }

  #versionFolder(name: string): string {
    assertName('function', name)
    return join(this.#dir, 'versions', name)
  }

  #versionFile(name: string, version: number): string {
    if (!Number.isInteger(version) || version < 1) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `version ${String(version).slice(0, 20)} is not a version number`)
    return join(this.#versionFolder(name), `${version}.json`)
  }

  #file(kind: Kind, name: string): string {
    assertName(kind, name)
    return join(this.#folder(kind), `${name}.json`)
  }

  async #read<T>(kind: Kind, name: string): Promise<T | undefined> {
    this.#assertOpen()
    const text = await readText(this.#file(kind, name), `${FOLDER[kind]}/${name}.json`)
    return text === undefined ? undefined : parseRecord<T>(kind, name, text)
  }

  async #list<T>(kind: Kind, page?: { after?: string | undefined; limit: number }): Promise<T[]> {
    this.#assertOpen()
    let files: string[]
    try {
      files = await readdir(this.#folder(kind))
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return []
      throw new KdlError('KDL_ERR_INTERNAL', `listing ${FOLDER[kind]} failed`, { cause: err })
    }
    let names = files.filter((f) => RECORD_FILE.test(f)).map((f) => f.slice(0, -'.json'.length)).sort()
    if (page !== undefined) {
      const after = page.after
      names = (after === undefined ? names : names.filter((n) => n > after)).slice(0, page.limit)
    }
    const records: T[] = []
    for (const name of names) {
      // A record deleted between readdir and read is simply not listed.
      const record = await this.#read<T>(kind, name)
      if (record !== undefined) records.push(record)
    }
    return records
  }

  #write(kind: Kind, name: string, value: unknown): Promise<void> {
    this.#assertOpen()
    const file = this.#file(kind, name)
    return this.#track(atomicWrite(this.#folder(kind), file, `${JSON.stringify(value, null, 2)}\n`, name))
  }

  async #delete(kind: Kind, name: string): Promise<boolean> {
    this.#assertOpen()
    const file = this.#file(kind, name)
    try {
      await unlink(file)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false
      throw new KdlError('KDL_ERR_INTERNAL', `deleting ${FOLDER[kind]}/${name}.json failed`, { cause: err })
    }
    await syncDir(this.#folder(kind))
    return true
  }

  #track<T>(work: Promise<T>): Promise<T> {
    this.#pending.add(work)
    const done = (): void => { this.#pending.delete(work) }
    work.then(done, done)
    return work
  }
}

function parseRecord<T>(kind: Kind, name: string, text: string): T {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored ${kind} record ${FOLDER[kind]}/${name}.json is not valid JSON`, { cause: err })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || (value as { name?: unknown }).name !== name) {
    throw new KdlError('KDL_ERR_INTERNAL', `stored ${kind} record ${FOLDER[kind]}/${name}.json does not hold the ${kind} "${name}"`)
  }
  return value as T
}
