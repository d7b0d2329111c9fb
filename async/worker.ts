import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { Pool } from 'undici'
import type { EventLog } from '../common/events.js'
import type { AsyncMetrics } from './metrics.js'
import type { AsyncQueue, Delivery, JobCall, JobError, JobResult, Outcome } from './queue.js'

/** Headers a job's answer keeps out of its stored result. */
const DROPPED_ANSWER_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'date', 'content-length'])

export interface RetryPolicy {
  /** First retry's back-off ceiling, ms; it doubles each retry (full jitter: a uniform draw below it). */
  baseMs: number
  /** Largest back-off, ms. */
  capMs: number
}

/** Full-jitter exponential back-off: uniform in [0, min(cap, base · 2^(attempt-1))). */
export function backoffMs(policy: RetryPolicy, attempt: number, random = Math.random): number {
  return Math.floor(random() * Math.min(policy.capMs, policy.baseMs * 2 ** Math.max(0, attempt - 1)))
}

/** Which answers settle a job and which retry it: 2xx/3xx succeed; 429 and 5xx retry; other 4xx fail for good. */
export function classify(status: number): 'succeeded' | 'failed' | 'retry' {
  if (status < 400) return 'succeeded'
  if (status === 429 || status >= 500) return 'retry'
  return 'failed'
}

export interface AsyncWorkersOptions {
  queue: AsyncQueue
  /** A connection of the workers' own for XREADGROUP BLOCK. */
  blocking: Redis
  /** This replica's consumer name in the group. */
  consumer: string
  /** Jobs run at once on this replica (KINDLING_ASYNC_CONCURRENCY). */
  concurrency: number
  /** The replica's own URL: jobs call `/fn/<key><path>` through its router. */
  url: string
  /** Sent as `x-kindling-async-token`: the router passes `x-kindling-async-id`/`-attempt` to the function only with it. */
  token: string
  retry: RetryPolicy
  /** The smallest reclaim time any job may have (the margin), ms: what the reclaim scan asks XPENDING for. */
  minReclaimMs: number
  /** Largest stored answer body (longer ones are cut, `truncated`). */
  maxResultBytes: number
  metrics: AsyncMetrics
  events: EventLog
  log: Logger
  /** How often due retries are moved back onto the stream, ms. @default 200 */
  promoteEveryMs?: number | undefined
  /** How often stuck deliveries are looked for, ms. @default 1000 */
  reclaimEveryMs?: number | undefined
  /** Longest XREADGROUP block, ms (a stop unblocks it at once). @default 5000 */
  blockMs?: number | undefined
}

/**
 * The async workers of one replica: one reader (XREADGROUP BLOCK on its own connection, reading as many entries
 * as it has free slots), up to `concurrency` jobs at once, a promoter of due retries and a reclaimer of stuck
 * deliveries. Every replica runs one; they share the work through the consumer group.
 */
export class AsyncWorkers {
  readonly #o: AsyncWorkersOptions
  readonly #pool: Pool
  readonly #inflight = new Set<Promise<void>>()
  #slotFreed: (() => void) | undefined
  #stopping = false
  /** Set when a stop gave up waiting: what still runs is left pending for another replica to reclaim. */
  #abandoned = false
  #loop: Promise<void> | undefined
  #clientId: number | undefined
  readonly #timers: NodeJS.Timeout[] = []

  constructor(opts: AsyncWorkersOptions) {
    this.#o = opts
    this.#pool = new Pool(opts.url, { connections: opts.concurrency, pipelining: 1 })
  }

  get inflight(): number {
    return this.#inflight.size
  }

