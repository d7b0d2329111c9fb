import type { Logger } from 'pino'
import type { CodeStore } from '../codestore/code-store.js'
import { aliasesOf, assertAlias, LATEST, lastVersionOf, liveVersions, parseAliasBody, sharesOf, targetsOf } from '../common/aliases.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import type { Locks } from '../common/keyed-mutex.js'
import type { Metrics } from '../common/metrics.js'
import type { Store } from '../common/store.js'
import type { AliasTarget, CanaryState, FunctionRecord } from '../common/types.js'
import { stripHead, type Executor } from '../executor/executor.js'

export interface ReleasesDeps {
  store: Store
  executor: Executor
  codeStore: CodeStore
  events: EventLog
  metrics: Metrics
  log: Logger
  /** The per-name locks every writer of a function holds (the deployer's). */
  locks: Locks
  /** Versions kept per function beyond those an alias, a canary or a pin holds (KINDLING_KEEP_VERSIONS). */
  keepVersions: number
}

/** A version as `GET /v1/functions/:name/versions` shows it. */
export interface VersionView extends FunctionRecord {
  /** Aliases routing to it, with their share of the alias's calls in percent (`latest`: 100, or a canary's 10). */
  routedBy: Array<{ alias: string; percent: number }>
}

/**
 * Versions, aliases and rollback (issue 15). Every deploy keeps an immutable version; the head of a function
 * (`store.getFunction`) is the version `latest` serves (the heaviest one, when `latest` is weighted) with the
 * function's aliases. Every change of routes is written to the head, then handed to the executor, which
 * moves calls and prewarm pools. Methods named `…Locked` expect the caller to hold the function's lock.
 */
export class Releases {
  readonly #d: ReleasesDeps
  /** Versions held by work that runs across deploys (a workflow run pins the versions it started with). */
  readonly #pins = new Map<string, Map<number, number>>()
  /** Code of pruned versions, removed once no deploy runs (see deploying). */
  readonly #unusedCode = new Set<string>()
  #deploys = 0
  #collecting: Promise<void> | undefined

  constructor(deps: ReleasesDeps) {
    this.#d = deps
  }

  get locks(): Locks {
    return this.#d.locks
  }

  /** The head that lands a new version: `promote` moves `latest` (and ends a canary on it); otherwise the version is only stored. */
  async landLocked(prev: FunctionRecord | undefined, version: FunctionRecord, promote: boolean): Promise<FunctionRecord> {
    const { store } = this.#d
    // A function deployed before versions were kept: its served version becomes a version like any other.
    if (prev !== undefined && prev.aliases === undefined && await store.getVersion(prev.name, prev.version) === undefined) {
      await store.putVersion(stripHead(prev))
    }
    const last = version.version
    let head: FunctionRecord
    if (prev === undefined) {
      head = { ...version, aliases: { [LATEST]: { version: last } }, lastVersion: last }
    } else if (!promote) {
      head = { ...prev, aliases: aliasesOf(prev), lastVersion: last, updatedAt: version.updatedAt }
    } else {
      const canary = endCanary(prev.canary, LATEST, 'aborted', `version ${last} was deployed over it`)
      head = { ...version, createdAt: prev.createdAt, aliases: { ...aliasesOf(prev), [LATEST]: { version: last } }, lastVersion: last, canary }
    }
    await store.putVersion(version)
    await store.putFunction(head)
    return head
  }

