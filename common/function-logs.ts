import type { InstanceOutput } from './backend.js'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** One line a function printed (`GET /v1/functions/:name/logs`). */
export interface LogEntry {
  /** Increasing over the platform's life: `after=<seq>` reads on from an entry. */
  seq: number
  /** When the platform read it, epoch ms. */
  t: number
  function: string
  version: number
  instance: string
  /** The call it was printed during, when the runtime could tell (context.log always; console.* with one call in flight). */
  invocation?: string
  stream: 'stdout' | 'stderr'
  level: LogLevel
  msg: string
  /** The line was longer than the platform keeps and was cut. */
  truncated?: true
  /** A marker, not a line: this many lines of the instance went over its output rate and were not kept. */
  dropped?: number
}

export interface LogQuery {
  /** Entries with a larger seq, oldest first (reading on); without it, the newest `limit` entries. */
  after?: number | undefined
  /** Entries read at or after this time, epoch ms. */
  since?: number | undefined
  invocation?: string | undefined
  limit?: number | undefined
}

export interface FunctionLogsOptions {
  /** Entries kept per function; the oldest fall off. */
  maxEntries: number
  /** Bytes of message text kept per function; the oldest entries fall off first. */
  maxBytes: number
  /** Functions with logs kept at once; the one written least lately goes first. @default 4096 */
  maxFunctions?: number
  /** Where lines of an instance bound to no function go (the runtime's own messages): the platform log. */
  unowned?: (output: InstanceOutput) => void
  now?: () => number
}

interface Ring {
  entries: LogEntry[]
  /** Index of the oldest live entry in `entries` (dropped ones are compacted away lazily). */
  head: number
  bytes: number
  followers: Set<(entry: LogEntry) => void>
}

interface Owner { fn: string; version: number }

/** Bytes an entry is counted for: its text plus a fixed share for its fields. */
const ENTRY_OVERHEAD = 160
const RELEASED_KEPT = 1024
const LEVELS: ReadonlySet<string> = new Set(['debug', 'info', 'warn', 'error'])

/**
 * Each function's recent output, in memory, bounded per function (entries and bytes) and in the number of
 * functions. A line is the function's because the instance that printed it was bound to that function by the
 * pool manager when its load began — never because of what the line says, so one function cannot write into
 * another's logs. Off the call path: lines arrive from the backend's output stream, not from the router.
 */
export class FunctionLogs {
  readonly #opts: FunctionLogsOptions
  readonly #now: () => number
  readonly #rings = new Map<string, Ring>()
  readonly #owners = new Map<string, Owner>()
  /** Instances gone lately: their last lines (a crash's stack trace) can arrive after they were released. */
  readonly #released = new Map<string, Owner>()
  #seq = 0

  constructor(opts: FunctionLogsOptions) {
    this.#opts = opts
    this.#now = opts.now ?? Date.now
  }

  /** An instance is about to load `fn` at `version`: all it prints from now on is that function's. */
  bind(instance: string, fn: string, version: number): void {
    this.#released.delete(instance)
    this.#owners.set(instance, { fn, version })
  }

