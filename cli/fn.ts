import { readFile } from 'node:fs/promises'
import { Option, type Command } from 'commander'
import { CodeError, packCode, type CodeBody, type PackOptions } from './code-pack.js'
import { envOption, headerOption, intOption, numberOption, type Runner } from './args.js'
import { ApiError, CliError, hasHeader, jsonLines, kindlingError, parseJson, statusLine, type ApiClient } from './http.js'
import { registerLogsCommand } from './logs.js'
import { cell, formatJson, formatTable, isRecord, listOf, pick, type CliContext } from './output.js'
import { registerVersionCommands } from './versions.js'

/** Deploy options whose commander names equal the body fields of `PUT /v1/functions/:name`. */
const SPEC_FIELDS = [
  'entrypoint', 'mode', 'prewarm', 'concurrency', 'maxInstances', 'queueTimeoutMs', 'timeoutMs',
  'memoryMb', 'cpu', 'network', 'maxInvocations', 'maxAgeMs', 'idleTimeoutMs',
] as const

interface DeployOptions {
  runtime: string
  code: string
  entrypoint?: string
  includeNodeModules?: boolean
  env?: Record<string, string>
  /** false with `--no-promote`: store the version, keep `latest` where it is. */
  promote?: boolean
  [field: string]: unknown
}

interface InvokeOptions {
  request?: string
  data?: string
  header?: Array<[string, string]>
  path?: string
  include?: boolean
}

export function registerFnCommands(program: Command, run: Runner): void {
  const fn = program.command('fn').description('deploy, invoke and manage functions')

  fn.command('deploy')
    .description('create or update a function (PUT /v1/functions/NAME)')
    .argument('<name>', 'function name (a DNS label)')
    .requiredOption('--runtime <runtime>', 'runtime, e.g. node')
    .requiredOption('--code <path>', 'an ES module file, a .tar.gz/.tgz archive, or a directory to pack')
    .option('--entrypoint <file>', 'module to load (directory default: index.js, or index.mjs when only that exists)')
    .addOption(new Option('--mode <mode>', 'persistence mode').choices(['ephemeral', 'recycle', 'persistent']))
    .option('--prewarm <n>', 'code-loaded instances kept warm', intOption)
    .option('--concurrency <n>', 'concurrent calls per instance', intOption)
    .option('--max-instances <n>', 'instances the function may use', intOption)
    .option('--queue-timeout-ms <ms>', 'how long a call may wait for an instance', intOption)
    .option('--timeout-ms <ms>', 'call timeout', intOption)
    .option('--memory-mb <mb>', 'memory limit per instance, MiB', intOption)
    .option('--cpu <cores>', 'CPU quota per instance, cores', numberOption)
    .option('--env <KEY=VALUE>', 'environment variable (repeatable)', envOption)
    .addOption(new Option('--network <network>', 'network access').choices(['none', 'egress']))
    .option('--max-invocations <n>', 'recycle an instance after this many calls', intOption)
    .option('--max-age-ms <ms>', 'recycle an instance after this age', intOption)
    .option('--idle-timeout-ms <ms>', 'stop an idle instance after this long', intOption)
    .option('--include-node-modules', "pack the directory's node_modules as it is (vendored: the platform builds nothing)")
    .option('--no-promote', 'store the new version without moving latest to it (for an alias or a canary)')
    .action((name: string, opts: DeployOptions) => run((ctx, client) => deploy(ctx, client, name, opts)))

  fn.command('invoke')
    .description('call a function (ANY /fn/NAME[@alias][/path]) and print its answer')
    .argument('<name>', 'function name, or NAME@alias / NAME@version')
    .option('-X, --request <method>', 'HTTP method (default GET, or POST with -d)')
    .option('-d, --data <body>', 'request body, or @file to send a file')
    .option('-H, --header <header>', "request header 'name: value' (repeatable)", headerOption)
    .option('--path <path>', 'sub-path after /fn/NAME (becomes event.path)')
    .option('-i, --include', 'print the status line and headers before the body')
    .action((name: string, opts: InvokeOptions) => run((ctx, client) => invoke(ctx, client, name, opts)))

  registerLogsCommand(fn, run)
  registerVersionCommands(fn, run)

  fn.command('list')
    .description('list functions (every page, or one with --limit)')
    .option('--limit <n>', 'one page of at most this many functions (the next page: --cursor)', intOption)
    .option('--cursor <cursor>', "the page after the one that printed this cursor")
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean; limit?: number; cursor?: string }) => run((ctx, client) => list(ctx, client, opts)))

  fn.command('get')
    .description('show one function: spec and status')
    .argument('<name>', 'function name')
    .action((name: string) => run(async (ctx, client) => {
      const { data } = await client.call('GET', `/v1/functions/${encodeURIComponent(name)}`)
      ctx.stdout.write(formatJson(data))
    }))

  fn.command('delete')
    .description('delete a function (drains in-flight calls)')
    .argument('<name>', 'function name')
    .action((name: string) => run(async (ctx, client) => {
      await client.call('DELETE', `/v1/functions/${encodeURIComponent(name)}`)
      ctx.stdout.write(`deleted ${name}\n`)
    }))
}

