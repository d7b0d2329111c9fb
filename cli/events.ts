import type { Command } from 'commander'
import { intOption, type Runner } from './args.js'
import { cell, formatJson, formatTable, isRecord, listOf, pick } from './output.js'

const TIME_KEYS = ['at', 'time', 'timestamp', 'ts', 'createdAt']
const TYPE_KEYS = ['type', 'kind', 'action', 'event']
const FN_KEYS = ['fn', 'function', 'name']
const MESSAGE_KEYS = ['message', 'msg', 'reason']

function take(o: Record<string, unknown>, keys: string[], used: Set<string>): unknown {
  for (const k of keys) {
    if (o[k] !== undefined && o[k] !== null) {
      used.add(k)
      return o[k]
    }
  }
  return undefined
}

function time(value: unknown): string {
  return typeof value === 'number' && value > 1e11 ? new Date(value).toISOString() : cell(value)
}

/** One event as table cells: time, type, function, then a message and the remaining fields as k=v. */
export function eventRow(o: Record<string, unknown>): string[] {
  const used = new Set<string>()
  const at = take(o, TIME_KEYS, used)
  const type = take(o, TYPE_KEYS, used)
  const fn = take(o, FN_KEYS, used)
  const message = take(o, MESSAGE_KEYS, used)
  used.add('id')
  // `data` holds the numbers behind the event (common/events.ts): shown flat, beside the other fields.
  const data = isRecord(o['data']) ? o['data'] : {}
  if (isRecord(o['data'])) used.add('data')
  const rest = [...Object.entries(o).filter(([k]) => !used.has(k)), ...Object.entries(data)]
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
  const details = [...(message === undefined ? [] : [cell(message)]), ...rest].join(' ')
  return [time(at), cell(type), cell(fn), details]
}

export function registerEventsCommand(program: Command, run: Runner): void {
  program.command('events')
    .description('recent platform events (load-guard actions, recycles, crashes)')
    .option('--fn <name>', 'only the events of one function')
    .option('--limit <n>', 'at most this many of the newest events', intOption)
    .option('--json', 'print the raw JSON answer')
    .action((opts: { fn?: string; limit?: number; json?: boolean }) => run(async (ctx, client) => {
      const query = new URLSearchParams()
      if (opts.fn !== undefined) query.set('fn', opts.fn)
      if (opts.limit !== undefined) query.set('limit', String(opts.limit))
      const { data } = await client.call('GET', `/v1/events${query.size === 0 ? '' : `?${query.toString()}`}`)
      let events = listOf(data, 'events')
      // Filtered here too, in case the server ignores the query.
      if (events !== undefined && opts.fn !== undefined) events = events.filter((e) => !isRecord(e) || pick(e, ...FN_KEYS) === opts.fn)
      if (events !== undefined && opts.limit !== undefined) events = events.slice(-opts.limit)
      if (opts.json === true || events === undefined || !events.every(isRecord)) {
        ctx.stdout.write(formatJson(data))
        return
      }
      if (events.length === 0) {
        ctx.stderr.write('no events\n')
        return
      }
      ctx.stdout.write(formatTable(['TIME', 'TYPE', 'FUNCTION', 'DETAILS'], events.map(eventRow)))
    }))
}
