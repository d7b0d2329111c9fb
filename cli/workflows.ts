import { readFile } from 'node:fs/promises'
import { Option, type Command } from 'commander'
import { isMap, isScalar, isSeq, LineCounter, parseDocument, stringify, type Document, type Node } from 'yaml'
import { intOption, type Runner } from './args.js'
import { ApiError, CliError, kindlingError, parseJson, statusLine, type ApiClient } from './http.js'
import { cell, formatJson, formatTable, isRecord, listOf, type CliContext } from './output.js'

/** A definition file read: the body to send, the name it gives itself, and where its states are (for errors). */
interface DefinitionFile {
  file: string
  body: Record<string, unknown>
  name: string | undefined
  /** `file:line` of a state's field in the file (the state's own line when the field is not there). */
  where(state: string, field: string | undefined): string | undefined
}

const RUN_STATUSES = ['running', 'succeeded', 'failed', 'cancelled']
/** Room for DETAIL and ERROR cells: a table stays readable on a terminal; --json has everything. */
const DETAIL_CHARS = 60

/** `kindling wf …`: workflow definitions and their runs (issue 12). */
export function registerWorkflowCommands(program: Command, run: Runner): void {
  const wf = program.command('wf').alias('workflows').description('workflows: define them from a YAML or JSON file, run them, follow their runs step by step')

  wf.command('apply')
    .description('create or update a workflow from a definition file (PUT /v1/workflows/NAME)')
    .requiredOption('-f, --file <path>', 'definition, YAML or JSON; its top-level `name` names the workflow')
    .option('--name <name>', 'workflow name (instead of the file\'s `name`)')
    .action((opts: { file: string; name?: string }) => run(async (ctx, client) => {
      const def = await readDefinition(opts.file)
      const name = opts.name ?? def.name
      if (name === undefined || name === '') throw new CliError(`error: ${opts.file} has no top-level name: give one, or --name`, 2)
      const { status, data } = await wfCall(client, 'PUT', `/v1/workflows/${encodeURIComponent(name)}`, def.body, def)
      const d = isRecord(data) ? data : {}
      const outcome = status === 201 ? 'created' : d['changed'] === false ? 'unchanged' : 'updated'
      ctx.stdout.write(`workflow ${name} ${outcome} (version ${cell(d['version'])})\n`)
    }))

  wf.command('list')
    .description('workflows and their newest version')
    .option('--json', 'print the raw JSON answer')
    .action((opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await wfCall(client, 'GET', '/v1/workflows')
      const items = listOf(data, 'workflows')
      if (opts.json === true || items === undefined || !items.every(isRecord)) { ctx.stdout.write(formatJson(data)); return }
      if (items.length === 0) { ctx.stderr.write('no workflows\n'); return }
      ctx.stdout.write(formatTable(['NAME', 'VERSION', 'STATES', 'CREATED'],
        items.map((w) => [cell(w['name']), cell(w['version']), cell(w['states']), cell(w['createdAt'])])))
    }))

  wf.command('get')
    .description('a workflow\'s definition, as YAML that `wf apply -f` takes back')
    .argument('<name>', 'workflow name')
    .option('--version <n>', 'an older version', intOption)
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { version?: number; json?: boolean }) => run(async (ctx, client) => {
      const query = opts.version === undefined ? '' : `?version=${opts.version}`
      const { data } = await wfCall(client, 'GET', `/v1/workflows/${encodeURIComponent(name)}${query}`)
      if (opts.json === true || !isRecord(data) || !isRecord(data['definition'])) { ctx.stdout.write(formatJson(data)); return }
      ctx.stdout.write(`# version ${cell(data['version'])}, created ${cell(data['createdAt'])}, digest ${cell(data['digest'])}\n`)
      ctx.stdout.write(stringify({ name: data['name'] ?? name, ...data['definition'] }))
    }))

  wf.command('delete')
    .description('delete a workflow and its versions (its runs stay on record)')
    .argument('<name>', 'workflow name')
    .action((name: string) => run(async (ctx, client) => {
      await wfCall(client, 'DELETE', `/v1/workflows/${encodeURIComponent(name)}`)
      ctx.stdout.write(`workflow ${name} deleted\n`)
    }))

  wf.command('run')
    .description('start a run (POST /wf/NAME): waits for its output unless --async')
    .argument('<name>', 'workflow name')
    .option('-d, --data <json>', 'the run\'s input, JSON, or @file (default {})')
    .option('--async', 'answer at once with the run\'s id')
    .option('--wait <ms>', 'how long to wait for the output before answering with the id', intOption)
    .option('--json', 'print the answer as JSON (the id, or the failure) instead of a line')
    .action((name: string, opts: { data?: string; async?: boolean; wait?: number; json?: boolean }) => run((ctx, client) => start(ctx, client, name, opts)))

  wf.command('runs')
    .description('a workflow\'s runs, newest first')
    .argument('<name>', 'workflow name')
    .addOption(new Option('--status <status>', 'only runs in this status').choices(RUN_STATUSES))
    .option('--limit <n>', 'at most this many', intOption)
    .option('--before <run>', 'the runs older than this one (the next page)')
    .option('--json', 'print the raw JSON answer')
    .action((name: string, opts: { status?: string; limit?: number; before?: string; json?: boolean }) => run(async (ctx, client) => {
      const q = new URLSearchParams()
      if (opts.limit !== undefined) q.set('limit', String(opts.limit))
      if (opts.status !== undefined) q.set('status', opts.status)
      if (opts.before !== undefined) q.set('before', opts.before)
      const { data } = await wfCall(client, 'GET', `/v1/workflows/${encodeURIComponent(name)}/runs${q.size === 0 ? '' : `?${q.toString()}`}`)
      const runs = listOf(data, 'runs')
      if (opts.json === true || runs === undefined || !runs.every(isRecord)) { ctx.stdout.write(formatJson(data)); return }
      if (runs.length === 0) ctx.stderr.write('no runs\n')
      else {
        ctx.stdout.write(formatTable(['ID', 'STATUS', 'VERSION', 'STARTED', 'DURATION', 'ERROR'], runs.map((r) => [
          cell(r['id']), statusCell(r), cell(r['version']), cell(r['startedAt']), duration(r['startedAt'], r['endedAt']),
          isRecord(r['error']) ? truncate(errorText(r['error'])) : '-',
        ])))
      }
      const next = isRecord(data) && typeof data['next'] === 'string' ? data['next'] : undefined
      if (next !== undefined) {
        const flags = [opts.status === undefined ? '' : ` --status ${opts.status}`, opts.limit === undefined ? '' : ` --limit ${opts.limit}`].join('')
        ctx.stderr.write(`more: kindling wf runs ${name}${flags} --before ${next}\n`)
      }
    }))

  wf.command('show')
    .description('a run: its status, output or error, and every step it took')
    .argument('<run>', 'run id')
    .option('--json', 'print the raw JSON answer')
    .action((id: string, opts: { json?: boolean }) => run(async (ctx, client) => {
      const { data } = await wfCall(client, 'GET', `/v1/runs/${encodeURIComponent(id)}`)
      if (opts.json === true || !isRecord(data)) { ctx.stdout.write(formatJson(data)); return }
      ctx.stdout.write(showRun(data))
    }))

  wf.command('cancel')
    .description('cancel a run: it stops at its next step')
    .argument('<run>', 'run id')
    .action((id: string) => run(async (ctx, client) => {
      const { data } = await wfCall(client, 'POST', `/v1/runs/${encodeURIComponent(id)}/cancel`)
      const r = isRecord(data) ? data : {}
      const status = r['status'] === 'cancelled' ? 'cancelled' : r['cancelRequested'] === true ? 'cancelling' : cell(r['status'])
      ctx.stdout.write(`run ${id} ${status}\n`)
    }))
}

