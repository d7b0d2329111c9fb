import type { FastifyInstance } from 'fastify'
import type { BuildRecord } from '../builder/builder.js'
import type { StoredCode } from '../codestore/code-store.js'
import { lastVersionOf } from '../common/aliases.js'
import { isKdlError, KdlError, type ErrorCode } from '../common/errors.js'
import { assertName, functionBodyProblems, parseRuntimeBody, runtimeBodyProblems } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord, FunctionSpec, RuntimeSpec } from '../common/types.js'
import type { Instance } from '../poolmgr/instance.js'
import type { Deployer, PreparedFunction } from './deployer.js'
import type { Locks } from '../common/keyed-mutex.js'
import { actorOf } from './releases.js'
import * as S from './route-schemas.js'

export interface ApplyDeps {
  deployer: Deployer
  store: Store
  runtimeKinds: readonly string[]
}

export type ApplyAction = 'create' | 'update' | 'unchanged' | 'delete'

/** One line of an apply's plan. */
export interface ApplyChange {
  kind: 'function' | 'runtime'
  name: string
  action: ApplyAction
  /** The spec fields an update changes (`code` when the code or its build differs). */
  fields?: string[]
  /** The version the function has after the apply (created, updated or unchanged). */
  version?: number
}

/** One thing wrong in an apply: which entry, which of its body's fields (`[]`: the entry as a whole), and what. */
export interface ApplyProblem {
  kind: 'function' | 'runtime' | 'apply'
  name?: string
  field?: string[]
  code: ErrorCode
  message: string
}

/** Keys a project may hold once the platform has them (issue 14 names them); refused until then. */
const NOT_YET = ['triggers', 'workflows']
const BODY_FIELDS = ['functions', 'runtimes', 'prune', 'dryRun']
/** Trial loads an apply runs at once. */
const TRIAL_CONCURRENCY = 4

interface ApplyBody {
  functions: Array<[string, unknown]>
  runtimes: Array<[string, unknown]>
  prune: boolean
  dryRun: boolean
}

interface Plan {
  changes: ApplyChange[]
  runtimes: RuntimeSpec[]
  functions: Array<{ prepared: PreparedFunction; prev: FunctionRecord | undefined }>
  deletes: string[]
}

/**
 * `POST /v1/apply` (issue 14): a whole project — functions and runtimes — made true at once. Everything is checked
 * and every problem reported before anything changes; every created or updated function is built and trial-loaded
 * before any lands; then all land. `dryRun` answers the plan only (`kindling diff`); `prune` deletes the functions
 * the project no longer names.
 */
