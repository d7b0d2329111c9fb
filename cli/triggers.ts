import { type Command, InvalidArgumentError } from 'commander'
import { headerOption, type Runner } from './args.js'
import { cell, formatJson, formatTable, isRecord, listOf } from './output.js'

interface PutOptions {
  cron: string
  function: string
  data?: string
  timezone?: string
  header?: Array<[string, string]>
  disabled?: boolean
}

const HEADERS = ['NAME', 'CRON', 'TZ', 'FUNCTION', 'ENABLED', 'LAST-TICK', 'NEXT', 'MISSED']

function rows(items: unknown[]): string[][] | undefined {
  if (!items.every(isRecord)) return undefined
  return items.map((r) => [
    cell(r['name']), cell(r['cron']), cell(r['timezone']), cell(r['function']), cell(r['enabled']),
    cell(r['lastTick']), cell(Array.isArray(r['nextRuns']) ? r['nextRuns'][0] : undefined), cell(r['missedTicks']),
  ])
}

/** `-d` is sent as it is when it is not JSON, else as the JSON value it spells. */
function bodyOf(data: string): unknown {
  try { return JSON.parse(data) as unknown } catch { return data }
}

export function registerTriggersCommands(program: Command, run: Runner): void {
  const triggers = program.command('triggers').description('cron triggers: call a function on a schedule, once per tick across the replicas (KINDLING_STORE=redis)')

  triggers.command('put')
    .description('define or replace a trigger (PUT /v1/triggers/NAME)')
    .argument('<name>', 'trigger name')
    .requiredOption('--cron <expr>', 'cron expression: 5 fields, or 6 with seconds first (quote it)')
    .requiredOption('--function <fn>', 'function to call: NAME, NAME@ALIAS or NAME@VERSION')
    .option('-d, --data <body>', 'body of each call (POST): JSON is sent as JSON, anything else as text; without it the call is a GET')
    .option('--timezone <tz>', 'IANA time zone the expression is read in (default UTC)')
    .option('-H, --header <header>', "request header of each call, 'name: value' (repeatable)", headerOption)
    .option('--disabled', 'keep the trigger without firing it')
    .action((name: string, opts: PutOptions) => run(async (ctx, client) => {
      if (opts.cron.trim() === '') throw new InvalidArgumentError('--cron must not be empty')
      const body: Record<string, unknown> = { cron: opts.cron, function: opts.function }
      if (opts.data !== undefined) body['body'] = bodyOf(opts.data)
      if (opts.timezone !== undefined) body['timezone'] = opts.timezone
      if (opts.header !== undefined) body['headers'] = Object.fromEntries(opts.header)
      if (opts.disabled === true) body['enabled'] = false
      const { status, data } = await client.call('PUT', `/v1/triggers/${encodeURIComponent(name)}`, body)
      ctx.stdout.write(`trigger ${name} ${status === 201 ? 'created' : 'updated'}\n`)
      const r = isRecord(data) ? rows([data]) : undefined
      if (r !== undefined) ctx.stdout.write(formatTable(HEADERS, r))
    }))

  triggers.command('list')
    .description('list triggers')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', '/v1/triggers')
      const items = listOf(data, 'triggers')
      const r = opts.json === true || items === undefined ? undefined : rows(items)
      ctx.stdout.write(r === undefined ? formatJson(data) : formatTable(HEADERS, r))
    }))

  triggers.command('get')
    .description('show a trigger, its last tick and its next fire times (JSON)')
    .argument('<name>', 'trigger name')
    .action((name: string) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/triggers/${encodeURIComponent(name)}`)
      ctx.stdout.write(formatJson(data))
    }))

  triggers.command('delete')
    .description('delete a trigger (every replica stops firing it)')
    .argument('<name>', 'trigger name')
    .action((name: string) => run(async (ctx, client) => {
      await client.call('DELETE', `/v1/triggers/${encodeURIComponent(name)}`)
      ctx.stdout.write(`trigger ${name} deleted\n`)
    }))
}
