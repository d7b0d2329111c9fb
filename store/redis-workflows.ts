import type { Redis } from 'ioredis'
import { KdlError } from '../common/errors.js'
import type { OpenRun, RunEvent, RunRecord, RunStatus, WorkflowRecord, WorkflowStore } from '../common/workflows.js'
import { multiResults, redisCall } from './redis-conn.js'
import {
  assertRun, assertRunId, assertWorkflowName, assertWorkflowVersion, eventJson, isFinished, isRunId, parseRun, parseStored, parseWorkflow,
  runLost, runNotFound, startedMs, wakeScore,
} from './workflow-records.js'

export interface RedisWorkflowStoreOptions {
  /** A command connection (store/redis-conn.ts connectRedis); the caller owns it and closes it. */
  redis: Redis
  /** Key prefix (KINDLING_REDIS_PREFIX), as the RedisStore's. */
  prefix: string
}

/**
 * A cancel once asked for stays asked for: a summary the engine rewrites from what it read before the cancel
 * keeps the flag. The flag is added by appending the member to the JSON text (the later of two equal keys
 * wins in JSON.parse and in cjson): re-encoding with cjson would turn `[]` into `{}` and round numbers to 14 digits.
 */
const KEEP_CANCEL = `
local function with_cancel(json)
  if string.sub(json, -1) ~= '}' then error('the run record is not a JSON object') end
  return string.sub(json, 1, -2) .. ',"cancelRequested":true}'
end
local function cancel_requested(json)
  local ok, run = pcall(cjson.decode, json)
  return ok and type(run) == 'table' and run.cancelRequested == true
end
`

/**
 * KEYS: run, log, open, runs of the workflow. ARGV: run JSON, id, startedAt ms, open score ('' when finished), events….
 * A script, not a MULTI: the writes after the existence check must not happen when the id is taken.
 */
