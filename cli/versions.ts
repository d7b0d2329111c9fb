import { InvalidArgumentError, type Command } from 'commander'
import { intOption, numberOption, type Runner } from './args.js'
import { CliError, type ApiClient } from './http.js'
import { cell, formatJson, formatTable, isRecord, listOf, type CliContext } from './output.js'

interface AliasSetOptions {
  version?: number
  weights?: string
}

interface CanaryStartOptions {
  to: number
  alias?: string
  steps?: string
  interval?: string
  minCalls?: number
  maxErrorRate?: number
  maxP99Ms?: number
}

/** commander argParser for a rate between 0 and 1 (0 allowed: "no worse than the baseline at all"). */
function rateOption(value: string): number {
  const n = Number(value.trim())
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('must be a number from 0 to 1')
  return n
}

function fnPath(name: string, rest = ''): string {
  return `/v1/functions/${encodeURIComponent(name)}${rest}`
}

/** `kindling fn versions|rollback|alias|canary` (issue 15), registered under `kindling fn`. */
export function registerVersionCommands(fn: Command, run: Runner): void {
  fn.command('versions')
    .description("a function's kept versions, oldest first, and the aliases routing to each (GET /v1/functions/NAME/versions)")
    .argument('<name>', 'function name')
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { json?: boolean }) => run((ctx, client) => versions(ctx, client, name, opts.json === true)))

  fn.command('rollback')
    .description('latest serves an earlier version from the next call on (POST /v1/functions/NAME/rollback)')
    .argument('<name>', 'function name')
    .option('--to <version>', 'the version to serve (default: the newest kept one below the one served)', intOption)
    .action((name: string, opts: { to?: number }) => run(async (ctx, client) => {
      const { data } = await client.call('POST', fnPath(name, '/rollback'), opts.to === undefined ? {} : { to: opts.to })
      const r = isRecord(data) ? data : {}
      ctx.stdout.write(`rolled back ${name}: latest ${cell(r['from'])} → ${cell(r['to'])}\n`)
    }))

  const alias = fn.command('alias').description('name what calls to NAME@ALIAS go to: one version, or versions by weight')

  alias.command('list')
    .description("a function's aliases (GET /v1/functions/NAME/aliases)")
    .argument('<name>', 'function name')
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', fnPath(name, '/aliases'))
      const aliases = isRecord(data) && isRecord(data['aliases']) ? data['aliases'] : undefined
      if (opts.json === true || aliases === undefined) {
        ctx.stdout.write(formatJson(data))
        return
      }
      const rows = Object.entries(aliases).map(([a, target]) => [a, routesTo(target)])
      if (rows.length === 0) {
        ctx.stderr.write('no aliases\n')
        return
      }
      ctx.stdout.write(formatTable(['ALIAS', 'ROUTES TO'], rows))
    }))

  alias.command('set')
    .description('create or move an alias (PUT /v1/functions/NAME/aliases/ALIAS)')
    .argument('<name>', 'function name')
    .argument('<alias>', 'alias: a letter, then lowercase letters, digits and dashes')
    .option('--version <version>', 'route every call to this version', intOption)
    .option('--weights <weights>', 'route by weight, e.g. 3=90,4=10 (version=weight pairs)')
    .action((name: string, aliasName: string, opts: AliasSetOptions) => run(async (ctx, client) => {
      if ((opts.version === undefined) === (opts.weights === undefined)) {
        throw new CliError('error: alias set needs exactly one of --version V or --weights V=W,…')
      }
      const target = opts.version !== undefined ? { version: opts.version } : { weights: parseWeights(opts.weights ?? '') }
      const { data } = await client.call('PUT', fnPath(name, `/aliases/${encodeURIComponent(aliasName)}`), target)
      const now = isRecord(data) && isRecord(data['aliases']) ? data['aliases'][aliasName] : undefined
      ctx.stdout.write(`alias ${aliasName} of ${name}: ${routesTo(now ?? target)}\n`)
    }))

  alias.command('delete')
    .description('delete an alias (DELETE /v1/functions/NAME/aliases/ALIAS)')
    .argument('<name>', 'function name')
    .argument('<alias>', 'alias')
    .action((name: string, aliasName: string) => run(async (ctx, client) => {
      await client.call('DELETE', fnPath(name, `/aliases/${encodeURIComponent(aliasName)}`))
      ctx.stdout.write(`deleted alias ${aliasName} of ${name}\n`)
    }))

  const canary = fn.command('canary').description("release a version on an alias step by step, judged against the alias's version now")

  canary.command('start')
    .description('start a canary release (PUT /v1/functions/NAME/canary)')
    .argument('<name>', 'function name')
    .requiredOption('--to <version>', 'the version to release', intOption)
    .option('--alias <alias>', 'the alias it releases on (default latest; its version now is the baseline)')
    .option('--steps <percents>', "the canary's weight at each step, e.g. 10,50,100 (default)")
    .option('--interval <duration>', "each step's window: 30s, 5m, 500ms (default 60s)")
    .option('--min-calls <n>', 'canary calls a window needs for a verdict (default 50)', intOption)
    .option('--max-error-rate <rate>', "how far the canary's error rate may exceed the baseline's (default 0.05)", rateOption)
    .option('--max-p99-ms <ms>', 'a p99 above it breaches when the canary is also slower than the baseline', numberOption)
    .action((name: string, opts: CanaryStartOptions) => run(async (ctx, client) => {
      const body: Record<string, unknown> = { to: opts.to }
      if (opts.alias !== undefined) body['alias'] = opts.alias
      if (opts.steps !== undefined) body['steps'] = parseSteps(opts.steps)
      if (opts.interval !== undefined) body['interval'] = opts.interval
      if (opts.minCalls !== undefined) body['minCalls'] = opts.minCalls
      if (opts.maxErrorRate !== undefined) body['maxErrorRate'] = opts.maxErrorRate
      if (opts.maxP99Ms !== undefined) body['maxP99Ms'] = opts.maxP99Ms
      const { data } = await client.call('PUT', fnPath(name, '/canary'), body)
      if (!isRecord(data)) {
        ctx.stdout.write(formatJson(data))
        return
      }
      ctx.stdout.write(`${canaryTitle(name, data)}, ${stepOf(data)}\n`)
    }))

  canary.command('status')
    .description("the canary's state, its live window and each verdict's numbers (GET /v1/functions/NAME/canary)")
    .argument('<name>', 'function name')
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await client.call('GET', fnPath(name, '/canary'))
      ctx.stdout.write(opts.json === true || !isRecord(data) ? formatJson(data) : formatCanary(name, data))
    }))

  canary.command('abort')
    .description('abort the running canary: the alias goes back to the baseline (DELETE /v1/functions/NAME/canary)')
    .argument('<name>', 'function name')
    .action((name: string) => run(async (ctx, client) => {
      const { data } = await client.call('DELETE', fnPath(name, '/canary'))
      const c = isRecord(data) ? data : {}
      ctx.stdout.write(`aborted the canary of ${name}: ${cell(c['alias'])} serves version ${cell(c['baseline'])} again\n`)
    }))
}

