import type { Command } from 'commander'
import { intOption, type Runner } from './args.js'
import { CliError, kindlingError, parseJson, ApiError } from './http.js'
import { cell, formatJson, formatTable, isRecord, listOf } from './output.js'

export function registerBuildsCommands(program: Command, run: Runner): void {
  const builds = program.command('builds').description('dependency builds of functions (npm, in a sandboxed build instance)')

  builds.command('list')
    .description('builds, newest first')
    .option('--fn <name>', 'only the builds one function asked for')
    .option('--limit <n>', 'at most this many', intOption)
    .option('--json', 'print the raw JSON answer')
    .action((opts: { fn?: string; limit?: number; json?: boolean }) => run(async (ctx, client) => {
      const q = new URLSearchParams()
      if (opts.fn !== undefined) q.set('function', opts.fn)
      if (opts.limit !== undefined) q.set('limit', String(opts.limit))
      const { data } = await client.call('GET', `/v1/builds${q.size === 0 ? '' : `?${q.toString()}`}`)
      const list = listOf(data, 'builds')
      if (opts.json === true || list === undefined) {
        ctx.stdout.write(formatJson(data))
        return
      }
      if (list.length === 0) {
        ctx.stderr.write('no builds\n')
        return
      }
      ctx.stdout.write(formatTable(['ID', 'STATE', 'FUNCTIONS', 'DURATION', 'COMMAND', 'CREATED', 'ERROR'], list.map((b) => {
        const r = isRecord(b) ? b : {}
        const err = isRecord(r['error']) ? `${cell(r['error']['reason'])}: ${cell(r['error']['message'])}` : '-'
        return [cell(r['id']), cell(r['state']), Array.isArray(r['functions']) ? r['functions'].join(',') : '-',
          typeof r['durationMs'] === 'number' ? `${r['durationMs']} ms` : '-', cell(r['command']), cell(r['createdAt']), err]
      })))
    }))

  builds.command('get')
    .description('one build: state, duration, inputs hash, the functions that asked for it')
    .argument('<id>', 'build id (b-…)')
    .action((id: string) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/builds/${encodeURIComponent(id)}`)
      ctx.stdout.write(formatJson(data))
    }))

  builds.command('log')
    .description("a build's log (followed while the build runs)")
    .argument('<id>', 'build id (b-…)')
    .action((id: string) => run(async (ctx, client) => {
      const res = await client.stream('GET', `/v1/builds/${encodeURIComponent(id)}/log`)
      if (res.status !== 200) {
        const chunks: Buffer[] = []
        for await (const c of res.body) chunks.push(c)
        const data = parseJson(Buffer.concat(chunks))
        const kerr = kindlingError(data)
        throw kerr !== undefined ? new ApiError(res.status, kerr.code, kerr.message) : new CliError(`error: GET /v1/builds/${id}/log answered ${res.status}`)
      }
      for await (const c of res.body) ctx.stdout.write(c.toString('utf8'))
    }))
}