/**
 * A /v1 call whose refusal names where a definition is wrong: `error KDL_ERR_WF_…: message (state "S", field "f")`,
 * and the line of the applied file it points at.
 */
async function wfCall(client: ApiClient, method: string, path: string, body?: unknown, def?: DefinitionFile): Promise<{ status: number; data: unknown }> {
  const res = await client.send(method, path, {
    headers: { accept: 'application/json', ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const data = parseJson(res.body)
  if (res.status >= 200 && res.status <= 299) return { status: res.status, data }
  const kerr = kindlingError(data)
  if (kerr === undefined) {
    const text = res.body.toString('utf8').trim().slice(0, 200)
    throw new ApiError(res.status, undefined, `${method} ${path} answered ${statusLine(res.status)}${text === '' ? '' : `: ${text}`}`)
  }
  const d = data as Record<string, unknown>
  const state = typeof d['state'] === 'string' ? d['state'] : undefined
  const field = typeof d['field'] === 'string' ? d['field'] : undefined
  const where = [
    state === undefined ? '' : `state "${state}"`,
    field === undefined ? '' : `field "${field}"`,
    typeof d['position'] === 'number' ? `position ${d['position']}` : '',
    state === undefined ? '' : def?.where(state, field) ?? '',
  ].filter((s) => s !== '')
  throw new ApiError(res.status, kerr.code, where.length === 0 ? kerr.message : `${kerr.message} (${where.join(', ')})`)
}

/** Reads a definition file (YAML, or JSON, which YAML reads too); its `name` is taken out of the body. */
async function readDefinition(file: string): Promise<DefinitionFile> {
  const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new CliError(`error: ${file}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`)
  })
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true })
  const first = doc.errors[0]
  if (first !== undefined) {
    const { line, col } = lc.linePos(first.pos[0])
    throw new CliError(`error: ${file}:${line}:${col}: ${first.message.split('\n')[0] ?? ''}`)
  }
  const value: unknown = doc.toJS()
  if (!isRecord(value)) throw new CliError(`error: ${file}: a workflow definition is a map (name, startAt, states…)`)
  const { name, ...body } = value
  if (name !== undefined && typeof name !== 'string') throw new CliError(`error: ${file}: name must be a string`)
  return { file, body, name, where: (state, field) => locate(doc, lc, file, state, field) }
}