  /** Every kept version of the function, oldest first, with the aliases that route to it. */
  async list(name: string): Promise<{ versions: VersionView[]; keep: number }> {
    const head = await this.#head(name)
    const aliases = aliasesOf(head)
    const views = (await this.#versions(head)).map((v): VersionView => ({ ...v, routedBy: aliasesRouting(aliases, v.version) }))
    return { versions: views, keep: this.#d.keepVersions }
  }

  async get(name: string, version: number): Promise<VersionView> {
    const head = await this.#head(name)
    const v = await this.#d.executor.version(name, version)
    return { ...v, routedBy: aliasesRouting(aliasesOf(head), version) }
  }

  async aliases(name: string): Promise<Record<string, AliasTarget>> {
    return aliasesOf(await this.#head(name))
  }

  /** `PUT /v1/functions/:name/aliases/:alias`; resolves the function's aliases after it. */
  async setAlias(name: string, alias: string, raw: unknown, actor: string): Promise<Record<string, AliasTarget>> {
    assertAlias(alias)
    return this.#d.locks.run(name, async () => {
      const head = await this.#head(name)
      const kept = new Set((await this.#versions(head)).map((v) => v.version))
      const target = parseAliasBody(raw, (v) => kept.has(v))
      if (head.canary?.state === 'running' && head.canary.alias === alias) {
        throw new KdlError('KDL_ERR_CANARY_CONFLICT', `a canary of version ${head.canary.to} runs on alias "${alias}": abort it first (DELETE /v1/functions/${name}/canary)`)
      }
      const next = await this.reheadLocked(head, { aliases: { ...aliasesOf(head), [alias]: target } })
      this.#d.events.add({ type: 'alias-set', function: name, message: `alias ${alias} → ${describe(target)}`, data: { alias, target, by: actor } })
      return aliasesOf(next)
    })
  }

  async deleteAlias(name: string, alias: string): Promise<void> {
    if (alias === LATEST) throw new KdlError('KDL_ERR_BAD_SPEC', 'the latest alias cannot be deleted: it is what the bare name serves')
    return this.#d.locks.run(name, async () => {
      const head = await this.#head(name)
      const aliases = { ...aliasesOf(head) }
      if (aliases[alias] === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no alias "${alias}"`)
      if (head.canary?.state === 'running' && head.canary.alias === alias) {
        throw new KdlError('KDL_ERR_CANARY_CONFLICT', `a canary runs on alias "${alias}": abort it first`)
      }
      delete aliases[alias]
      await this.reheadLocked(head, { aliases })
      this.#d.events.add({ type: 'alias-deleted', function: name, message: `alias ${alias} deleted`, data: { alias } })
    })
  }

  /**
   * `latest` serves `to` (default: the newest kept version below the one it serves now) from the next call on;
   * a canary running on `latest` ends as rolled back. Instant: the version's code is in the cache, its
   * instances and prewarm pool come back as calls and refills need them.
   */
  async rollback(name: string, to: number | undefined, actor: string): Promise<{ from: number; to: number; head: FunctionRecord }> {
    return this.#d.locks.run(name, async () => {
      const head = await this.#head(name)
      const from = head.version
      const kept = (await this.#versions(head)).map((v) => v.version)
      const target = to ?? kept.filter((v) => v < from).pop()
      if (target === undefined) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no kept version before ${from} to roll back to`)
      if (!kept.includes(target)) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `function "${name}" has no version ${target} (never deployed, or pruned)`)
      const canary = endCanary(head.canary, LATEST, 'aborted', `rolled back to version ${target}`)
      const next = await this.reheadLocked(head, { aliases: { ...aliasesOf(head), [LATEST]: { version: target } }, canary })
      this.#d.events.add({ type: 'rolled-back', function: name, message: `latest rolled back from version ${from} to ${target}`, data: { from, to: target, by: actor } })
      return { from, to: target, head: next }
    })
  }

  /**
   * Writes a head with changed aliases or canary (its spec fields become those of the version `latest`
   * serves most) and routes by it. Under the function's lock.
   */
  async reheadLocked(head: FunctionRecord, change: { aliases?: Record<string, AliasTarget>; canary?: CanaryState | undefined }): Promise<FunctionRecord> {
    const aliases = change.aliases ?? aliasesOf(head)
    const main = targetsOf(aliases[LATEST] ?? { version: head.version })[0]?.[0] ?? head.version
    const served = main === head.version ? stripHead(head) : await this.#d.executor.version(head.name, main)
    const next: FunctionRecord = {
      ...served, createdAt: head.createdAt, updatedAt: new Date().toISOString(), aliases, lastVersion: lastVersionOf(head),
      canary: 'canary' in change ? change.canary : head.canary,
    }
    await this.#d.store.putFunction(next)
    await this.#d.executor.routed(next)
    return next
  }