/** The code part of a deploy body, from a file, an archive or a directory (`--code`). */
export async function codeBody(path: string, entrypoint: string | undefined, opts: PackOptions = {}): Promise<CodeBody> {
  try {
    return await packCode(path, entrypoint, opts)
  } catch (err) {
    if (!(err instanceof CodeError)) throw err
    throw new CliError(`error: --code ${path}${err.message.startsWith('is ') ? ' ' : ': '}${err.message}`)
  }
}

async function deploy(ctx: CliContext, client: ApiClient, name: string, opts: DeployOptions): Promise<void> {
  const note = (line: string): void => { ctx.stderr.write(`${line}\n`) }
  const body: Record<string, unknown> = { runtime: opts.runtime, ...(await codeBody(opts.code, opts.entrypoint, { includeNodeModules: opts.includeNodeModules, note })) }
  for (const field of SPEC_FIELDS) {
    if (field !== 'entrypoint' && opts[field] !== undefined) body[field] = opts[field]
  }
  if (opts.env !== undefined) body['env'] = opts.env
  // ?wait=true: a deploy that needs a build streams the build's log, then its outcome (one JSON object a line).
  const promote = opts.promote !== false
  const query = promote ? '?wait=true' : '?wait=true&promote=false'
  const res = await client.stream('PUT', `/v1/functions/${encodeURIComponent(name)}${query}`, {
    headers: { 'content-type': 'application/json', accept: 'application/x-ndjson, application/json' },
    body: JSON.stringify(body),
  })
  let data: unknown
  if (String(res.headers['content-type'] ?? '').startsWith('application/x-ndjson')) {
    data = await followDeploy(ctx, res.body)
  } else {
    const chunks: Buffer[] = []
    for await (const c of res.body) chunks.push(c)
    const raw = Buffer.concat(chunks)
    data = parseJson(raw)
    if (res.status < 200 || res.status > 299) throw apiErrorOf(res.status, data, raw)
  }
  const build = isRecord(data) && isRecord(data['build']) ? data['build'] : undefined
  if (build?.['reused'] === true) note(`dependencies: build ${cell(build['id'])} reused (nothing installed)`)
  const version = isRecord(data) ? pick(data, 'version') : undefined
  // The answer is the function as it is served now; `deployed` names the version this deploy stored.
  const stored = isRecord(data) ? pick(data, 'deployed') : undefined
  if (!promote && stored !== undefined && stored !== version) {
    ctx.stdout.write(`stored ${name} version ${cell(stored)} (latest still serves ${cell(version)})\n`)
    return
  }
  if (!promote && stored !== undefined) note('note: a first deploy is always promoted')
  ctx.stdout.write(`deployed ${name} version ${cell(version)}\n`)
}

function apiErrorOf(status: number, data: unknown, raw?: Buffer): ApiError {
  const kerr = kindlingError(data)
  if (kerr !== undefined) return new ApiError(status, kerr.code, kerr.message)
  const text = raw?.toString('utf8').trim().slice(0, 200) ?? ''
  return new ApiError(status, undefined, `deploy answered ${statusLine(status)}${text === '' ? '' : `: ${text}`}`)
}

/** Prints a deploy's build as it runs (stderr) and resolves with the deployed function, or throws its error. */
async function followDeploy(ctx: CliContext, body: AsyncIterable<Buffer>): Promise<unknown> {
  let buildId = ''
  let outcome: { ok: true; data: unknown } | { ok: false; err: ApiError } | undefined
  for await (const ev of jsonLines(body)) {
    if (!isRecord(ev)) continue
    if (ev['event'] === 'build' && isRecord(ev['build'])) {
      buildId = String(ev['build']['id'])
      ctx.stderr.write(`building dependencies: build ${buildId} (${cell(ev['build']['command'])})\n`)
    } else if (ev['event'] === 'log') {
      ctx.stderr.write(`  | ${String(ev['line'])}\n`)
    } else if (ev['event'] === 'result') {
      outcome = { ok: true, data: ev['body'] }
    } else if (ev['event'] === 'error') {
      const status = typeof ev['statusCode'] === 'number' ? ev['statusCode'] : 500
      outcome = { ok: false, err: apiErrorOf(status, ev['error']) }
    }
  }
  if (outcome === undefined) throw new CliError(`error: the deploy's answer ended before its outcome${buildId === '' ? '' : ` (kindling builds get ${buildId})`}`)
  if (!outcome.ok) {
    if (buildId !== '' && outcome.err.code === 'KDL_ERR_BUILD_FAILED') ctx.stderr.write(`the whole log: kindling builds log ${buildId}\n`)
    throw outcome.err
  }
  return outcome.data
}

