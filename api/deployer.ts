import type { FastifyBaseLogger } from 'fastify'
import { assembledHash, type Builder, type BuildPlan, type BuildRecord } from '../builder/builder.js'
import type { CodeStore, StoredCode } from '../codestore/code-store.js'
import { KdlError } from '../common/errors.js'
import { functionSpecOf, parseFunctionBody, type FunctionBody } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord, FunctionSpec, RuntimeSpec } from '../common/types.js'
import type { Executor } from '../executor/executor.js'
import type { Instance } from '../poolmgr/instance.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import { lastVersionOf } from '../common/aliases.js'
import type { Locks } from '../common/keyed-mutex.js'
import type { Releases } from '../releases/versions.js'

export interface DeployerDeps {
  store: Store
  codeStore: CodeStore
  builder?: Builder | undefined
  executor: Executor
  pools: PoolManager
  /** Versions and aliases (issue 15): a deploy lands as a new version; old ones are pruned. */
  releases: Releases
  runtimeKinds: readonly string[]
  log: FastifyBaseLogger
  /** Puts a version's code where every replica can fetch it, before the version is committed (issue 11). */
  shareCode?: ((hash: string) => Promise<void>) | undefined
  /** Told after a function was deleted (its logs go with it). */
  removed?: ((name: string) => void) | undefined
}

/** A deploy body checked and its code stored: what it deploys, and what it would build first. */
export interface PreparedFunction {
  name: string
  spec: FunctionSpec
  /** The function's own files. */
  code: StoredCode
  /** Its dependencies, when its package.json declares some (issue 9). */
  plan: BuildPlan | undefined
  /** The code hash it is deployed under: its files' hash, or that of its files assembled with its build. */
  targetHash: string
}

/**
 * The steps every way of deploying shares — `PUT /v1/functions/:name` and `POST /v1/apply` (issue 14) — so the
 * two never disagree: validation, storing code, the version record, the trial load, landing it, removing one.
 * One mutex per name (`runtime:<name>` for runtimes) orders them, whichever route they came by.
 */
export class Deployer {
  readonly locks: Locks
  readonly #d: DeployerDeps
  /**
   * Deploys of a name in request order: a deploy that waited for its build while a later deploy (or a delete,
   * or an apply naming it) was made does not land over it.
   */
  readonly #latest = new Map<string, number>()
  #requests = 0

  constructor(deps: DeployerDeps) {
    this.#d = deps
    this.locks = deps.releases.locks
  }

  /** Runs a whole deploy, from before its code is stored to its landing (Releases.deploying: pruned code waits). */
  deploying<T>(work: () => Promise<T>): Promise<T> {
    return this.#d.releases.deploying(work)
  }

  /** Records a deploy or delete of `name` made now; resolves its sequence number for `assertLatest`. */
  claim(name: string): number {
    const seq = ++this.#requests
    this.#latest.set(name, seq)
    return seq
  }

  isLatest(name: string, seq: number): boolean {
    return this.#latest.get(name) === seq
  }

  assertLatest(name: string, seq: number): void {
    if (!this.isLatest(name, seq)) {
      throw new KdlError('KDL_ERR_DEPLOY_SUPERSEDED', `a later deploy or delete of "${name}" was made while this one was building; it was not applied`)
    }
  }

  /** Validates a deploy body (every default filled in) and that its runtime is one this platform runs. */
  specOf(raw: unknown): { body: FunctionBody; spec: FunctionSpec } {
    const body = parseFunctionBody(raw)
    const spec = functionSpecOf(body)
    this.assertRuntime(spec.runtime)
    return { body, spec }
  }

  assertRuntime(runtime: string): void {
    const kinds = this.#d.runtimeKinds
    if (!kinds.includes(runtime) || this.#d.pools.runtime(runtime) === undefined) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `unknown runtime "${runtime}" (configured: ${kinds.join(', ')})`)
    }
  }

  /** Stores a body's code (content-addressed) and checks its entrypoint is in it. */
  async storeCode(body: FunctionBody, spec: FunctionSpec): Promise<StoredCode> {
    const { codeStore } = this.#d
    const code = body.archive !== undefined
      ? await codeStore.putArchive(decodeArchive(body.archive))
      : await codeStore.putInline(body.code ?? '')
    await codeStore.assertEntrypoint(code.dir, spec.entrypoint)
    return code
  }

