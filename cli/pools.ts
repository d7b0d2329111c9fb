import type { Command } from 'commander'
import type { Runner } from './args.js'
import { cell, formatJson, formatTable, isRecord, pick } from './output.js'

interface PoolRow {
  pool: string
  counts: Record<string, unknown>
}

const COUNT_KEYS = ['idle', 'busy', 'starting'] as const

function counts(o: Record<string, unknown>): Record<string, unknown> {
  return isRecord(o['counts']) ? { ...o, ...o['counts'] } : o
}

function looksLikePool(o: unknown): o is Record<string, unknown> {
  if (!isRecord(o)) return false
  const c = counts(o)
  return COUNT_KEYS.some((k) => typeof c[k] === 'number')
}

/** `generic:node`, `fn:hello`: the labels the pool manager itself uses. */
function label(o: Record<string, unknown>, prefix: string | undefined, key?: string): string {
  const name = cell(key ?? pick(o, 'pool', 'id', 'name', 'function', 'fn', 'runtime'))
  if (name.includes(':')) return name
  const kind = prefix ?? pick(o, 'kind', 'type')
  return typeof kind === 'string' && kind !== '' ? `${kind}:${name}` : name
}

/** Rows from a list (`[{…}]`) or a map keyed by name (`{node: {…}}`); undefined when a member is not a pool. */
function rowsOf(value: unknown, prefix: string | undefined): PoolRow[] | undefined {
  if (Array.isArray(value)) {
    if (!value.every(looksLikePool)) return undefined
    return value.map((o) => ({ pool: label(o, prefix), counts: counts(o) }))
  }
  if (isRecord(value)) {
    const entries = Object.entries(value)
    if (!entries.every(([, o]) => looksLikePool(o))) return undefined
    return entries.map(([k, o]) => ({ pool: label(o as Record<string, unknown>, prefix, pick(o as Record<string, unknown>, 'pool', 'name') === undefined ? k : undefined), counts: counts(o as Record<string, unknown>) }))
  }
  return undefined
}

/**
 * The rows of a `GET /v1/pools` answer in any of the shapes it may take:
 * `[…]`, `{pools: …}`, `{runtimes: …, functions: …}` or a map keyed by pool. Undefined when unknown.
 */
export function poolRows(data: unknown): PoolRow[] | undefined {
  if (isRecord(data) && ('runtimes' in data || 'functions' in data)) {
    const generic = data['runtimes'] === undefined ? [] : rowsOf(data['runtimes'], 'generic')
    const fns = data['functions'] === undefined ? [] : rowsOf(data['functions'], 'fn')
    return generic === undefined || fns === undefined ? undefined : [...generic, ...fns]
  }
  if (isRecord(data) && 'pools' in data) return rowsOf(data['pools'], undefined)
  return rowsOf(data, undefined)
}

export function registerPoolsCommand(program: Command, run: Runner): void {
  program.command('pools')
    .description('show warm pools: idle / busy / starting instances and targets')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', '/v1/pools')
      const rows = opts.json === true ? undefined : poolRows(data)
      if (rows === undefined) {
        ctx.stdout.write(formatJson(data))
        return
      }
      if (rows.length === 0) {
        ctx.stderr.write('no pools\n')
        return
      }
      ctx.stdout.write(formatTable(['POOL', 'IDLE', 'BUSY', 'STARTING', 'TARGET'], rows.map((r) => [
        r.pool, cell(r.counts['idle']), cell(r.counts['busy']), cell(r.counts['starting']),
        cell(pick(r.counts, 'target', 'targetSize', 'poolSize', 'prewarm', 'size')),
      ])))
    }))
}