/** `file:line` of `states.STATE.FIELD` (a dotted path, `[n]` for an item), or of the deepest part of it the file has. */
function locate(doc: Document, lc: LineCounter, file: string, state: string, field: string | undefined): string | undefined {
  // A key's line, not its value's: a state's map value starts on the line after its name.
  const child = (node: unknown, part: string): { at: number | undefined; value: unknown } | undefined => {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === part)
      return pair === undefined ? undefined : { at: (pair.key as Node).range?.[0], value: pair.value }
    }
    const item: unknown = isSeq(node) && /^\d+$/.test(part) ? node.items[Number(part)] : undefined
    return item === undefined ? undefined : { at: (item as Node).range?.[0], value: item }
  }
  let found = child(doc.get('states', true), state)
  if (found === undefined) return undefined
  for (const part of (field ?? '').split(/[.[\]]/).filter((p) => p !== '')) {
    const next = child(found.value, part)
    if (next === undefined) break
    found = next
  }
  return found.at === undefined ? undefined : `${file}:${lc.linePos(found.at).line}`
}

/** Reads -d: inline JSON, or @file holding JSON; `{}` without it. */
async function inputOf(data: string | undefined): Promise<unknown> {
  if (data === undefined) return {}
  const fromFile = data.startsWith('@')
  const text = fromFile
    ? await readFile(data.slice(1), 'utf8').catch((err: Error) => { throw new CliError(`error: -d ${data}: ${err.message}`) })
    : data
  try {
    return JSON.parse(text) as unknown
  } catch (err) {
    throw new CliError(`error: -d ${fromFile ? data : 'value'} is not JSON: ${(err as Error).message}`, 2)
  }
}

async function start(ctx: CliContext, client: ApiClient, name: string, opts: { data?: string; async?: boolean; wait?: number; json?: boolean }): Promise<number> {
  const input = await inputOf(opts.data)
  const q = new URLSearchParams()
  if (opts.async === true) q.set('async', 'true')
  if (opts.wait !== undefined) q.set('wait', String(opts.wait))
  const path = `/wf/${encodeURIComponent(name)}${q.size === 0 ? '' : `?${q.toString()}`}`
  const res = await client.send('POST', path, {
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify(input),
  })
  const data = parseJson(res.body)
  const d = isRecord(data) ? data : {}
  const header = res.headers['x-kindling-run-id']
  const id = typeof header === 'string' ? header : typeof d['run'] === 'string' ? d['run'] : cell(d['id'])
  if (res.status === 200) {
    ctx.stdout.write(data === undefined ? res.body.toString('utf8') + '\n' : formatJson(data))
    return 0
  }
  if (res.status === 202) {
    if (opts.json === true) ctx.stdout.write(formatJson(data))
    else ctx.stdout.write(`run ${id} started\nfollow it: kindling wf show ${id}\n`)
    if (opts.async !== true) ctx.stderr.write('the run goes on: it did not end within the wait\n')
    return 0
  }
  const code = kindlingError(data)?.code
  if (code === 'KDL_ERR_WF_RUN_FAILED' || code === 'KDL_ERR_WF_RUN_CANCELLED') {
    if (opts.json === true) ctx.stdout.write(formatJson(data))
    ctx.stderr.write(code === 'KDL_ERR_WF_RUN_FAILED' ? `run ${id} failed: ${errorText(d)}\n` : `run ${id} cancelled\n`)
    return 1
  }
  const kerr = kindlingError(data)
  if (kerr !== undefined) throw new ApiError(res.status, kerr.code, kerr.message)
  const text = res.body.toString('utf8').trim().slice(0, 200)
  throw new ApiError(res.status, undefined, `POST ${path} answered ${statusLine(res.status)}${text === '' ? '' : `: ${text}`}`)
}