const CREATE_RUN = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2]) end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1`

/** KEYS: claim, run, open. ARGV: owner, run JSON, open score ('' when finished), id, '1' when the JSON has cancelRequested. -1 no run, 0 lost, 1 written. */
const PUT_RUN = `${KEEP_CANCEL}
local cur = redis.call('GET', KEYS[2])
if not cur then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local json = ARGV[2]
if ARGV[5] ~= '1' and cancel_requested(cur) then json = with_cancel(json) end
redis.call('SET', KEYS[2], json)
if ARGV[3] == '' then redis.call('ZREM', KEYS[3], ARGV[4]) else redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4]) end
return 1`

/** KEYS: claim, run, log. ARGV: owner, events…. -1 no run, 0 lost, 1 appended. */
const APPEND = `
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return 1`

/** KEYS: claim. ARGV: owner, ttl ms. Taken when free, extended when already the owner's. */
const CLAIM = `
local cur = redis.call('GET', KEYS[1])
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0`

/** KEYS: claims. ARGV: owner, ttl ms. Resolves the (1-based) positions of the claims no longer the owner's. */
const RENEW = `
local lost = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) else lost[#lost + 1] = i end
end
return lost`

/** KEYS: claim. ARGV: owner. Compare and delete: a claim that lapsed and was taken again is another owner's. */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`

/** KEYS: run. Resolves the run's JSON as it now is (false: no run). */
const REQUEST_CANCEL = `${KEEP_CANCEL}
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local ok, run = pcall(cjson.decode, cur)
if not ok or type(run) ~= 'table' then return cur end
if run.status ~= 'running' or run.cancelRequested == true then return cur end
local json = with_cancel(cur)
redis.call('SET', KEYS[1], json)
return json`

/**
 * The workflow store of several replicas on one Redis (issue 12). Keys, after the prefix: `wf:def:<name>` the
 * head, `wf:defv:<name>` a hash of the versions, `wf:defs` the names; `wf:run:<id>` a run's summary,
 * `wf:log:<id>` its log (a list), `wf:runs:<workflow>` its workflow's runs (a sorted set by start ms),
 * `wf:open` the unfinished runs (scored by wakeAt ms, 0 when due now), `wf:own:<id>` the claim (value: the owner).
 *
 * A replica advances a run only while it holds the claim, and every write of a run checks it in the same
 * script: a replica whose claim lapsed (a long pause, a partition) and was taken over is refused with
 * KDL_ERR_WF_RUN_LOST instead of interleaving its steps with the new owner's. Scripts are sent with EVAL
 * every time (no EVALSHA): a NOSCRIPT fallback re-sends a command late, and appends must land in call order.
 * Durability is Redis's (AOF, as for the RedisStore).
 */
export class RedisWorkflowStore implements WorkflowStore {
  readonly #r: Redis
  readonly #p: string
  #closed = false

  private constructor(o: RedisWorkflowStoreOptions) {
    this.#r = o.redis
    this.#p = o.prefix
  }

  /** A store on a connected client (nothing to set up: the keys come into being with the first writes). */
  static async open(o: RedisWorkflowStoreOptions): Promise<RedisWorkflowStore> {
    return new RedisWorkflowStore(o)
  }

  async putWorkflow(record: WorkflowRecord): Promise<void> {
    assertWorkflowName(record.name)
    assertWorkflowVersion(record.version)
    const json = JSON.stringify(record)
    // One MULTI: the version and the head land together (the file store writes the head last, as its commit).
    await this.#exec(`writing workflow "${record.name}" version ${record.version}`, this.#r.multi()
      .hset(this.#key(`wf:defv:${record.name}`), String(record.version), json)
      .set(this.#key(`wf:def:${record.name}`), json)
      .zadd(this.#key('wf:defs'), 0, record.name))
  }

  async getWorkflow(name: string): Promise<WorkflowRecord | undefined> {
    assertWorkflowName(name)
    const text = await this.#call(`reading workflow "${name}"`, () => this.#r.get(this.#key(`wf:def:${name}`)))
    return text === null ? undefined : parseWorkflow(text, `wf:def:${name}`, name)
  }

  async getWorkflowVersion(name: string, version: number): Promise<WorkflowRecord | undefined> {
    assertWorkflowName(name)
    assertWorkflowVersion(version)
    const text = await this.#call(`reading workflow "${name}" version ${version}`, () => this.#r.hget(this.#key(`wf:defv:${name}`), String(version)))
    return text === null ? undefined : parseWorkflow(text, `wf:defv:${name}#${version}`, name, version)
  }

  async listWorkflows(): Promise<WorkflowRecord[]> {
    const names = await this.#call('listing workflows', () => this.#r.zrange(this.#key('wf:defs'), '0', '-1'))
    if (names.length === 0) return []
    const texts = await this.#call('reading workflows', () => this.#r.mget(names.map((n) => this.#key(`wf:def:${n}`))))
    const out: WorkflowRecord[] = []
    // A workflow deleted between the two reads is simply not listed.
    texts.forEach((text, i) => { if (text !== null) out.push(parseWorkflow(text, `wf:def:${names[i]}`, names[i] as string)) })
    return out
  }

  async listWorkflowVersions(name: string): Promise<WorkflowRecord[]> {
    assertWorkflowName(name)
    const all = await this.#call(`listing the versions of workflow "${name}"`, () => this.#r.hgetall(this.#key(`wf:defv:${name}`)))
    return Object.entries(all)
      .filter(([v]) => /^[1-9][0-9]*$/.test(v))
      .map(([v, text]) => parseWorkflow(text, `wf:defv:${name}#${v}`, name, Number(v)))
      .sort((a, b) => a.version - b.version)
  }

  async deleteWorkflow(name: string): Promise<boolean> {
    assertWorkflowName(name)
    const got = await this.#exec(`deleting workflow "${name}"`, this.#r.multi()
      .del(this.#key(`wf:def:${name}`))
      .del(this.#key(`wf:defv:${name}`))
      .zrem(this.#key('wf:defs'), name))
    return got[0] === 1
  }

  async createRun(run: RunRecord, log: RunEvent[]): Promise<void> {
    assertRun(run)
    const events = eventJson(log, `run ${run.id}`)
    const got = await this.#call(`creating run ${run.id}`, () => this.#r.eval(CREATE_RUN, 4,
      this.#key(`wf:run:${run.id}`), this.#key(`wf:log:${run.id}`), this.#key('wf:open'), this.#key(`wf:runs:${run.workflow}`),
      JSON.stringify(run), run.id, String(startedMs(run)), isFinished(run.status) ? '' : String(wakeScore(run)), ...events))
    if (got !== 1) throw new KdlError('KDL_ERR_INTERNAL', `run ${run.id} already exists`)
  }

  async getRun(id: string): Promise<RunRecord | undefined> {
    if (!isRunId(id)) return undefined
    const text = await this.#call(`reading run ${id}`, () => this.#r.get(this.#key(`wf:run:${id}`)))
    return text === null ? undefined : parseRun(text, `wf:run:${id}`, id)
  }

  async putRun(run: RunRecord, owner: string): Promise<void> {
    assertRun(run)
    const got = await this.#call(`writing run ${run.id}`, () => this.#r.eval(PUT_RUN, 3,
      this.#key(`wf:own:${run.id}`), this.#key(`wf:run:${run.id}`), this.#key('wf:open'),
      owner, JSON.stringify(run), isFinished(run.status) ? '' : String(wakeScore(run)), run.id, run.cancelRequested === true ? '1' : '0'))
    fenced(got, run.id, owner)
  }

  async listRuns(workflow: string, page: { limit: number; before?: string | undefined; status?: RunStatus | undefined }): Promise<RunRecord[]> {
    assertWorkflowName(workflow)
    const key = this.#key(`wf:runs:${workflow}`)
    let start = 0
    if (page.before !== undefined) {
      const before = page.before
      const rank = await this.#call(`listing the runs of "${workflow}"`, () => this.#r.zrevrank(key, before))
      // Nothing is listed after a run this workflow does not have.
      if (rank === null) return []
      start = rank + 1
    }
    const limit = Math.max(0, Math.floor(page.limit))
    // Without a status every id read is listed; with one, read ahead (the filter is on the summaries).
    const batch = page.status === undefined ? limit : Math.max(100, limit * 4)
    const out: RunRecord[] = []
    while (out.length < limit) {
      const ids = await this.#call(`listing the runs of "${workflow}"`, () => this.#r.zrevrange(key, start, start + batch - 1))
      if (ids.length === 0) break
      start += ids.length
      const texts = await this.#call(`reading the runs of "${workflow}"`, () => this.#r.mget(ids.map((id) => this.#key(`wf:run:${id}`))))
      for (const [i, text] of texts.entries()) {
        if (text === null || out.length >= limit) continue
        const run = parseRun(text, `wf:run:${ids[i]}`, ids[i] as string)
        if (page.status === undefined || run.status === page.status) out.push(run)
      }
      if (ids.length < batch) break
    }
    return out
  }

  async append(id: string, owner: string, events: RunEvent[]): Promise<void> {
    assertRunId(id)
    const lines = eventJson(events, `run ${id}`)
    const got = await this.#call(`appending to run ${id}`, () => this.#r.eval(APPEND, 3,
      this.#key(`wf:own:${id}`), this.#key(`wf:run:${id}`), this.#key(`wf:log:${id}`), owner, ...lines))
    fenced(got, id, owner)
  }

  async readLog(id: string): Promise<RunEvent[]> {
    if (!isRunId(id)) return []
    const texts = await this.#call(`reading the log of run ${id}`, () => this.#r.lrange(this.#key(`wf:log:${id}`), 0, -1))
    return texts.map((text, i) => parseStored(text, `wf:log:${id}[${i}]`))
  }

  async openRuns(): Promise<OpenRun[]> {
    const flat = await this.#call('listing the open runs', () => this.#r.zrange(this.#key('wf:open'), '0', '-1', 'WITHSCORES'))
    const out: OpenRun[] = []
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const wakeAt = Number(flat[i + 1])
      out.push(wakeAt > 0 ? { id: flat[i] as string, wakeAt } : { id: flat[i] as string })
    }
    return out
  }

  async claim(id: string, owner: string, ttlMs: number): Promise<boolean> {
    assertRunId(id)
    const got = await this.#call(`claiming run ${id}`, () => this.#r.eval(CLAIM, 1, this.#key(`wf:own:${id}`), owner, String(ttl(ttlMs))))
    return got === 1
  }

  async renew(ids: readonly string[], owner: string, ttlMs: number): Promise<string[]> {
    if (ids.length === 0) return []
    ids.forEach(assertRunId)
    const lost = await this.#call(`renewing ${ids.length} run claims`, () => this.#r.eval(RENEW, ids.length,
      ...ids.map((id) => this.#key(`wf:own:${id}`)), owner, String(ttl(ttlMs)))) as number[]
    return lost.map((i) => ids[i - 1] as string)
  }

  async release(id: string, owner: string): Promise<void> {
    assertRunId(id)
    await this.#call(`releasing run ${id}`, () => this.#r.eval(RELEASE, 1, this.#key(`wf:own:${id}`), owner))
  }

  async requestCancel(id: string): Promise<RunRecord | undefined> {
    if (!isRunId(id)) return undefined
    const text = await this.#call(`cancelling run ${id}`, () => this.#r.eval(REQUEST_CANCEL, 1, this.#key(`wf:run:${id}`))) as string | null
    return text === null ? undefined : parseRun(text, `wf:run:${id}`, id)
  }

  /** Stops using the client (its owner closes it); later calls fail with KDL_ERR_SHUTTING_DOWN. */
  async close(): Promise<void> {
    this.#closed = true
  }

  #key(k: string): string {
    return `${this.#p}${k}`
  }

  async #call<T>(what: string, work: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new KdlError('KDL_ERR_SHUTTING_DOWN', 'the workflow store is closed')
    return redisCall(what, work)
  }

  /** Runs a MULTI; a command of it that failed fails the call. */
  async #exec(what: string, multi: ReturnType<Redis['multi']>): Promise<unknown[]> {
    return multiResults(what, await this.#call(what, () => multi.exec()))
  }
}

/** A fenced script's answer: -1 no such run, 0 the claim is not the owner's, 1 written. */
function fenced(got: unknown, id: string, owner: string): void {
  if (got === -1) throw runNotFound(id)
  if (got === 0) throw runLost(id, owner)
  if (got !== 1) throw new KdlError('KDL_ERR_INTERNAL', `the store answered ${String(got).slice(0, 40)} to a write of run ${id}`)
}

function ttl(ms: number): number {
  if (!Number.isInteger(ms) || ms < 1) throw new KdlError('KDL_ERR_INTERNAL', `a claim's ttl must be a whole number of ms (got ${String(ms).slice(0, 20)})`)
  return ms
}