  /**
   * Runs a deploy — from before its code is stored until it landed or failed. Code of pruned versions is
   * removed only while no deploy runs (and no deploy starts while it is removed), so a deploy that stores
   * the same code as a pruned version never loses it under its trial load.
   */
  async deploying<T>(work: () => Promise<T>): Promise<T> {
    while (this.#collecting !== undefined) await this.#collecting
    this.#deploys++
    try {
      return await work()
    } finally {
      this.#deploys--
      this.#collect()
    }
  }

  #collect(): void {
    if (this.#deploys > 0 || this.#collecting !== undefined || this.#unusedCode.size === 0) return
    const hashes = new Set(this.#unusedCode)
    this.#unusedCode.clear()
    this.#collecting = this.#dropUnusedCode(hashes)
      .catch((err: unknown) => this.#d.log.warn({ err }, 'removing pruned code failed'))
      .finally(() => { this.#collecting = undefined })
  }

  /** Resolves once pruned code waiting for removal is gone (tests, shutdown). */
  async settled(): Promise<void> {
    this.#collect()
    while (this.#collecting !== undefined) await this.#collecting
  }

  /** The function was deleted: its pins and metric series go with it. */
  removed(name: string): void {
    this.#pins.delete(name)
    void this.#d.metrics.forgetVersion(name)
  }

  /** Holds a version against pruning until the returned function is called (a workflow run's pinned versions). */
  pin(name: string, version: number): () => void {
    let m = this.#pins.get(name)
    if (m === undefined) { m = new Map(); this.#pins.set(name, m) }
    m.set(version, (m.get(version) ?? 0) + 1)
    let done = false
    return () => {
      if (done) return
      done = true
      const n = (m.get(version) ?? 1) - 1
      if (n > 0) m.set(version, n)
      else m.delete(version)
      if (m.size === 0 && this.#pins.get(name) === m) this.#pins.delete(name)
    }
  }

  /**
   * Drops the versions beyond the newest `keepVersions` that nothing uses — no alias, no running canary, no
   * pin — and then their code, unless another version of any function (or a deploy in flight) has the same
   * hash. Resolves the pruned version numbers.
   */
  async pruneLocked(head: FunctionRecord): Promise<number[]> {
    const { store, executor, keepVersions } = this.#d
    const all = await store.listVersions(head.name)
    const last = lastVersionOf(head)
    const held = liveVersions(head)
    for (const v of this.#pins.get(head.name)?.keys() ?? []) held.add(v)
    const stored = all.filter((v) => v.version <= last)
    const newest = new Set(stored.slice(-keepVersions).map((v) => v.version))
    // Above the head's last version: written by a deploy that crashed before its head (never visible).
    const doomed = all.filter((v) => v.version > last || (!newest.has(v.version) && !held.has(v.version)))
    if (doomed.length === 0) return []
    for (const v of doomed) {
      await store.deleteVersion(head.name, v.version)
      executor.forgetVersion(head.name, v.version)
      void this.#d.metrics.forgetVersion(head.name, String(v.version))
    }
    const pruned = doomed.filter((v) => v.version <= last).map((v) => v.version)
    if (pruned.length > 0) {
      this.#d.events.add({ type: 'versions-pruned', function: head.name, message: `versions ${pruned.join(', ')} pruned`, data: { versions: pruned } })
    }
    for (const v of doomed) this.#unusedCode.add(v.codeHash)
    this.#collect()
    return pruned
  }

  async #dropUnusedCode(candidates: Set<string>): Promise<void> {
    const { store, codeStore } = this.#d
    for (const fn of await store.listFunctions()) {
      candidates.delete(fn.codeHash)
      for (const v of await store.listVersions(fn.name)) candidates.delete(v.codeHash)
      if (candidates.size === 0) return
    }
    for (const hash of candidates) {
      await codeStore.remove(hash).catch((err: unknown) => this.#d.log.warn({ err, hash }, 'removing pruned code failed'))
    }
    if (candidates.size > 0) this.#d.log.info({ hashes: [...candidates] }, 'code of pruned versions removed')
  }

  /** The function's stored head; KDL_ERR_FN_NOT_FOUND when it is not deployed. */
  head(name: string): Promise<FunctionRecord> {
    return this.#head(name)
  }

  async #head(name: string): Promise<FunctionRecord> {
    const head = await this.#d.store.getFunction(name)
    if (head === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
    return head
  }

  /** The kept versions of a head, oldest first (a head from before versions were kept counts as one). */
  async #versions(head: FunctionRecord): Promise<FunctionRecord[]> {
    const last = lastVersionOf(head)
    const stored = (await this.#d.store.listVersions(head.name)).filter((v) => v.version <= last)
    if (!stored.some((v) => v.version === head.version)) {
      stored.push(stripHead(head))
      stored.sort((a, b) => a.version - b.version)
    }
    return stored
  }
}

/** A canary on `alias` that a change of it ends; other canaries (and ended ones) stay as they are. */
export function endCanary(c: CanaryState | undefined, alias: string, state: CanaryState['state'], reason: string): CanaryState | undefined {
  if (c === undefined || c.state !== 'running' || c.alias !== alias) return c
  return { ...c, state, reason, endedAt: new Date().toISOString() }
}

function aliasesRouting(aliases: Record<string, AliasTarget>, version: number): Array<{ alias: string; percent: number }> {
  const out: Array<{ alias: string; percent: number }> = []
  for (const [alias, target] of Object.entries(aliases)) {
    const mine = sharesOf(target).find(([v]) => v === version)
    if (mine !== undefined) out.push({ alias, percent: Math.round(mine[1] * 1000) / 10 })
  }
  return out
}

export function describe(target: AliasTarget): string {
  if ('version' in target) return `version ${target.version}`
  return sharesOf(target).map(([v, share]) => `${v}: ${Math.round(share * 100)} %`).join(', ')
}