/** A run: a header of its fields, then its steps in the order they started. */
function showRun(r: Record<string, unknown>): string {
  const version = r['version'] === undefined ? '' : `@${cell(r['version'])}`
  const ended = r['endedAt'] === undefined ? '-' : `${cell(r['endedAt'])} (${duration(r['startedAt'], r['endedAt'])})`
  const head: Array<[string, string]> = [
    ['run', cell(r['id'])],
    ['workflow', `${cell(r['workflow'])}${version}`],
    ['status', statusCell(r)],
    ['started', cell(r['startedAt'])],
    ['ended', ended],
  ]
  if (r['wakeAt'] !== undefined && r['status'] === 'running') head.push(['waiting', `until ${isoOf(r['wakeAt'])}`])
  if (isRecord(r['error'])) head.push(['error', errorText(r['error'])])
  else if (r['output'] !== undefined) head.push(['output', truncate(JSON.stringify(r['output']), 200)])
  let out = head.map(([k, v]) => `${k.padEnd(9)}${v}`).join('\n') + '\n\n'
  const steps = Array.isArray(r['steps']) ? r['steps'].filter(isRecord) : []
  if (steps.length === 0) return out + 'no steps yet\n'
  out += formatTable(['STEP', 'TYPE', 'STATUS', 'ATTEMPTS', 'MS', 'DETAIL'], steps.map((s) => [
    stepName(s['id']), cell(s['type']), cell(s['status']), cell(s['attempts']), cell(s['ms']),
    isRecord(s['error']) ? truncate(errorText(s['error'])) : s['output'] === undefined ? '-' : truncate(JSON.stringify(s['output'])),
  ]))
  return out
}

/**
 * A step's id, indented two spaces a level: `Items[2]/Charge` sits under the `Items` map state's step. The whole id
 * is kept, since a parallel run interleaves the branches' steps and only the prefix says which one a step is of.
 */
function stepName(id: unknown): string {
  const s = cell(id)
  return '  '.repeat(s.split('/').length - 1) + s
}

function statusCell(r: Record<string, unknown>): string {
  return r['status'] === 'running' && r['cancelRequested'] === true ? 'running (cancelling)' : cell(r['status'])
}

/** `ERROR: cause` of a run's or a step's `{ error, cause }` (just `ERROR` without a cause). */
function errorText(e: Record<string, unknown>): string {
  const cause = e['cause'] === undefined || e['cause'] === null || e['cause'] === '' ? '' : `: ${cell(e['cause'])}`
  return `${cell(e['error'])}${cause}`
}

/** One line of at most `max` characters, `…` at the end when cut. */
function truncate(text: string, max = DETAIL_CHARS): string {
  const line = text.replace(/\s+/g, ' ').trim()
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`
}

function isoOf(value: unknown): string {
  return typeof value === 'number' ? new Date(value).toISOString() : cell(value)
}

/** `endedAt - startedAt` as `850 ms`, `12.3 s`, `4m05s` or `2h03m`; `-` while the run goes on. */
function duration(startedAt: unknown, endedAt: unknown): string {
  const ms = Date.parse(String(endedAt)) - Date.parse(String(startedAt))
  if (!Number.isFinite(ms) || ms < 0) return '-'
  if (ms < 1000) return `${ms} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const s = Math.floor(ms / 1000)
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`
}