/** `--weights 3=90,4=10` as the API's `{"3": 90, "4": 10}`. */
export function parseWeights(raw: string): Record<string, number> {
  const weights: Record<string, number> = {}
  const pairs = raw.split(',').map((p) => p.trim())
  for (const pair of pairs) {
    const m = /^([1-9][0-9]*)=([0-9]+)$/.exec(pair)
    if (m === null || m[1] === undefined || m[2] === undefined) {
      throw new CliError(`error: --weights: "${pair}" is not VERSION=WEIGHT (whole numbers, e.g. 3=90,4=10)`)
    }
    if (weights[m[1]] !== undefined) throw new CliError(`error: --weights: version ${m[1]} is given twice`)
    weights[m[1]] = Number(m[2])
  }
  return weights
}

/** `--steps 10,50,100` as an array of integers (the API checks their range and order). */
export function parseSteps(raw: string): number[] {
  return raw.split(',').map((p) => p.trim()).map((p) => {
    if (!/^[0-9]+$/.test(p)) throw new CliError(`error: --steps: "${p}" is not a whole percent (e.g. 10,50,100)`)
    return Number(p)
  })
}

/** An alias's target in words: `version 3`, or `3: 90%, 4: 10%` (shares of the total weight). */
function routesTo(target: unknown): string {
  if (!isRecord(target)) return cell(target)
  if (target['version'] !== undefined) return `version ${cell(target['version'])}`
  const weights = target['weights']
  if (!isRecord(weights)) return cell(target)
  const entries = Object.entries(weights)
    .map(([v, w]) => [v, typeof w === 'number' ? w : Number(w)] as const)
    .sort((a, b) => Number(a[0]) - Number(b[0]))
  const total = entries.reduce((sum, [, w]) => sum + (Number.isFinite(w) ? w : 0), 0)
  if (total <= 0) return entries.map(([v, w]) => `${v}: weight ${String(w)}`).join(', ')
  return entries.map(([v, w]) => `${v}: ${round1((w / total) * 100)}%`).join(', ')
}

