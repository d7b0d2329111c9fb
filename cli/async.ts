import { readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import type { Runner } from './args.js'
import { ApiError, CliError, kindlingError, parseJson } from './http.js'
import { cell, formatJson, formatTable, isRecord, listOf } from './output.js'

/** `kindling async …`: async invocations and the dead-letter queue (issue 11). */
export function registerAsyncCommands(program: Command, run: Runner): void {
  const a = program.command('async').description('async invocations (KINDLING_STORE=redis): enqueue, inspect, the dead-letter queue')

  a.command('invoke <name>')
    .description('enqueue an async invocation of NAME[@alias]; prints the job id')
    .option('-d, --data <body>', 'request body, or @file to send a file')
    .option('--idempotency-key <key>', 'the same key within 24 h gives the same job')
    .option('--path <path>', 'sub-path (event.path)', '')
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { data?: string; idempotencyKey?: string; path: string; json?: boolean }) => run(async (ctx, client) => {
      const body = opts.data === undefined ? undefined : opts.data.startsWith('@')
        ? await readFile(opts.data.slice(1)).catch((err: Error) => { throw new CliError(`error: -d ${opts.data}: ${err.message}`) })
        : opts.data
      const path = opts.path === '' || opts.path.startsWith('/') ? opts.path : `/${opts.path}`
      const res = await client.send('POST', `/async/fn/${encodeURIComponent(name).replaceAll('%40', '@')}${path}`, {
        headers: opts.idempotencyKey === undefined ? {} : { 'idempotency-key': opts.idempotencyKey }, body,
      })
      const data = parseJson(res.body)
      if (res.status !== 202) {
        const k = kindlingError(data)
        throw new ApiError(res.status, k?.code, k?.message ?? `POST /async/fn/${name} answered ${res.status}`)
      }
      ctx.stdout.write(opts.json === true ? formatJson(data) : `${isRecord(data) ? String(data['id']) : ''}\n`)
    }))

  a.command('get <id>')
    .description('an async job: state, attempts, result or error')
    .action((id: string) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/async/${encodeURIComponent(id)}`)
      ctx.stdout.write(formatJson(data))
    }))

  const dlq = a.command('dlq').description('the dead-letter queue')
  dlq.command('list')
    .description('dead jobs, newest first')
    .option('--limit <n>', 'at most this many', '100')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { limit: string; json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/async/dlq?limit=${encodeURIComponent(opts.limit)}`)
      const jobs = listOf(data, 'jobs')
      if (opts.json === true || jobs === undefined) { ctx.stdout.write(formatJson(data)); return }
      ctx.stdout.write(formatTable(['JOB', 'FUNCTION', 'AT', 'ERROR'], jobs.filter(isRecord).map((j) => {
        const e = isRecord(j['error']) ? j['error'] : {}
        return [cell(j['id']), cell(j['function']), cell(j['at']), `${cell(e['code'])} ${cell(e['message'])}`.slice(0, 100)]
      })))
    }))
  dlq.command('show <id>')
    .description('a dead job')
    .action((id: string) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/async/dlq/${encodeURIComponent(id)}`)
      ctx.stdout.write(formatJson(data))
    }))
  dlq.command('redrive [id]')
    .description('enqueue a dead job again (same id, attempts reset); without ID every dead job')
    .action((id: string | undefined) => run(async (ctx, client) => {
      const { data } = await client.call('POST', id === undefined ? '/v1/async/dlq/redrive' : `/v1/async/dlq/${encodeURIComponent(id)}/redrive`)
      const ids = isRecord(data) && Array.isArray(data['redriven']) ? data['redriven'] as unknown[] : []
      ctx.stdout.write(`redrove ${ids.length} job(s)${ids.length > 0 ? `: ${ids.join(', ')}` : ''}\n`)
    }))
  dlq.command('purge [id]')
    .description('delete a dead job; without ID the whole dead-letter queue')
    .action((id: string | undefined) => run(async (ctx, client) => {
      const { data } = await client.call('DELETE', id === undefined ? '/v1/async/dlq' : `/v1/async/dlq/${encodeURIComponent(id)}`)
      const ids = isRecord(data) && Array.isArray(data['purged']) ? data['purged'] as unknown[] : []
      ctx.stdout.write(`purged ${ids.length} job(s)\n`)
    }))
}
