import type { Command } from 'commander'
import { intOption, numberOption, type Runner } from './args.js'
import { cell, formatJson, formatTable, isRecord, listOf } from './output.js'

interface SetOptions {
  poolSize?: number
  memoryMb?: number
  cpu?: number
  image?: string
}

function runtimeRows(data: unknown): string[][] | undefined {
  let items = listOf(data, 'runtimes')
  if (items === undefined && isRecord(data) && Object.values(data).every(isRecord)) {
    items = Object.entries(data).map(([name, spec]) => ({ name, ...(spec as Record<string, unknown>) }))
  }
  if (items === undefined || !items.every(isRecord)) return undefined
  return items.map((r) => [cell(r['name']), cell(r['poolSize']), cell(r['memoryMb']), cell(r['cpu']), cell(r['image'])])
}

export function registerRuntimesCommands(program: Command, run: Runner): void {
  const runtimes = program.command('runtimes').description('show and configure runtimes and their generic pools')

  runtimes.command('list')
    .description('list runtimes')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', '/v1/runtimes')
      const rows = opts.json === true ? undefined : runtimeRows(data)
      ctx.stdout.write(rows === undefined ? formatJson(data) : formatTable(['NAME', 'POOL-SIZE', 'MEMORY-MB', 'CPU', 'IMAGE'], rows))
    }))

  runtimes.command('set')
    .description('configure a runtime (PUT /v1/runtimes/NAME); fields left out keep their value')
    .argument('<name>', 'runtime name')
    .option('--pool-size <n>', 'generic instances kept started', intOption)
    .option('--memory-mb <mb>', 'memory limit per instance, MiB', intOption)
    .option('--cpu <cores>', 'CPU quota per instance, cores', numberOption)
    .option('--image <image>', 'container image (docker / kubernetes backends)')
    .action((name: string, opts: SetOptions) => run(async (ctx, client) => {
      const body: Record<string, unknown> = {}
      for (const key of ['poolSize', 'memoryMb', 'cpu', 'image'] as const) {
        if (opts[key] !== undefined) body[key] = opts[key]
      }
      const { data } = await client.call('PUT', `/v1/runtimes/${encodeURIComponent(name)}`, body)
      const rows = runtimeRows(isRecord(data) ? [{ name, ...data }] : undefined)
      ctx.stdout.write(`runtime ${name} set\n`)
      if (rows !== undefined) ctx.stdout.write(formatTable(['NAME', 'POOL-SIZE', 'MEMORY-MB', 'CPU', 'IMAGE'], rows))
    }))
}