  /** The instance is gone; lines it printed before it went may still be read for a while. */
  release(instance: string): void {
    const owner = this.#owners.get(instance)
    if (owner === undefined) return
    this.#owners.delete(instance)
    this.#released.set(instance, owner)
    if (this.#released.size > RELEASED_KEPT) this.#released.delete(this.#released.keys().next().value as string)
  }

  /** One output of an instance (a backend's onOutput). */
  ingest(output: InstanceOutput): void {
    const owner = this.#owners.get(output.id) ?? this.#released.get(output.id)
    if (owner === undefined) {
      this.#opts.unowned?.(output)
      return
    }
    const base = { seq: 0, t: this.#now(), function: owner.fn, version: owner.version, instance: output.id, stream: output.stream }
    if ('dropped' in output) {
      this.#append({ ...base, level: 'warn', msg: `${output.dropped} lines dropped: the instance printed faster than KINDLING_LOG_LINES_PER_SEC allows`, dropped: output.dropped })
      return
    }
    const parsed = runtimeLine(output.line)
    const entry: LogEntry = parsed === undefined
      ? { ...base, level: output.stream === 'stderr' ? 'error' : 'info', msg: output.line }
      : { ...base, level: parsed.level, msg: parsed.msg, ...(parsed.inv === undefined ? {} : { invocation: parsed.inv }) }
    if (output.truncated) entry.truncated = true
    this.#append(entry)
  }

  /** Whether any entry of `fn` is kept. */
  has(fn: string): boolean {
    return this.#rings.has(fn)
  }

  query(fn: string, q: LogQuery = {}): { logs: LogEntry[]; next: number } {
    const ring = this.#rings.get(fn)
    const limit = Math.max(1, q.limit ?? 200)
    if (ring === undefined) return { logs: [], next: q.after ?? this.#seq }
    const match = (e: LogEntry): boolean =>
      (q.after === undefined || e.seq > q.after) && (q.since === undefined || e.t >= q.since) && (q.invocation === undefined || e.invocation === q.invocation)
    const out: LogEntry[] = []
    const { entries, head } = ring
    if (q.after !== undefined) {
      for (let i = head; i < entries.length && out.length < limit; i++) if (match(entries[i]!)) out.push(entries[i]!)
      const next = out.length === limit ? out[out.length - 1]!.seq : Math.max(q.after, this.#seq)
      return { logs: out, next }
    }
    for (let i = entries.length - 1; i >= head && out.length < limit; i--) if (match(entries[i]!)) out.push(entries[i]!)
    out.reverse()
    return { logs: out, next: this.#seq }
  }

  /** Calls `listener` with each new entry of `fn` until the returned function is called. */
  follow(fn: string, listener: (entry: LogEntry) => void): () => void {
    const ring = this.#ring(fn)
    ring.followers.add(listener)
    return () => { ring.followers.delete(listener) }
  }

  /** The function was deleted: its logs go with it (followers stay until they leave). */
  drop(fn: string): void {
    const ring = this.#rings.get(fn)
    if (ring === undefined) return
    if (ring.followers.size === 0) this.#rings.delete(fn)
    else { ring.entries = []; ring.head = 0; ring.bytes = 0 }
  }

  #ring(fn: string): Ring {
    let ring = this.#rings.get(fn)
    if (ring === undefined) {
      ring = { entries: [], head: 0, bytes: 0, followers: new Set() }
      this.#rings.set(fn, ring)
      const max = this.#opts.maxFunctions ?? 4096
      for (const [name, r] of this.#rings) {
        if (this.#rings.size <= max) break
        if (r !== ring && r.followers.size === 0) this.#rings.delete(name)
      }
    } else {
      // Most lately written last: the first in the map is the one to evict.
      this.#rings.delete(fn)
      this.#rings.set(fn, ring)
    }
    return ring
  }

  #append(entry: LogEntry): void {
    entry.seq = ++this.#seq
    const ring = this.#ring(entry.function)
    ring.entries.push(entry)
    ring.bytes += entry.msg.length + ENTRY_OVERHEAD
    const { maxEntries, maxBytes } = this.#opts
    while (ring.entries.length - ring.head > maxEntries || (ring.bytes > maxBytes && ring.entries.length - ring.head > 1)) {
      const old = ring.entries[ring.head]!
      ring.bytes -= old.msg.length + ENTRY_OVERHEAD
      ring.head++
    }
    if (ring.head > 1024 && ring.head * 2 > ring.entries.length) {
      ring.entries = ring.entries.slice(ring.head)
      ring.head = 0
    }
    for (const f of ring.followers) f(entry)
  }
}

/** A line the runtime wrote for context.log or console.* (`{t, level, fn, inv, msg}`); its `fn` is not trusted. */
function runtimeLine(line: string): { level: LogLevel; msg: string; inv: string | undefined } | undefined {
  if (!line.startsWith('{"t":')) return undefined
  let v: unknown
  try { v = JSON.parse(line) } catch { return undefined }
  const o = v as { level?: unknown; msg?: unknown; inv?: unknown }
  if (typeof o.level !== 'string' || !LEVELS.has(o.level) || typeof o.msg !== 'string') return undefined
  return { level: o.level as LogLevel, msg: o.msg, inv: typeof o.inv === 'string' && o.inv !== '' ? o.inv.slice(0, 128) : undefined }
}

/**
 * `since=` of the logs API and the CLI: a duration back from now (`30s`, `5m`, `2h`, `1d`), an ISO date, or epoch
 * milliseconds; undefined when it is none of them.
 */
export function parseSince(value: string, now = Date.now()): number | undefined {
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim())
  if (d !== null) {
    const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 'ms' | 's' | 'm' | 'h' | 'd']
    return now - Number(d[1]) * unit
  }
  if (/^\d{10,}$/.test(value)) return Number(value)
  const iso = Date.parse(value)
  return /^\d{4}-\d{2}-\d{2}/.test(value) && Number.isFinite(iso) ? iso : undefined
}