  /** What building the code needs (undefined: nothing, or no builder). */
  async buildPlan(code: StoredCode, runtime: string): Promise<BuildPlan | undefined> {
    return this.#d.builder === undefined ? undefined : this.#d.builder.plan(code.dir, runtime)
  }

  /** specOf + storeCode + buildPlan: everything but the build itself. */
  async prepare(name: string, raw: unknown): Promise<PreparedFunction> {
    const { body, spec } = this.specOf(raw)
    const code = await this.storeCode(body, spec)
    const plan = await this.buildPlan(code, spec.runtime)
    return { name, spec, code, plan, targetHash: this.targetHash(code, plan) }
  }

  /** The code hash a function is deployed under: its files', or theirs assembled with the build of `plan`. */
  targetHash(code: StoredCode, plan: BuildPlan | undefined): string {
    return plan === undefined || this.#d.builder === undefined ? code.hash : assembledHash(code.hash, plan.inputsHash)
  }

  /** The deployable code of a prepared function: built (or a finished build of the same inputs reused) and assembled. */
  async materialize(p: PreparedFunction): Promise<{ code: StoredCode; build: BuildRecord | undefined }> {
    const builder = this.#d.builder
    if (p.plan === undefined || builder === undefined) return { code: p.code, build: undefined }
    const ticket = await builder.ensure(p.plan, p.name)
    await ticket.done
    return { code: await builder.assemble(p.code, p.plan.inputsHash), build: ticket.record }
  }

  /** The next version's record of `name` over `prev` (its head, if any); numbers are never reused. */
  recordOf(name: string, spec: FunctionSpec, code: StoredCode, build: BuildRecord | undefined, prev: FunctionRecord | undefined, deployedBy?: string): FunctionRecord {
    const now = new Date().toISOString()
    return {
      name, ...spec, version: prev === undefined ? 1 : lastVersionOf(prev) + 1, codeHash: code.hash, createdAt: prev?.createdAt ?? now, updatedAt: now,
      ...(build === undefined ? {} : { build: { id: build.id, inputsHash: build.inputsHash } }),
      ...(deployedBy === undefined ? {} : { deployedBy }),
    }
  }

  /** Loads the candidate into a fresh instance; code that does not load is refused here with the loader's message. */
  trialLoad(record: FunctionRecord): Promise<Instance> {
    return this.#d.executor.trialLoad(record)
  }

  /** Drops a trial instance of a version that is not landing. */
  async discard(trial: Instance): Promise<void> {
    await this.#d.pools.destroy(trial)
  }

  /**
   * Stores a trial-loaded version and, with `promote` (the default), routes `latest` to it; then prunes the
   * versions beyond those kept (call under the name's lock). Resolves the function's head.
   */
  async land(record: FunctionRecord, trial: Instance, promote = true): Promise<FunctionRecord> {
    const { releases, store, executor } = this.#d
    let head: FunctionRecord
    try {
      await this.#d.shareCode?.(record.codeHash)
      head = await releases.landLocked(await store.getFunction(record.name), record, promote)
    } catch (err) {
      await this.discard(trial)
      throw err
    }
    await executor.deployed(head, record, trial)
    this.#d.log.info({ fn: record.name, version: record.version, serving: head.version }, 'function deployed')
    await releases.pruneLocked(head).catch((err: unknown) => this.#d.log.error({ err, fn: record.name }, 'pruning old versions failed'))
    return head
  }

  /** Trial-loads and lands one version (call under the name's lock). */
  async deploy(record: FunctionRecord, promote = true): Promise<FunctionRecord> {
    return this.land(record, await this.trialLoad(record), promote)
  }

  /** Stores a runtime's spec and reconfigures its generic pool (call under `runtime:<name>`). */
  async setRuntime(spec: RuntimeSpec): Promise<void> {
    await this.#d.store.putRuntime(spec)
    this.#d.pools.setRuntime(spec)
  }

  /** Deletes a function (call under the name's lock); false when it was not deployed. */
  async remove(name: string): Promise<boolean> {
    if (!await this.#d.store.deleteFunction(name)) return false
    this.#d.executor.removed(name)
    this.#d.removed?.(name)
    this.#d.releases.removed(name)
    this.#d.log.info({ fn: name }, 'function deleted')
    return true
  }
}

function decodeArchive(b64: string): Buffer {
  if (!/^[A-Za-z0-9+/=\s]+$/.test(b64)) throw new KdlError('KDL_ERR_BAD_ARCHIVE', 'archive must be base64 of a .tar.gz')
  return Buffer.from(b64, 'base64')
}
