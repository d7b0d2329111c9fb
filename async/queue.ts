import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { KdlError } from '../common/errors.js'
import { redisCall } from '../store/redis-conn.js'
import { ENQUEUE, LEAVE, PROMOTE, PURGE, RECLAIM, REDRIVE, SETTLE, START } from './scripts.js'

/**
 * Async invocations (issue 11) on Redis: a job is a hash (`<prefix>job:<id>`) and an entry of the stream
 * `<prefix>async` (consumer group `workers`); retries wait in the sorted set `<prefix>async:delayed` (score: due
 * time), dead jobs are entries of `<prefix>async:dlq`. Every step that touches more than one key is one Lua script.
 */

export const GROUP = 'workers'
/** How long an idempotency key maps to its job id. */
export const IDEMPOTENCY_TTL_S = 24 * 3600
/** How long a finished (succeeded or failed) job stays readable. Dead jobs stay until redriven or purged. */
export const RETENTION_S = 7 * 24 * 3600
/** Job ids: `j-` and 20 hex digits. */
export const JOB_ID_PATTERN = '^j-[0-9a-f]{20}$'
const jobIdRe = new RegExp(JOB_ID_PATTERN)

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'dead'

export interface JobError {
  code: string
  message: string
  status?: number | undefined
}

/** What a job's call answered: text bodies as they are, others base64 (`bodyEncoding`). */
export interface JobResult {
  status: number
  headers: Record<string, string>
  body: string
  bodyEncoding: 'utf8' | 'base64'
  /** The body was longer than the platform keeps (KINDLING_ASYNC_MAX_BODY_BYTES) and was cut. */
  truncated?: boolean | undefined
}

export interface NewJob {
  /** The function key as called: `name`, `name@alias` or `name@7`. */
  function: string
  method: string
  /** Path and query after the function key (`/` at least). */
  path: string
  headers: Record<string, string>
  body: Buffer
  maxAttempts: number
  maxAgeMs: number
  /** How long a delivery may stay unsettled before another worker takes it (the call's longest run plus a margin). */
  reclaimMs: number
  /** The call's own timeout (the worker's HTTP timeout). */
  timeoutMs: number
}

/** A job as `GET /v1/async/:id` shows it. */
export interface JobView {
  id: string
  function: string
  state: JobState
  attempts: number
  maxAttempts: number
  enqueuedAt: string
  startedAt?: string | undefined
  finishedAt?: string | undefined
  nextAttemptAt?: string | undefined
  redrivenAt?: string | undefined
  /** The replica (consumer) that ran its latest attempt. */
  worker?: string | undefined
  result?: JobResult | undefined
  error?: JobError | undefined
  /** The error of the latest failed attempt, while retries remain. */
  lastError?: JobError | undefined
}

/** What a worker needs to make a job's call. */
export interface JobCall {
  id: string
  function: string
  method: string
  path: string
  headers: Record<string, string>
  body: Buffer
  timeoutMs: number
}

/** One delivery of a job to a consumer: its stream entry. */
export interface Delivery {
  entryId: string
  jobId: string
}

/** A delivery a worker started: what its settle must present. */
export interface Started extends Delivery {
  consumer: string
  deliveryCount: number
  attempt: number
  /** When the job became due (enqueue, retry due time, redrive), ms. */
  readyAt: number
}

export type StartResult = { kind: 'run'; started: Started } | { kind: 'lost' | 'gone' | 'dead' }

export type Outcome =
  | { kind: 'succeeded'; result: JobResult }
  | { kind: 'failed'; result?: JobResult | undefined; error: JobError }
  | { kind: 'retry'; result?: JobResult | undefined; error: JobError; dueAt: number }

export type SettleResult = 'succeeded' | 'failed' | 'retried' | 'dead' | 'lost'

export interface DlqEntry {
  /** The job's id (what redrive and purge take). */
  id: string
  entry: string
  function: string
  error: JobError
  at: string
}

export interface AsyncQueueOptions {
  redis: Redis
  prefix: string
  /** Finished jobs stay this long (s). @default RETENTION_S */
  retentionS?: number | undefined
}

export function assertJobId(id: string): void {
  if (!jobIdRe.test(id)) throw new KdlError('KDL_ERR_JOB_NOT_FOUND', `no async job "${id.slice(0, 80)}": job ids look like j-0123456789abcdef0123`)
}

const iso = (ms: string | undefined): string | undefined => ms === undefined || ms === '' ? undefined : new Date(Number(ms)).toISOString()
const json = <T>(s: string | undefined): T | undefined => {
  if (s === undefined || s === '') return undefined
  try { return JSON.parse(s) as T } catch { return undefined }
}

export class AsyncQueue {
  readonly redis: Redis
  readonly stream: string
  readonly delayed: string
  readonly dlq: string
  readonly #prefix: string
  readonly #retentionS: number

