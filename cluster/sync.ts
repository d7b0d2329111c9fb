import type { Logger } from 'pino'
import { KeyedMutex } from '../common/keyed-mutex.js'
import type { Store, StoreChange } from '../common/store.js'
import type { FunctionRecord, RuntimeSpec } from '../common/types.js'

/** What a change another replica made is applied to (the executor, the pools, the function's logs…). */
export interface SyncTarget {
  /** Functions this replica routes or has read. */
  knownFunctions(): Iterable<string>
  /** The head as this replica routes it now, if known. */
  head(name: string): FunctionRecord | undefined
  /** Route by this head from now on (prewarm pools follow). */
  routed(head: FunctionRecord): Promise<void>
  /** The function is gone: drain its calls, retire its instances. */
  removed(name: string): void
  /** Versions still stored: the others were pruned by another replica and are forgotten here. */
  retainVersions(name: string, versions: ReadonlySet<number>): void
  setRuntime(spec: RuntimeSpec): void
}

export interface StoreSyncOptions {
  store: Store
  target: SyncTarget
  log: Logger
}

/**
 * Keeps this replica's routes in step with the shared store (issue 11). A change announced by another
 * replica is read back from the store and applied — a deploy routes here within a round trip, a delete drains
 * here — and a resync (after a reconnect, when announcements may have been missed, and periodically) reads
 * every head and applies what differs, so a missed message never leaves a stale route for long. Changes of one
 * name are applied in order; a read that fails (Redis away) is left to the resync that follows the reconnect.
 */
export class StoreSync {
  readonly #o: StoreSyncOptions
  readonly #order = new KeyedMutex()
  readonly #unsubscribe: () => void
  #resyncing: Promise<void> | undefined
  #again = false
  #closed = false

  constructor(o: StoreSyncOptions) {
    this.#o = o
    const changes = o.store.changes
    this.#unsubscribe = changes === undefined ? () => {} : changes((c) => this.#on(c))
  }

  close(): void {
    this.#closed = true
    this.#unsubscribe()
  }

  /** Reads every head and runtime and applies what differs; resolves when done (a resync asked meanwhile runs after). */
  resync(): Promise<void> {
    if (this.#resyncing !== undefined) {
      this.#again = true
      return this.#resyncing
    }
    this.#resyncing = (async () => {
      do {
        this.#again = false
        await this.#resyncOnce().catch((err: unknown) => this.#o.log.warn({ err }, 'resync from the shared store failed; the next one retries'))
      } while (this.#again && !this.#closed)
    })().finally(() => { this.#resyncing = undefined })
    return this.#resyncing
  }

  /** Applies the stored state of one function (read now). */
  async function(name: string): Promise<void> {
    return this.#order.run(`fn:${name}`, async () => this.#apply(name, await this.#o.store.getFunction(name)))
  }

  #on(c: StoreChange): void {
    if (this.#closed) return
    const done = (err: unknown): void => this.#o.log.warn({ err, change: c }, 'applying a change from another replica failed; the next resync retries')
    if (c.kind === 'resync') void this.resync()
    else if (c.kind === 'function') this.function(c.name).catch(done)
    else this.#runtime(c.name).catch(done)
  }

  async #runtime(name: string): Promise<void> {
    const spec = await this.#o.store.getRuntime(name)
    if (spec !== undefined) this.#o.target.setRuntime(spec)
  }

  async #resyncOnce(): Promise<void> {
    const { store, target } = this.#o
    for (const spec of await store.listRuntimes()) target.setRuntime(spec)
    const heads = new Map((await store.listFunctions()).map((h) => [h.name, h]))
    const names = new Set([...target.knownFunctions(), ...heads.keys()])
    for (const name of names) {
      await this.#order.run(`fn:${name}`, async () => {
        const listed = heads.get(name)
        const known = target.head(name)
        if (listed !== undefined && known !== undefined && same(listed, known)) return
        // Read again under the name's turn: a change applied since the list must not be undone by it.
        await this.#apply(name, await store.getFunction(name))
      })
    }
  }

  async #apply(name: string, stored: FunctionRecord | undefined): Promise<void> {
    const { target } = this.#o
    const known = target.head(name)
    if (stored === undefined) {
      if (known !== undefined) target.removed(name)
      return
    }
    if (known !== undefined && same(known, stored)) return
    // Deleted and deployed again while this replica was not listening: its versions start over.
    if (known !== undefined && known.createdAt !== stored.createdAt) target.removed(name)
    target.retainVersions(name, new Set((await this.#o.store.listVersions(name)).map((v) => v.version)))
    await target.routed(stored)
  }
}

function same(a: FunctionRecord, b: FunctionRecord): boolean {
  return a.updatedAt === b.updatedAt && JSON.stringify(a) === JSON.stringify(b)
}