function round1(n: number): string {
  return String(Math.round(n * 10) / 10)
}

/** An ISO time to the second: `2025-01-01T00:00:00Z`. */
function isoSeconds(value: unknown): string {
  if (typeof value !== 'string') return cell(value)
  return value.replace(/^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d+(Z|[+-]\d\d:?\d\d)$/, '$1$2')
}

async function versions(ctx: CliContext, client: ApiClient, name: string, json: boolean): Promise<void> {
  const { data } = await client.call('GET', fnPath(name, '/versions'))
  const items = listOf(data, 'versions')
  if (json || items === undefined || !items.every(isRecord)) {
    ctx.stdout.write(formatJson(data))
    return
  }
  if (items.length === 0) {
    ctx.stderr.write('no versions\n')
    return
  }
  const rows = items.map((v) => {
    const hash = v['codeHash']
    const routed = Array.isArray(v['routedBy']) ? v['routedBy'].filter(isRecord) : []
    const aliases = routed.map((r) => (r['percent'] === 100 || r['percent'] === undefined ? cell(r['alias']) : `${cell(r['alias'])} ${cell(r['percent'])}%`))
    return [
      cell(v['version']),
      typeof hash === 'string' ? hash.slice(0, 12) : cell(hash),
      isoSeconds(v['updatedAt']),
      cell(v['deployedBy']),
      aliases.length === 0 ? '-' : aliases.join(', '),
    ]
  })
  ctx.stdout.write(formatTable(['VERSION', 'CODE', 'DEPLOYED', 'BY', 'ALIASES'], rows))
}

/** `canary of NAME: version TO on ALIAS (baseline B)` */
function canaryTitle(name: string, c: Record<string, unknown>): string {
  return `canary of ${name}: version ${cell(c['to'])} on ${cell(c['alias'])} (baseline ${cell(c['baseline'])})`
}

/** `step 2/3 at 50 %` (`step` is an index into `steps`). */
function stepOf(c: Record<string, unknown>): string {
  const steps = Array.isArray(c['steps']) ? c['steps'] : []
  const i = typeof c['step'] === 'number' ? c['step'] : undefined
  if (i === undefined) return 'step -'
  return `step ${String(i + 1)}/${String(steps.length)} at ${cell(steps[i])} %`
}

function duration(ms: unknown): string {
  if (typeof ms !== 'number') return cell(ms)
  return ms < 1000 ? `${String(Math.round(ms))} ms` : `${round1(ms / 1000)} s`
}

