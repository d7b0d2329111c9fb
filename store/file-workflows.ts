import { randomBytes } from 'node:crypto'
import { mkdir, readdir, rename, rm, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { KdlError } from '../common/errors.js'
import { KeyedMutex } from '../common/keyed-mutex.js'
import type { OpenRun, RunEvent, RunRecord, RunStatus, WorkflowRecord, WorkflowStore } from '../common/workflows.js'
import { atomicWrite, isErrno, readText, syncDir, writeSynced } from './atomic-file.js'
import { GroupCommitLog, readNdjson } from './ndjson-log.js'
import {
  assertRun, assertRunId, assertWorkflowName, assertWorkflowVersion, eventJson, isFinished, isRunId, isWorkflowName, newestFirst, parseRun, parseWorkflow,
  runNotFound, startedMs, wakeScore,
} from './workflow-records.js'

export interface FileWorkflowStoreOptions {
  /**
   * The workflows' own directory (the composition root passes `<data>/store/workflows`), created by open():
   * `definitions/<name>/<version>.json` and `definitions/<name>/head.json`; `runs/<id>/run.json` and
   * `runs/<id>/log.ndjson`.
   */
  dir: string
}

/** What the index keeps of a run: enough to list and to find the open ones without reading a file. */
interface Entry {
  id: string
  workflow: string
  startedMs: number
  status: RunStatus
  wakeAt: number | undefined
  cancelRequested: boolean
}

const VERSION_FILE = /^[1-9][0-9]*\.json$/
/** createRun's half-made run directories (`.<id>.<rand>.tmp`); a crash leaves them, open() removes them. */
const TEMP_DIR = /^\..*\.tmp$/
/** Run files read at once while open() builds the index. */
const SCAN_PARALLEL = 32

/**
 * The embedded default's workflow store (issue 12): one process owns the directory, so a claim is always
 * granted and fencing has nothing to fence. Records (definitions, run summaries) are written atomically
 * (store/atomic-file.ts); a run's log is an append-only NDJSON file, group-committed (store/ndjson-log.ts).
 * open() reads every run summary once into an index that listRuns and openRuns answer from; from then on
 * this instance's writes keep it current, which is why it must be the only writer of the directory.
 */
export class FileWorkflowStore implements WorkflowStore {
  readonly #dir: string
  readonly #pending = new Set<Promise<unknown>>()
  readonly #runs = new Map<string, Entry>()
  /** Each workflow's runs, oldest first (created runs land at the end). */
  readonly #byWorkflow = new Map<string, Entry[]>()
  readonly #open = new Set<string>()
  /** Ids being created: a second createRun of one id fails at once, not at the rename. */
  readonly #creating = new Set<string>()
  readonly #logs = new Map<string, GroupCommitLog>()
  /** One summary rewrite per run at a time, so a requestCancel and the engine's putRun never undo each other. */
  readonly #runLocks = new KeyedMutex()
  /** One definition change per name at a time (a version and its head stay a pair; a delete does not race a put). */
  readonly #defLocks = new KeyedMutex()
  #logSyncs = 0
  #closed = false

  private constructor(dir: string) {
    this.#dir = dir
  }

  /** Creates the directories and builds the run index from what is on disk. */
  static async open(options: FileWorkflowStoreOptions): Promise<FileWorkflowStore> {
    const store = new FileWorkflowStore(options.dir)
    try {
      await mkdir(store.#definitions(), { recursive: true, mode: 0o700 })
      await mkdir(store.#runsDir(), { recursive: true, mode: 0o700 })
    } catch (err) {
      throw new KdlError('KDL_ERR_INTERNAL', `creating ${options.dir} failed`, { cause: err })
    }
    await store.#scan()
    return store
  }

  /** fdatasync calls made on run logs so far: concurrent appends to one run share one (group commit). */
  get logSyncs(): number {
    return this.#logSyncs
  }

  async putWorkflow(record: WorkflowRecord): Promise<void> {
    this.#assertOpen()
    assertWorkflowName(record.name)
    assertWorkflowVersion(record.version)
    const folder = this.#definitionFolder(record.name)
    const text = `${JSON.stringify(record, null, 2)}\n`
    return this.#track(this.#defLocks.run(record.name, async () => {
      await atomicWrite(folder, join(folder, `${record.version}.json`), text, String(record.version))
      await atomicWrite(folder, join(folder, 'head.json'), text, 'head')
    }))
  }

  async getWorkflow(name: string): Promise<WorkflowRecord | undefined> {
    this.#assertOpen()
    assertWorkflowName(name)
    const label = `definitions/${name}/head.json`
    const text = await readText(join(this.#definitionFolder(name), 'head.json'), label)
    return text === undefined ? undefined : parseWorkflow(text, label, name)
  }

  async getWorkflowVersion(name: string, version: number): Promise<WorkflowRecord | undefined> {
    this.#assertOpen()
    assertWorkflowName(name)
    assertWorkflowVersion(version)
    const label = `definitions/${name}/${version}.json`
    const text = await readText(join(this.#definitionFolder(name), `${version}.json`), label)
    return text === undefined ? undefined : parseWorkflow(text, label, name, version)
  }

  async listWorkflows(): Promise<WorkflowRecord[]> {
    this.#assertOpen()
    const names = (await this.#readdir(this.#definitions(), 'definitions')).filter(isWorkflowName).sort()
    const out: WorkflowRecord[] = []
    for (const name of names) {
      // A folder without a head (a delete cut short) is no workflow.
      const head = await this.getWorkflow(name)
      if (head !== undefined) out.push(head)
    }
    return out
  }

  async listWorkflowVersions(name: string): Promise<WorkflowRecord[]> {
    this.#assertOpen()
    assertWorkflowName(name)
    const files = await this.#readdir(this.#definitionFolder(name), `the versions of "${name}"`)
    const numbers = files.filter((f) => VERSION_FILE.test(f)).map((f) => Number(f.slice(0, -'.json'.length))).sort((a, b) => a - b)
    const out: WorkflowRecord[] = []
    for (const v of numbers) {
      const record = await this.getWorkflowVersion(name, v)
      if (record !== undefined) out.push(record)
    }
    return out
  }

  async deleteWorkflow(name: string): Promise<boolean> {
    this.#assertOpen()
    assertWorkflowName(name)
    const folder = this.#definitionFolder(name)
    return this.#track(this.#defLocks.run(name, async () => {
      // The head goes first: it is the commit, so a crash midway leaves versions no head names.
      let removed = true
      try {
        await unlink(join(folder, 'head.json'))
        await syncDir(folder)
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw new KdlError('KDL_ERR_INTERNAL', `deleting definitions/${name}/head.json failed`, { cause: err })
        removed = false
      }
      try {
        await rm(folder, { recursive: true, force: true })
      } catch (err) {
        throw new KdlError('KDL_ERR_INTERNAL', `removing the versions of "${name}" failed`, { cause: err })
      }
      await syncDir(this.#definitions())
      return removed
    }))
  }

  async createRun(run: RunRecord, log: RunEvent[]): Promise<void> {
    this.#assertOpen()
    assertRun(run)
    const text = lines(eventJson(log, `run ${run.id}`))
    if (this.#runs.has(run.id) || this.#creating.has(run.id)) throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} already exists`)
    this.#creating.add(run.id)
    return this.#track((async () => {
      try {
        await this.#createRunDir(run, text)
        this.#index(run)
      } finally {
        this.#creating.delete(run.id)
      }
    })())
  }

  async getRun(id: string): Promise<RunRecord | undefined> {
    this.#assertOpen()
    if (!this.#runs.has(id)) return undefined
    return this.#readRun(id)
  }

  async putRun(run: RunRecord, _owner: string): Promise<void> {
    this.#assertOpen()
    assertRun(run)
    const entry = this.#runs.get(run.id)
    if (entry === undefined) throw runNotFound(run.id)
    if (entry.workflow !== run.workflow || entry.startedMs !== startedMs(run)) {
      throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} cannot change its workflow or its start`)
    }
    return this.#track(this.#runLocks.run(run.id, async () => {
      // A cancel once asked for stays asked for: the engine's rewrite of a summary it read before does not undo it.
      const record = entry.cancelRequested && run.cancelRequested !== true ? { ...run, cancelRequested: true } : run
      await this.#writeRun(record)
      this.#update(entry, record)
    }))
  }

  async listRuns(workflow: string, page: { limit: number; before?: string | undefined; status?: RunStatus | undefined }): Promise<RunRecord[]> {
    this.#assertOpen()
    assertWorkflowName(workflow)
    const entries = this.#byWorkflow.get(workflow) ?? []
    let from = entries.length - 1
    if (page.before !== undefined) {
      const before = this.#runs.get(page.before)
      // Nothing is listed after a run this workflow does not have.
      if (before === undefined || before.workflow !== workflow) return []
      from = position(entries, before) - 1
    }
    const out: RunRecord[] = []
    for (let i = from; i >= 0 && out.length < page.limit; i--) {
      const entry = entries[i] as Entry
      if (page.status !== undefined && entry.status !== page.status) continue
      const run = await this.#readRun(entry.id)
      if (run !== undefined && (page.status === undefined || run.status === page.status)) out.push(run)
    }
    return out
  }

  async append(id: string, _owner: string, events: RunEvent[]): Promise<void> {
    // Nothing awaits before the events join the run's queue: appends land in call order.
    this.#assertOpen()
    assertRunId(id)
    if (!this.#runs.has(id)) throw runNotFound(id)
    const text = lines(eventJson(events, `run ${id}`))
    if (text === '') return
    let log = this.#logs.get(id)
    if (log === undefined) {
      const created = new GroupCommitLog(join(this.#runDir(id), 'log.ndjson'), () => { this.#logSyncs++ }, () => {
        if (this.#logs.get(id) === created) this.#logs.delete(id)
      })
      log = created
      this.#logs.set(id, log)
    }
    return this.#track(log.append(text))
  }

  async readLog(id: string): Promise<RunEvent[]> {
    this.#assertOpen()
    if (!this.#runs.has(id)) return []
    return (await readNdjson(join(this.#runDir(id), 'log.ndjson'), `runs/${id}/log.ndjson`)) ?? []
  }

  async openRuns(): Promise<OpenRun[]> {
    this.#assertOpen()
    const out: OpenRun[] = []
    for (const id of this.#open) {
      const wakeAt = this.#runs.get(id)?.wakeAt
      out.push(wakeAt === undefined ? { id } : { id, wakeAt })
    }
    return out
  }

  /** One process owns the directory: the run is always this owner's. */
  async claim(_id: string, _owner: string, _ttlMs: number): Promise<boolean> {
    this.#assertOpen()
    return true
  }

  async renew(_ids: readonly string[], _owner: string, _ttlMs: number): Promise<string[]> {
    this.#assertOpen()
    return []
  }

  async release(_id: string, _owner: string): Promise<void> {
    this.#assertOpen()
  }

  async requestCancel(id: string): Promise<RunRecord | undefined> {
    this.#assertOpen()
    const entry = this.#runs.get(id)
    if (entry === undefined) return undefined
    return this.#track(this.#runLocks.run(id, async () => {
      const run = await this.#readRun(id)
      if (run === undefined || isFinished(run.status) || run.cancelRequested === true) return run
      const record = { ...run, cancelRequested: true }
      await this.#writeRun(record)
      this.#update(entry, record)
      return record
    }))
  }

  /** Waits for in-flight writes (appends included); later calls fail with KDL_ERR_SHUTTING_DOWN. */
  async close(): Promise<void> {
    this.#closed = true
    await Promise.allSettled([...this.#pending])
  }

  #assertOpen(): void {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the workflow store is closed')
  }

  #definitions(): string {
    return join(this.#dir, 'definitions')
  }

  #definitionFolder(name: string): string {
    return join(this.#definitions(), name)
  }

  #runsDir(): string {
    return join(this.#dir, 'runs')
  }

  #runDir(id: string): string {
    return join(this.#runsDir(), id)
  }

  async #readdir(folder: string, what: string): Promise<string[]> {
    try {
      return await readdir(folder)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return []
      throw new KdlError('KDL_ERR_INTERNAL', `listing ${what} failed`, { cause: err })
    }
  }

  async #readRun(id: string): Promise<RunRecord | undefined> {
    const label = `runs/${id}/run.json`
    const text = await readText(join(this.#runDir(id), 'run.json'), label)
    return text === undefined ? undefined : parseRun(text, label, id)
  }

  #writeRun(run: RunRecord): Promise<void> {
    const folder = this.#runDir(run.id)
    return atomicWrite(folder, join(folder, 'run.json'), `${JSON.stringify(run)}\n`, 'run')
  }

  /**
   * A run comes into being whole: its summary and first entries are written and synced in a temp directory,
   * which one rename makes `runs/<id>` (a rename onto an existing run fails: ids are not reused).
   */
  async #createRunDir(run: RunRecord, log: string): Promise<void> {
    const tmp = join(this.#runsDir(), `.${run.id}.${randomBytes(6).toString('hex')}.tmp`)
    try {
      await mkdir(tmp, { mode: 0o700 })
      await writeSynced(join(tmp, 'log.ndjson'), log)
      await writeSynced(join(tmp, 'run.json'), `${JSON.stringify(run)}\n`)
      await syncDir(tmp)
      await rename(tmp, this.#runDir(run.id))
    } catch (err) {
      await rm(tmp, { recursive: true, force: true }).catch(() => undefined)
      if (isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST')) throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} already exists`, { cause: err })
      throw new KdlError('KDL_ERR_INTERNAL', `creating run ${run.id} failed`, { cause: err })
    }
    await syncDir(this.#runsDir())
  }

  #index(run: RunRecord): void {
    const entry: Entry = { id: run.id, workflow: run.workflow, startedMs: startedMs(run), status: run.status, wakeAt: undefined, cancelRequested: false }
    this.#update(entry, run)
    this.#runs.set(run.id, entry)
    let list = this.#byWorkflow.get(run.workflow)
    if (list === undefined) {
      list = []
      this.#byWorkflow.set(run.workflow, list)
    }
    list.splice(insertionPoint(list, entry), 0, entry)
  }

  #update(entry: Entry, run: RunRecord): void {
    entry.status = run.status
    const wake = wakeScore(run)
    entry.wakeAt = wake > 0 ? wake : undefined
    entry.cancelRequested = run.cancelRequested === true
    if (isFinished(run.status)) this.#open.delete(run.id)
    else this.#open.add(run.id)
  }

  /** Reads every run's summary once; removes what a crashed createRun left. */
  async #scan(): Promise<void> {
    const names = await this.#readdir(this.#runsDir(), 'runs')
    for (const name of names.filter((n) => TEMP_DIR.test(n))) {
      await rm(join(this.#runsDir(), name), { recursive: true, force: true }).catch((err: unknown) => {
        throw new KdlError('KDL_ERR_INTERNAL', `removing runs/${name} failed`, { cause: err })
      })
    }
    const ids = names.filter(isRunId)
    const runs: RunRecord[] = []
    for (let i = 0; i < ids.length; i += SCAN_PARALLEL) {
      const got = await Promise.all(ids.slice(i, i + SCAN_PARALLEL).map((id) => this.#readRun(id)))
      for (const run of got) if (run !== undefined) runs.push(run)
    }
    runs.sort((a, b) => -newestFirst({ startedMs: startedMs(a), id: a.id }, { startedMs: startedMs(b), id: b.id }))
    for (const run of runs) this.#index(run)
  }

  #track<T>(work: Promise<T>): Promise<T> {
    this.#pending.add(work)
    const done = (): void => { this.#pending.delete(work) }
    work.then(done, done)
    return work
  }
}

/** Where `entry` goes in an oldest-first list (at the end, for a run that started last). */
function insertionPoint(list: readonly Entry[], entry: Entry): number {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (newestFirst(list[mid] as Entry, entry) > 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** The index of `entry` in its oldest-first list. */
function position(list: readonly Entry[], entry: Entry): number {
  const at = insertionPoint(list, entry)
  return list[at] === entry ? at : list.indexOf(entry)
}


/** NDJSON text of events' JSON. */
function lines(json: string[]): string {
  return json.map((line) => `${line}\n`).join('')
}