  constructor(opts: AsyncQueueOptions) {
    this.redis = opts.redis
    this.#prefix = opts.prefix
    this.stream = `${opts.prefix}async`
    this.delayed = `${opts.prefix}async:delayed`
    this.dlq = `${opts.prefix}async:dlq`
    this.#retentionS = opts.retentionS ?? RETENTION_S
  }

  jobKey(id: string): string {
    return `${this.#prefix}job:${id}`
  }

  /** Creates the stream and its consumer group (idempotent: another replica may have made them). */
  async init(): Promise<void> {
    await redisCall('creating the async stream', async () => {
      try {
        await this.redis.xgroup('CREATE', this.stream, GROUP, '0', 'MKSTREAM')
      } catch (err) {
        if (!String((err as Error).message).startsWith('BUSYGROUP')) throw err
      }
    })
  }

  /**
   * Writes the job and its stream entry in one step; with an idempotency key already used for this function in
   * the last 24 h, writes nothing and answers the earlier id (`existing`).
   */
  async enqueue(job: NewJob, idempotencyKey?: string): Promise<{ id: string; existing: boolean }> {
    const id = `j-${randomBytes(10).toString('hex')}`
    const now = Date.now()
    const fields: Array<string | number | Buffer> = [
      'id', id, 'function', job.function, 'method', job.method, 'path', job.path, 'headers', JSON.stringify(job.headers), 'body', job.body,
      'state', 'queued', 'attempts', 0, 'maxAttempts', job.maxAttempts, 'maxAgeMs', job.maxAgeMs, 'enqueuedAt', now, 'readyAt', now,
      'deadline', now + job.maxAgeMs, 'reclaimMs', job.reclaimMs, 'timeoutMs', job.timeoutMs,
    ]
    const keys = [this.jobKey(id), this.stream]
    if (idempotencyKey !== undefined) keys.push(`${this.#prefix}idem:${job.function}:${idempotencyKey}`)
    const got = await redisCall('enqueuing an async job', () => ENQUEUE.run(this.redis, keys, [id, IDEMPOTENCY_TTL_S, ...fields])) as [string, number]
    return { id: String(got[0]), existing: Number(got[1]) === 1 }
  }

  async get(id: string): Promise<JobView | undefined> {
    assertJobId(id)
    const h = await redisCall('reading an async job', () => this.redis.hgetall(this.jobKey(id)))
    if (h['state'] === undefined) return undefined
    return {
      id,
      function: h['function'] ?? '',
      state: h['state'] as JobState,
      attempts: Number(h['attempts'] ?? 0),
      maxAttempts: Number(h['maxAttempts'] ?? 0),
      enqueuedAt: iso(h['enqueuedAt']) ?? '',
      startedAt: iso(h['startedAt']),
      finishedAt: iso(h['finishedAt']),
      nextAttemptAt: h['state'] === 'queued' ? iso(h['nextAttemptAt']) : undefined,
      redrivenAt: iso(h['redrivenAt']),
      worker: h['worker'],
      result: json<JobResult>(h['result']),
      error: json<JobError>(h['error']),
      lastError: h['state'] === 'queued' || h['state'] === 'running' ? json<JobError>(h['lastError']) : undefined,
    }
  }

  /** What a worker needs to call the job's function (body as bytes). */
  async call(id: string): Promise<JobCall | undefined> {
    const h = await this.redis.hgetallBuffer(this.jobKey(id))
    if (h['function'] === undefined) return undefined
    const s = (k: string): string => h[k]?.toString('utf8') ?? ''
    return {
      id, function: s('function'), method: s('method'), path: s('path'), headers: json<Record<string, string>>(s('headers')) ?? {},
      body: h['body'] ?? Buffer.alloc(0), timeoutMs: Number(s('timeoutMs')),
    }
  }

  /** New entries for `consumer` (at most `count`), waiting up to `blockMs`; on a blocking connection. */
  async read(conn: Redis, consumer: string, count: number, blockMs: number): Promise<Delivery[]> {
    const got = await conn.xreadgroup('GROUP', GROUP, consumer, 'COUNT', count, 'BLOCK', blockMs, 'STREAMS', this.stream, '>') as Array<[string, Array<[string, string[]]>]> | null
    const out: Delivery[] = []
    for (const [, entries] of got ?? []) {
      for (const [entryId, fields] of entries) {
        const at = fields.indexOf('job')
        out.push({ entryId, jobId: at >= 0 ? fields[at + 1] ?? '' : '' })
      }
    }
    return out
  }

  /** Marks a delivery's job running (one more attempt), or dead-letters it when it is out of attempts or too old. */
  async start(d: Delivery, consumer: string, now = Date.now()): Promise<StartResult> {
    const outOfAttempts = JSON.stringify({ code: 'KDL_ERR_FN_CRASHED', message: 'out of attempts: its last delivery was never settled (the replica running it stopped)' })
    const tooOld = JSON.stringify({ code: 'KDL_ERR_FN_TIMEOUT', message: 'older than its max age (asyncMaxAgeMs) before it could run' })
    const got = await START.run(this.redis, [this.stream, this.dlq], [GROUP, d.entryId, consumer, this.jobKey(d.jobId), now, d.jobId, outOfAttempts, tooOld]) as [string, number?, number?, string?]
    if (got[0] !== 'run') return { kind: got[0] as 'lost' | 'gone' | 'dead' }
    return { kind: 'run', started: { ...d, consumer, deliveryCount: Number(got[1]), attempt: Number(got[2]), readyAt: Number(got[3]) } }
  }

