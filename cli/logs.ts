import type { Command } from 'commander'
import type { LogEntry } from '../common/function-logs.js'
import { intOption, type Runner } from './args.js'
import { ApiError, jsonLines, kindlingError, parseJson, statusLine, type ApiClient } from './http.js'
import { isRecord, type CliContext } from './output.js'

interface LogsOptions {
  follow?: boolean
  invocation?: string
  since?: string
  limit?: number
  json?: boolean
}

/** `kindling fn logs NAME`: the function's recent output; `-f` keeps printing what it prints next. */
export function registerLogsCommand(fn: Command, run: Runner): void {
  fn.command('logs')
    .description("a function's output: console.*, context.log, stdout/stderr (GET /v1/functions/NAME/logs)")
    .argument('<name>', 'function name')
    .option('-f, --follow', 'keep printing new lines as the function prints them (Ctrl-C ends)')
    .option('--invocation <id>', 'only the lines of one call (its x-kindling-invocation-id)')
    .option('--since <when>', 'only lines since a duration ago (30s, 5m, 2h, 1d) or a date')
    .option('--limit <n>', 'at most this many of the newest lines (default 200)', intOption)
    .option('--json', 'one JSON object a line, as the API gives them')
    .action((name: string, opts: LogsOptions) => run(async (ctx, client) => {
      const query = new URLSearchParams()
      if (opts.invocation !== undefined) query.set('invocation', opts.invocation)
      if (opts.since !== undefined) query.set('since', opts.since)
      if (opts.limit !== undefined) query.set('limit', String(opts.limit))
      if (opts.follow === true) query.set('follow', 'true')
      const path = `/v1/functions/${encodeURIComponent(name)}/logs${query.size === 0 ? '' : `?${query.toString()}`}`
      const print = (e: LogEntry): void => { ctx.stdout.write(opts.json === true ? `${JSON.stringify(e)}\n` : formatEntry(e)) }
      if (opts.follow !== true) {
        const { data } = await client.call('GET', path)
        const logs = isRecord(data) && Array.isArray(data['logs']) ? data['logs'] as LogEntry[] : []
        if (logs.length === 0 && opts.json !== true) ctx.stderr.write('no logs\n')
        for (const e of logs) print(e)
        return
      }
      await follow(ctx, client, path, print)
    }))
}

async function follow(ctx: CliContext, client: ApiClient, path: string, print: (e: LogEntry) => void): Promise<void> {
  const ac = new AbortController()
  const stop = (): void => ac.abort()
  process.once('SIGINT', stop)
  try {
    const res = await client.stream('GET', path, { headers: { accept: 'application/x-ndjson' }, signal: ac.signal })
    if (res.status < 200 || res.status > 299) {
      const chunks: Buffer[] = []
      for await (const c of res.body) chunks.push(c)
      const raw = Buffer.concat(chunks)
      const kerr = kindlingError(parseJson(raw))
      throw new ApiError(res.status, kerr?.code, kerr?.message ?? `GET ${path} answered ${statusLine(res.status)}`)
    }
    try {
      for await (const e of jsonLines(res.body)) {
        if (isRecord(e) && typeof e['seq'] === 'number') print(e as unknown as LogEntry)
        else if (isRecord(e) && typeof e['missed'] === 'number') ctx.stderr.write(`… ${String(e['missed'])} lines skipped: this terminal read slower than the function printed\n`)
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err
    }
  } finally {
    process.removeListener('SIGINT', stop)
  }
}

/** `TIME LEVEL vVERSION INVOCATION MESSAGE`, the invocation shortened (its first 8 characters), `-` when none. */
export function formatEntry(e: LogEntry): string {
  const time = new Date(e.t).toISOString()
  if (e.dropped !== undefined) return `${time} ${'warn'.padEnd(5)} v${e.version} ${'-'.padEnd(8)} … ${e.dropped} lines dropped (over KINDLING_LOG_LINES_PER_SEC)\n`
  const inv = (e.invocation ?? '-').slice(0, 8).padEnd(8)
  const msg = e.truncated === true ? `${e.msg} …(cut)` : e.msg
  return `${time} ${e.level.padEnd(5)} v${e.version} ${inv} ${msg}\n`
}