export function registerApplyRoute(app: FastifyInstance, deps: ApplyDeps): void {
  const { deployer, store } = deps

  app.post('/v1/apply', { schema: S.applyProject }, async (request) => deployer.deploying(async () => {
    const body = parseApplyBody(request.body)
    const problems: ApplyProblem[] = []
    const runtimeBodies = checkRuntimes(body.runtimes, deps.runtimeKinds, problems)
    const prepared: PreparedFunction[] = []
    for (const [name, raw] of body.functions) {
      const p = await prepareFunction(deployer, name, raw, problems)
      if (p !== undefined) prepared.push(p)
    }
    if (problems.length > 0) throw problemsError(problems)

    const named = new Set(prepared.map((p) => p.name))
    const unnamed = async (): Promise<string[]> => (await store.listFunctions()).map((r) => r.name).filter((n) => !named.has(n)).sort()
    /** The plan against the store now; `scope`: the only functions a prune may delete (those whose locks are held). */
    const plan = async (scope?: Set<string>): Promise<Plan> => {
      const runtimes: RuntimeSpec[] = []
      const changes: ApplyChange[] = []
      for (const [name, raw] of runtimeBodies) {
        const current = await store.getRuntime(name)
        const next = parseRuntimeBody(name, raw, current)
        changes.push(runtimeChange(next, current))
        runtimes.push(next)
      }
      const functions: Plan['functions'] = []
      for (const p of prepared) {
        const prev = await store.getFunction(p.name)
        const change = functionChange(p, prev)
        changes.push(change)
        if (change.action !== 'unchanged') functions.push({ prepared: p, prev })
      }
      const deletes = body.prune ? (await unnamed()).filter((n) => scope === undefined || scope.has(n)) : []
      for (const name of deletes) changes.push({ kind: 'function', name, action: 'delete' })
      return { changes, runtimes, functions, deletes }
    }
    if (body.dryRun) return { changes: (await plan()).changes, applied: false }

    // From here on this apply is the latest deploy of every name it changes: a PUT still building lands no more.
    // (An apply that leaves a function as it is does not cancel a deploy of it in flight.)
    const touched = [...named, ...(body.prune ? await unnamed() : [])]
    const seqs = new Map((await plan()).changes.filter((c) => c.kind === 'function' && c.action !== 'unchanged').map((c) => [c.name, deployer.claim(c.name)]))

    // Builds run before the locks are taken (they may take minutes), for what the store says is changing now.
    const built = new Map<string, Promise<{ code: StoredCode; build: BuildRecord | undefined }>>()
    const materialize = (p: PreparedFunction): Promise<{ code: StoredCode; build: BuildRecord | undefined }> => {
      let m = built.get(p.name)
      if (m === undefined) built.set(p.name, m = deployer.materialize(p))
      return m
    }
    const changing: PreparedFunction[] = []
    for (const p of prepared) if ((await store.getFunction(p.name))?.codeHash !== p.targetHash) changing.push(p)
    await settleOrThrow(changing, changing.length, materialize, 'a build failed')

    const keys = [...runtimeBodies.keys()].map((n) => `runtime:${n}`).concat(touched).sort()
    return withLocks(deployer.locks, keys, async () => {
      const superseded = [...seqs].filter(([n, seq]) => !deployer.isLatest(n, seq)).map(([n]) => n)
      if (superseded.length > 0) {
        throw new KdlError('KDL_ERR_DEPLOY_SUPERSEDED', `a later deploy or delete of ${superseded.map((n) => `"${n}"`).join(', ')} was made while this apply was building; nothing was applied`)
      }
      const p = await plan(new Set(touched))
      const records = new Map<string, FunctionRecord>()
      await settleOrThrow(p.functions, p.functions.length, async ({ prepared: fn, prev }) => {
        const { code, build } = await materialize(fn)
        records.set(fn.name, deployer.recordOf(fn.name, fn.spec, code, build, prev, actorOf(request)))
      }, 'a build failed')
      const trials = new Map<string, Instance>()
      try {
        await settleOrThrow(p.functions, TRIAL_CONCURRENCY, async ({ prepared: fn }) => {
          trials.set(fn.name, await deployer.trialLoad(records.get(fn.name)!))
        }, 'a trial load failed')
      } catch (err) {
        await Promise.all([...trials.values()].map((inst) => deployer.discard(inst)))
        throw err
      }
      // Everything loaded: land it all. Only the store failing now (a disk error) could leave part of it applied.
      for (const spec of p.runtimes) await deployer.setRuntime(spec)
      for (const [name, record] of records) {
        const trial = trials.get(name)!
        trials.delete(name)
        try {
          await deployer.land(record, trial)
        } catch (err) {
          await Promise.all([...trials.values()].map((inst) => deployer.discard(inst)))
          throw err
        }
      }
      for (const name of p.deletes) await deployer.remove(name)
      const applied = p.changes.some((c) => c.action !== 'unchanged')
      if (applied) request.log.info({ changes: p.changes.filter((c) => c.action !== 'unchanged').length }, 'project applied')
      return { changes: p.changes, applied }
    })
  }))
}

function parseApplyBody(raw: unknown): ApplyBody {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new KdlError('KDL_ERR_BAD_SPEC', 'an apply body must be a JSON object')
  const body = raw as Record<string, unknown>
  const problems: string[] = []
  for (const key of Object.keys(body)) {
    if (NOT_YET.includes(key)) problems.push(`"${key}" is not supported yet by this platform`)
    else if (!BODY_FIELDS.includes(key)) problems.push(`unknown field "${key}"`)
  }
  const mapOf = (key: string): Array<[string, unknown]> => {
    const v = body[key]
    if (v === undefined || v === null) return []
    if (typeof v !== 'object' || Array.isArray(v)) {
      problems.push(`"${key}" must be an object of name → spec`)
      return []
    }
    return Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  }
  const flag = (key: string): boolean => {
    const v = body[key]
    if (v !== undefined && typeof v !== 'boolean') problems.push(`"${key}" must be true or false`)
    return v === true
  }
  const out = { functions: mapOf('functions'), runtimes: mapOf('runtimes'), prune: flag('prune'), dryRun: flag('dryRun') }
  if (problems.length > 0) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `invalid apply body: ${problems.join('; ')}`, { details: { errors: problems.map((message) => ({ kind: 'apply', code: 'KDL_ERR_BAD_SPEC', message })) } })
  }
  return out
}

function checkRuntimes(entries: Array<[string, unknown]>, kinds: readonly string[], problems: ApplyProblem[]): Map<string, unknown> {
  const ok = new Map<string, unknown>()
  for (const [name, raw] of entries) {
    const bad = (message: string, field: string[] = []): void => { problems.push({ kind: 'runtime', name, field, code: 'KDL_ERR_BAD_SPEC', message }) }
    try {
      assertName('runtime', name)
    } catch (err) {
      bad(messageOf(err))
      continue
    }
    if (!kinds.includes(name)) {
      bad(`runtime "${name}" is not one this backend can run (${kinds.join(', ')})`)
      continue
    }
    const found = runtimeBodyProblems(raw)
    for (const p of found) bad(p.message, p.path)
    if (found.length === 0) ok.set(name, raw)
  }
  return ok
}

