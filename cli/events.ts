import type { Command } from 'commander'
import type { PlatformEvent } from '../common/events.js'
import { intOption, type Runner } from './args.js'
import { formatJson, formatTable, isRecord } from './output.js'

/** One event as table cells: time, type, function, then the message, the instance and the numbers behind it. */
export function eventRow(e: PlatformEvent): string[] {
  const details = [
    e.message,
    ...(e.instance === undefined ? [] : [`instance=${e.instance}`]),
    ...(e.replica === undefined || e.data?.['replica'] === e.replica ? [] : [`replica=${e.replica}`]),
    ...Object.entries(e.data ?? {}).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`),
  ]
  return [e.at, e.type, e.function ?? '-', details.join(' ')]
}

function isEvents(data: unknown): data is { events: PlatformEvent[] } {
  return isRecord(data) && Array.isArray(data['events'])
}

export function registerEventsCommand(program: Command, run: Runner): void {
  program.command('events')
    .description('recent platform events (deploys, crashes, OOM kills, load-guard actions)')
    .option('--fn <name>', 'only the events of one function')
    .option('--limit <n>', 'at most this many of the newest events', intOption)
    .option('--json', 'print the raw JSON answer')
    .action((opts: { fn?: string; limit?: number; json?: boolean }) => run(async (ctx, client) => {
      const query = new URLSearchParams()
      if (opts.fn !== undefined) query.set('function', opts.fn)
      if (opts.limit !== undefined) query.set('limit', String(opts.limit))
      const { data } = await client.call('GET', `/v1/events${query.size === 0 ? '' : `?${query.toString()}`}`)
      if (opts.json === true || !isEvents(data)) {
        ctx.stdout.write(formatJson(data))
        return
      }
      if (data.events.length === 0) {
        ctx.stderr.write('no events\n')
        return
      }
      ctx.stdout.write(formatTable(['TIME', 'TYPE', 'FUNCTION', 'DETAILS'], data.events.map(eventRow)))
    }))
}