  /**
   * Settles a started delivery — only if it is still this worker's: pending, same consumer, same delivery count.
   * A reclaimed delivery's late worker gets 'lost' and changes nothing.
   */
  async settle(s: Started, outcome: Outcome, now = Date.now()): Promise<SettleResult> {
    const result = outcome.result === undefined ? '' : JSON.stringify(outcome.result)
    const error = outcome.kind === 'succeeded' ? '' : JSON.stringify(outcome.error)
    const due = outcome.kind === 'retry' ? outcome.dueAt : 0
    return await SETTLE.run(this.redis, [this.stream, this.delayed, this.dlq], [
      GROUP, s.entryId, s.consumer, s.deliveryCount, this.jobKey(s.jobId), now, outcome.kind, result, error, due, this.#retentionS, s.jobId,
    ]) as SettleResult
  }

  /** Moves due retries back onto the stream; resolves with how many moved. */
  async promote(now = Date.now(), limit = 500): Promise<number> {
    return Number(await PROMOTE.run(this.redis, [this.delayed, this.stream], [now, limit]))
  }

  /** Takes over (for `consumer`) deliveries idle past their job's reclaim time; at most `count`. */
  async reclaim(consumer: string, minReclaimMs: number, count: number): Promise<Delivery[]> {
    const got = await RECLAIM.run(this.redis, [this.stream], [GROUP, consumer, minReclaimMs, this.jobKey(''), count]) as string[]
    const out: Delivery[] = []
    for (let i = 0; i + 1 < got.length; i += 2) out.push({ entryId: got[i]!, jobId: got[i + 1]! })
    return out
  }

  /** Removes `consumer` from the group unless it still holds deliveries (those stay for reclaim). */
  async leave(consumer: string): Promise<boolean> {
    return Number(await LEAVE.run(this.redis, [this.stream], [GROUP, consumer])) === 1
  }

  /** Dead jobs, newest first. */
  async dlqList(limit: number): Promise<DlqEntry[]> {
    const got = await redisCall('reading the dead-letter queue', () => this.redis.xrevrange(this.dlq, '+', '-', 'COUNT', limit))
    return got.map(([entry, fields]) => {
      const f: Record<string, string> = {}
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!
      return { id: f['job'] ?? '', entry, function: f['function'] ?? '', error: json<JobError>(f['error']) ?? { code: 'KDL_ERR_INTERNAL', message: '' }, at: iso(f['at']) ?? '' }
    })
  }

  /** A dead job, or undefined when the id names no job in the DLQ. */
  async dlqGet(id: string): Promise<JobView | undefined> {
    const job = await this.get(id)
    return job?.state === 'dead' ? job : undefined
  }

  /** Re-enqueues a dead job (attempts reset, same id); false when it is not in the DLQ. */
  async redrive(id: string): Promise<boolean> {
    assertJobId(id)
    return Number(await redisCall('redriving an async job', () => REDRIVE.run(this.redis, [this.jobKey(id), this.stream, this.dlq], [Date.now(), id]))) === 1
  }

  /** Deletes a dead job and its DLQ entry; false when it is not in the DLQ. */
  async purge(id: string): Promise<boolean> {
    assertJobId(id)
    return Number(await redisCall('purging an async job', () => PURGE.run(this.redis, [this.jobKey(id), this.dlq], []))) === 1
  }

  /** Every job id in the DLQ, oldest first (for redrive-all and purge-all). */
  async dlqIds(): Promise<string[]> {
    const ids: string[] = []
    let start = '-'
    for (;;) {
      const page = await redisCall('reading the dead-letter queue', () => this.redis.xrange(this.dlq, start, '+', 'COUNT', 500))
      for (const [, fields] of page) {
        const at = fields.indexOf('job')
        if (at >= 0 && fields[at + 1] !== undefined) ids.push(fields[at + 1]!)
      }
      if (page.length < 500) return ids
      start = `(${page[page.length - 1]![0]}`
    }
  }

  /** Drops entries of the DLQ whose job no longer exists (expired records); part of purge-all. */
  async dlqTrim(): Promise<void> {
    let start = '-'
    for (;;) {
      const page = await this.redis.xrange(this.dlq, start, '+', 'COUNT', 500)
      for (const [entry, fields] of page) {
        const at = fields.indexOf('job')
        const id = at >= 0 ? fields[at + 1] : undefined
        if (id === undefined || await this.redis.hget(this.jobKey(id), 'dlqEntry') !== entry) await this.redis.xdel(this.dlq, entry)
      }
      if (page.length < 500) return
      start = `(${page[page.length - 1]![0]}`
    }
  }
}