/** The deployer's checks and code storage for one function, each failure recorded against the field it concerns. */
async function prepareFunction(deployer: Deployer, name: string, raw: unknown, problems: ApplyProblem[]): Promise<PreparedFunction | undefined> {
  const bad = (err: unknown, field: string[]): undefined => {
    if (!isKdlError(err)) throw err
    problems.push({ kind: 'function', name, field, code: err.code, message: err.message })
    return undefined
  }
  try {
    assertName('function', name)
  } catch (err) {
    return bad(err, [])
  }
  const found = functionBodyProblems(raw)
  for (const p of found) bad(new KdlError('KDL_ERR_BAD_SPEC', p.message), p.path)
  if (found.length > 0) return undefined
  const body = raw as { runtime: string; archive?: unknown }
  try {
    deployer.assertRuntime(body.runtime)
  } catch (err) {
    return bad(err, ['runtime'])
  }
  let checked: ReturnType<Deployer['specOf']>
  try {
    checked = deployer.specOf(raw)
  } catch (err) {
    return bad(err, [])
  }
  const codeField = body.archive !== undefined ? 'archive' : 'code'
  let code: StoredCode
  try {
    code = await deployer.storeCode(checked.body, checked.spec)
  } catch (err) {
    return bad(err, isKdlError(err) && err.code === 'KDL_ERR_BAD_SPEC' ? ['entrypoint'] : [codeField])
  }
  try {
    const plan = await deployer.buildPlan(code, checked.spec.runtime)
    return { name, spec: checked.spec, code, plan, targetHash: deployer.targetHash(code, plan) }
  } catch (err) {
    return bad(err, [codeField])
  }
}

function runtimeChange(next: RuntimeSpec, current: RuntimeSpec | undefined): ApplyChange {
  if (current === undefined) return { kind: 'runtime', name: next.name, action: 'create' }
  const fields = (['poolSize', 'memoryMb', 'cpu', 'image'] as const).filter((k) => !same(next[k], current[k]))
  return fields.length === 0 ? { kind: 'runtime', name: next.name, action: 'unchanged' } : { kind: 'runtime', name: next.name, action: 'update', fields }
}

function functionChange(p: PreparedFunction, prev: FunctionRecord | undefined): ApplyChange {
  if (prev === undefined) return { kind: 'function', name: p.name, action: 'create', version: 1 }
  const fields: string[] = (Object.keys(p.spec) as Array<keyof FunctionSpec>).filter((k) => !same(p.spec[k], prev[k]))
  if (p.targetHash !== prev.codeHash) fields.push('code')
  return fields.length === 0
    ? { kind: 'function', name: p.name, action: 'unchanged', version: prev.version }
    : { kind: 'function', name: p.name, action: 'update', fields, version: lastVersionOf(prev) + 1 }
}

/** Equal as stored: scalars by value, objects (env) by their sorted entries; absent is undefined. */
function same(a: unknown, b: unknown): boolean {
  if (typeof a === 'object' && a !== null && typeof b === 'object' && b !== null) {
    const canon = (o: object): string => JSON.stringify(Object.entries(o).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
    return canon(a) === canon(b)
  }
  return a === b
}

/**
 * Runs `work` on every item (at most `limit` at once) and waits for all; when any failed, throws one error naming
 * each failing function (the first failure's code, every failure under `details.errors`).
 */
async function settleOrThrow<T extends { name: string } | { prepared: { name: string } }>(items: T[], limit: number, work: (item: T) => Promise<unknown>, what: string): Promise<void> {
  const failures: ApplyProblem[] = []
  const queue = [...items]
  const worker = async (): Promise<void> => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) {
      try {
        await work(item)
      } catch (err) {
        if (!isKdlError(err)) throw err
        const name = 'prepared' in item ? item.prepared.name : item.name
        failures.push({ kind: 'function', name, field: ['code'], code: err.code, message: err.message })
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker))
  if (failures.length > 0) throw problemsError(failures.sort((a, b) => ((a.name ?? '') < (b.name ?? '') ? -1 : 1)), what)
}

function problemsError(problems: ApplyProblem[], what?: string): KdlError {
  const first = problems[0]!
  const list = problems.map((p) => `${p.kind} "${p.name ?? ''}"${p.field !== undefined && p.field.length > 0 ? ` (${p.field.join('.')})` : ''}: ${p.message}`).join('; ')
  const head = what ?? `${problems.length} ${problems.length === 1 ? 'problem' : 'problems'} in the project`
  return new KdlError(first.code, `${head}, nothing was applied: ${list}`, { details: { errors: problems } })
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Runs `work` holding every key's lock, taken in the given (sorted) order so two applies never deadlock. */
function withLocks<T>(locks: Locks, keys: string[], work: () => Promise<T>): Promise<T> {
  const [first, ...rest] = keys
  return first === undefined ? work() : locks.run(first, () => withLocks(locks, rest, work))
}
