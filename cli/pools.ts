import type { Command } from 'commander'
import type { Runner } from './args.js'
import { cell, formatJson, formatTable, isRecord } from './output.js'

/** `GET /v1/pools`: the pool manager's pools and the router's view of each function. */
export interface PoolsAnswer {
  pools: Array<{ pool: string; target: number; idle: number; starting: number; version?: number }>
  functions: Array<{ function: string; version: number; instances: number; busy: number; waiting: number; pending: number }>
  /** The start gate: starts running now, waiting for their turn, and how many may run at once. */
  starts?: { running: number; waiting: number; limit: number }
}

function isPoolsAnswer(data: unknown): data is PoolsAnswer {
  return isRecord(data) && Array.isArray(data['pools']) && Array.isArray(data['functions'])
}

/** The two tables of `kindling pools`. */
export function formatPools(data: PoolsAnswer): string {
  const pools = formatTable(['POOL', 'TARGET', 'IDLE', 'STARTING'], data.pools.map((p) => [
    p.pool, cell(p.target), cell(p.idle), cell(p.starting),
  ]))
  const s = data.starts
  const gate = s === undefined ? '' : `instance starts: ${s.running} running, ${s.waiting} waiting (at most ${s.limit} at once)\n`
  if (data.functions.length === 0) return `${pools}${gate}`
  const fns = formatTable(['FUNCTION', 'VERSION', 'INSTANCES', 'BUSY', 'WAITING', 'STARTING'], data.functions.map((f) => [
    f.function, cell(f.version), cell(f.instances), cell(f.busy), cell(f.waiting), cell(f.pending),
  ]))
  return `${pools}${gate}\n${fns}`
}

export function registerPoolsCommand(program: Command, run: Runner): void {
  program.command('pools')
    .description('show the pools (target, idle, starting) and the instances serving each function')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', '/v1/pools')
      ctx.stdout.write(opts.json === true || !isPoolsAnswer(data) ? formatJson(data) : formatPools(data))
    }))
}