  async start(): Promise<void> {
    this.#clientId = Number(await this.#o.blocking.client('ID'))
    this.#loop = this.#read()
    const promote = setInterval(() => {
      this.#o.queue.promote().catch((err: unknown) => this.#o.log.debug({ err }, 'async: promoting due retries failed'))
    }, this.#o.promoteEveryMs ?? 200)
    const reclaim = setInterval(() => { void this.#reclaim() }, this.#o.reclaimEveryMs ?? 1000)
    this.#timers.push(promote, reclaim)
  }

  async #read(): Promise<void> {
    const { queue, blocking, consumer, concurrency, log } = this.#o
    let readFailing = false
    while (!this.#stopping) {
      const free = concurrency - this.#inflight.size
      if (free <= 0) {
        await new Promise<void>((resolve) => { this.#slotFreed = resolve })
        continue
      }
      let got: Delivery[]
      try {
        got = await queue.read(blocking, consumer, free, this.#o.blockMs ?? 5000)
      } catch (err) {
        if (this.#stopping) return
        // Once per outage: the reader retries every half second until Redis answers again.
        if (!readFailing) log.warn({ err }, 'async: reading the stream failed; retrying until Redis answers')
        readFailing = true
        await new Promise((r) => setTimeout(r, 500))
        continue
      }
      if (readFailing) log.info('async: reading the stream again')
      readFailing = false
      for (const d of got) this.#run(d)
    }
  }

  async #reclaim(): Promise<void> {
    const free = this.#o.concurrency - this.#inflight.size
    if (this.#stopping || free <= 0) return
    try {
      const got = await this.#o.queue.reclaim(this.#o.consumer, this.#o.minReclaimMs, free)
      for (const d of got) {
        this.#o.log.warn({ job: d.jobId, entry: d.entryId }, 'async: reclaimed a stuck delivery')
        this.#run(d)
      }
    } catch (err) {
      this.#o.log.debug({ err }, 'async: reclaim scan failed')
    }
  }

  #run(d: Delivery): void {
    const p = this.#job(d)
      .catch((err: unknown) => this.#o.log.warn({ err, job: d.jobId }, 'async: a job step failed; its delivery stays pending for reclaim'))
      .finally(() => {
        this.#inflight.delete(p)
        const wake = this.#slotFreed
        this.#slotFreed = undefined
        wake?.()
      })
    this.#inflight.add(p)
  }

  async #job(d: Delivery): Promise<void> {
    const { queue, consumer, metrics, log } = this.#o
    const st = await queue.start(d, consumer)
    if (st.kind === 'dead') {
      metrics.jobs.inc({ result: 'dead' })
      this.#deadEvent(d.jobId)
      return
    }
    if (st.kind !== 'run') return
    const started = st.started
    metrics.queueSeconds.observe(Math.max(0, Date.now() - started.readyAt) / 1000)
    const call = await queue.call(d.jobId)
    if (call === undefined) return
    const outcome = await this.#invoke(call, started.attempt)
    if (this.#abandoned) return
    const r = await queue.settle(started, outcome)
    metrics.jobs.inc({ result: r })
    if (r === 'lost') log.warn({ job: d.jobId, attempt: started.attempt }, 'async: the delivery was reclaimed by another worker meanwhile; this outcome is dropped')
    else if (r === 'dead') this.#deadEvent(d.jobId, call.function, outcome.kind === 'succeeded' ? undefined : outcome.error)
    else log.debug({ job: d.jobId, attempt: started.attempt, result: r }, 'async: job settled')
  }

  #deadEvent(id: string, key?: string, error?: JobError): void {
    this.#o.events.add({
      type: 'async.dead', function: key?.split('@')[0], message: `async job ${id} went to the dead-letter queue${error === undefined ? '' : `: ${error.code} ${error.message}`}`,
      data: { job: id, ...(error === undefined ? {} : { error }) },
    })
  }

  /** One attempt: the job's call through this replica's router. */
  async #invoke(call: JobCall, attempt: number): Promise<Outcome> {
    const dueAt = (): number => Date.now() + backoffMs(this.#o.retry, attempt)
    try {
      const res = await this.#pool.request({
        path: `/fn/${call.function}${call.path}`,
        method: call.method as 'POST',
        headers: { ...call.headers, 'x-kindling-async-id': call.id, 'x-kindling-async-attempt': String(attempt), 'x-kindling-async-token': this.#o.token },
        body: call.method === 'GET' || call.method === 'HEAD' ? null : call.body,
        headersTimeout: call.timeoutMs,
        bodyTimeout: call.timeoutMs,
      })
      const result = await this.#resultOf(res.statusCode, res.headers, res.body)
      const verdict = classify(res.statusCode)
      if (verdict === 'succeeded') return { kind: 'succeeded', result }
      const error = errorOf(result)
      if (verdict === 'failed') return { kind: 'failed', result, error }
      return { kind: 'retry', result, error, dueAt: dueAt() }
    } catch (err) {
      const e = err as { code?: string; message?: string }
      const timeout = e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT'
      const error: JobError = timeout
        ? { code: 'KDL_ERR_FN_TIMEOUT', message: `no answer within ${call.timeoutMs} ms` }
        : { code: 'KDL_ERR_INTERNAL', message: `the call failed: ${e.message ?? String(err)}` }
      return { kind: 'retry', error, dueAt: dueAt() }
    }
  }

  async #resultOf(status: number, headers: Record<string, string | string[] | undefined>, body: AsyncIterable<Buffer>): Promise<JobResult> {
    const max = this.#o.maxResultBytes
    const chunks: Buffer[] = []
    let size = 0
    let truncated = false
    for await (const c of body) {
      if (size + c.length > max) {
        truncated = true
        if (size < max) chunks.push(c.subarray(0, max - size))
        size = max
        continue
      }
      chunks.push(c)
      size += c.length
    }
    const bytes = Buffer.concat(chunks)
    const h: Record<string, string> = {}
    for (const [k, v] of Object.entries(headers)) if (v !== undefined && !DROPPED_ANSWER_HEADERS.has(k)) h[k] = Array.isArray(v) ? v.join(', ') : v
    const text = bytes.toString('utf8')
    const utf8 = Buffer.from(text, 'utf8').equals(bytes)
    return { status, headers: h, body: utf8 ? text : bytes.toString('base64'), bodyEncoding: utf8 ? 'utf8' : 'base64', ...(truncated ? { truncated } : {}) }
  }

  /**
   * Stops reading, lets the jobs in flight finish for at most `graceMs`, and leaves the rest pending (another
   * replica reclaims them). Leaves the consumer group when nothing of this replica's is pending.
   */
  async close(graceMs: number): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    for (const t of this.#timers) clearInterval(t)
    const wake = this.#slotFreed
    this.#slotFreed = undefined
    wake?.()
    // A blocked XREADGROUP returns at once on CLIENT UNBLOCK; repeated in case the read was not yet sent.
    let done = false
    const loop = (this.#loop ?? Promise.resolve()).finally(() => { done = true })
    for (let tries = 0; !done; tries++) {
      // After a reconnect the blocked read is on another client id than the one noted at start: cut it instead.
      if (tries === 4) this.#o.blocking.disconnect()
      else await this.#o.queue.redis.client('UNBLOCK', this.#clientId ?? 0).catch(() => {})
      await Promise.race([loop, new Promise((r) => setTimeout(r, 50))])
    }
    let timer: NodeJS.Timeout | undefined
    const idle = Promise.allSettled([...this.#inflight]).then(() => true)
    const late = new Promise<boolean>((r) => { timer = setTimeout(() => r(false), graceMs) })
    const finished = await Promise.race([idle, late])
    clearTimeout(timer)
    if (!finished) {
      this.#abandoned = true
      this.#o.log.warn({ jobs: this.#inflight.size }, 'async: stopping with jobs still running; they stay pending for another replica')
    }
    await this.#pool.destroy().catch(() => {})
    if (finished) await this.#o.queue.leave(this.#o.consumer).catch(() => false)
  }
}

/** A failed answer's error: the platform's own `{code, message}` when it sent one, else the HTTP status. */
function errorOf(result: JobResult): JobError {
  if (result.bodyEncoding === 'utf8' && (result.headers['content-type'] ?? '').includes('json')) {
    try {
      const b = JSON.parse(result.body) as { code?: unknown; message?: unknown }
      if (typeof b.code === 'string' && b.code.startsWith('KDL_ERR_')) return { code: b.code, message: typeof b.message === 'string' ? b.message : '', status: result.status }
    } catch { /* not JSON */ }
  }
  return { code: `HTTP_${result.status}`, message: `the function answered ${result.status}`, status: result.status }
}