function invokePath(name: string, sub: string | undefined): string {
  // NAME@alias / NAME@7: the @ stays readable in the path, each side is encoded on its own.
  const at = name.indexOf('@')
  const target = at < 0 ? encodeURIComponent(name) : `${encodeURIComponent(name.slice(0, at))}@${encodeURIComponent(name.slice(at + 1))}`
  const base = `/fn/${target}`
  if (sub === undefined || sub === '' || sub === '/') return base
  return base + (sub.startsWith('/') || sub.startsWith('?') ? sub : `/${sub}`)
}

async function invoke(ctx: CliContext, client: ApiClient, name: string, opts: InvokeOptions): Promise<number> {
  const headers: Record<string, string | string[]> = {}
  for (const [k, v] of opts.header ?? []) {
    const prev = headers[k]
    headers[k] = prev === undefined ? v : [...(Array.isArray(prev) ? prev : [prev]), v]
  }
  let body: string | Buffer | undefined
  if (opts.data !== undefined) {
    const fromFile = opts.data.startsWith('@')
    body = fromFile
      ? await readFile(opts.data.slice(1)).catch((err: Error) => { throw new CliError(`error: -d ${opts.data}: ${err.message}`) })
      : opts.data
    if (!hasHeader(headers, 'content-type')) {
      headers['content-type'] = parseJson(Buffer.from(body)) !== undefined
        ? 'application/json'
        : fromFile ? 'application/octet-stream' : 'text/plain; charset=utf-8'
    }
  }
  const method = opts.request ?? (body === undefined ? 'GET' : 'POST')
  const res = await client.send(method, invokePath(name, opts.path), { headers, body })
  if (opts.include === true) {
    let head = `HTTP/1.1 ${statusLine(res.status)}\n`
    for (const [k, v] of Object.entries(res.headers)) {
      for (const one of Array.isArray(v) ? v : v === undefined ? [] : [v]) head += `${k}: ${one}\n`
    }
    ctx.stdout.write(head + '\n')
  }
  if (res.body.length > 0) {
    ctx.stdout.write(res.body)
    if (ctx.stdout.isTTY === true && res.body[res.body.length - 1] !== 0x0a) ctx.stdout.write('\n')
  }
  const ok = res.status >= 200 && res.status <= 299
  const kerr = ok ? undefined : kindlingError(parseJson(res.body))
  if (kerr !== undefined) ctx.stderr.write(`error ${kerr.code}: ${kerr.message}\n`)
  return ok ? 0 : 1
}

/** `instances by state` rendered compactly: `idle=1 busy=2`, a count, or `-`. */
export function instancesCell(value: unknown): string {
  if (typeof value === 'number') return String(value)
  if (Array.isArray(value)) return String(value.length)
  if (isRecord(value)) {
    const parts = Object.entries(value).filter(([, n]) => typeof n === 'number' && n !== 0).map(([k, n]) => `${k}=${String(n)}`)
    return parts.length === 0 ? '0' : parts.join(' ')
  }
  return cell(value)
}

/** A field of a function record, whether flat or nested under `spec` / `status`. */
function field(item: Record<string, unknown>, key: string): unknown {
  const own = item[key]
  if (own !== undefined && own !== null) return own
  for (const nest of ['spec', 'status']) {
    const n = item[nest]
    if (isRecord(n) && n[key] !== undefined && n[key] !== null) return n[key]
  }
  return undefined
}

async function list(ctx: CliContext, client: ApiClient, opts: { json?: boolean; limit?: number; cursor?: string }): Promise<void> {
  // Without --limit every page is fetched (GET /v1/functions answers at most 1000 a page) and printed as one.
  const one = opts.limit !== undefined || opts.cursor !== undefined
  const items: unknown[] = []
  let cursor = opts.cursor
  let next: string | undefined
  for (;;) {
    const q = new URLSearchParams({ limit: String(opts.limit ?? 1000) })
    if (cursor !== undefined) q.set('cursor', cursor)
    const { data } = await client.call('GET', `/v1/functions?${q.toString()}`)
    const page = listOf(data, 'functions')
    if (page === undefined) {
      ctx.stdout.write(formatJson(data))
      return
    }
    items.push(...page)
    next = isRecord(data) && typeof data['next'] === 'string' ? data['next'] : undefined
    if (one || next === undefined) break
    cursor = next
  }
  if (opts.json === true || !items.every(isRecord)) {
    ctx.stdout.write(formatJson(one && next !== undefined ? { functions: items, next } : { functions: items }))
    return
  }
  if (items.length === 0) {
    ctx.stderr.write('no functions deployed\n')
    return
  }
  const rows = items.map((it) => [
    cell(field(it, 'name')), cell(field(it, 'runtime')), cell(field(it, 'version')),
    cell(field(it, 'mode')), cell(field(it, 'prewarm')), instancesCell(field(it, 'instances')),
  ])
  ctx.stdout.write(formatTable(['NAME', 'RUNTIME', 'VERSION', 'MODE', 'PREWARM', 'INSTANCES'], rows))
  if (one && next !== undefined) ctx.stderr.write(`more: kindling fn list --limit ${opts.limit ?? 1000} --cursor ${next}\n`)
}