function milliseconds(ms: unknown): string {
  return typeof ms === 'number' ? `${round1(ms)} ms` : cell(ms)
}

function percent(rate: unknown): string {
  return typeof rate === 'number' ? `${(rate * 100).toFixed(1)} %` : cell(rate)
}

/** One side of a verdict: `12 calls, 1 errors (8.3 %), p50 3 ms, p99 9 ms`. */
function sideLine(side: unknown): string {
  if (!isRecord(side)) return cell(side)
  if (side['calls'] === 0) return '0 calls'
  return `${cell(side['calls'])} calls, ${cell(side['errors'])} errors (${percent(side['errorRate'])}), p50 ${milliseconds(side['p50Ms'])}, p99 ${milliseconds(side['p99Ms'])}`
}

/** `U 540, z 2.71, p 0.0034`: the Mann-Whitney test of the canary's latencies against the baseline's. */
function latencyLine(latency: Record<string, unknown>): string {
  const p = latency['p']
  const pText = typeof p === 'number' ? (p !== 0 && p < 0.001 ? p.toExponential(1) : p.toFixed(3)) : cell(p)
  const z = latency['z']
  return `U ${cell(latency['u'])}, z ${typeof z === 'number' ? z.toFixed(2) : cell(z)}, p ${pText}`
}

/** A history table's cells for one side: calls, error %, p99 (`-` when it had no calls). */
function sideCells(side: unknown): string[] {
  if (!isRecord(side)) return ['-', '-', '-']
  if (side['calls'] === 0) return ['0', '-', '-']
  const rate = side['errorRate']
  return [cell(side['calls']), typeof rate === 'number' ? (rate * 100).toFixed(1) : cell(rate), milliseconds(side['p99Ms'])]
}

function formatCanary(name: string, c: Record<string, unknown>): string {
  const lines: string[] = [canaryTitle(name, c), `state: ${cell(c['state'])}, ${stepOf(c)}`]
  const rules = [`interval ${duration(c['intervalMs'])}`, `min calls ${cell(c['minCalls'])}`, `max error rate +${cell(c['maxErrorRate'])}`]
  if (c['maxP99Ms'] !== undefined && c['maxP99Ms'] !== null) rules.push(`max p99 ${milliseconds(c['maxP99Ms'])}`)
  lines.push(`rules: ${rules.join(', ')}`)
  if (c['state'] !== 'running' && c['reason'] !== undefined && c['reason'] !== null) lines.push(`reason: ${cell(c['reason'])}`)
  const win = c['window']
  if (isRecord(win)) {
    const v = isRecord(win['verdict']) ? win['verdict'] : {}
    const reasons = Array.isArray(v['reasons']) ? v['reasons'].map(cell) : []
    lines.push(`window: ${duration(win['elapsedMs'])} of ${duration(c['intervalMs'])}, so far ${cell(v['result'])}${reasons.length === 0 ? '' : ` (${reasons.join('; ')})`}`)
    lines.push(`  canary    ${sideLine(v['canary'])}`)
    lines.push(`  baseline  ${sideLine(v['baseline'])}`)
    if (isRecord(v['latency'])) lines.push(`  latency   ${latencyLine(v['latency'])}`)
  }
  let out = lines.join('\n') + '\n'
  const history = Array.isArray(c['history']) ? c['history'].filter(isRecord) : []
  if (history.length > 0) {
    const rows = history.map((h) => [
      typeof h['step'] === 'number' ? String(h['step'] + 1) : cell(h['step']),
      `${cell(h['weight'])}%`,
      cell(h['result']),
      ...sideCells(h['canary']),
      ...sideCells(h['baseline']),
    ])
    out += '\n' + formatTable(['STEP', 'WEIGHT', 'RESULT', 'CANARY CALLS', 'ERR%', 'P99', 'BASELINE CALLS', 'ERR%', 'P99'], rows)
  }
  return out
}
