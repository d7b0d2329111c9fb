import type { Command } from 'commander'
import type { Runner } from './args.js'
import { ApiError, kindlingError, parseJson, statusLine, type ApiClient } from './http.js'
import { isRecord, type CliContext } from './output.js'
import { loadProject, ProjectError, type Project } from './project-file.js'

interface ApplyOptions {
  file: string
  prune?: boolean
  dryRun?: boolean
}

export function registerApplyCommands(program: Command, run: Runner): void {
  program.command('apply')
    .description('make the platform match a project file: its functions and runtimes (POST /v1/apply)')
    .requiredOption('-f, --file <path>', 'project file (YAML, apiVersion: kindling/v1)')
    .option('--prune', 'delete the functions the file does not name')
    .option('--dry-run', 'show what would change; change nothing')
    .action((opts: ApplyOptions) => run(async (ctx, client) => {
      const changes = await send(ctx, client, opts.file, { prune: opts.prune === true, dryRun: opts.dryRun === true })
      printChanges(ctx, changes)
      if (opts.dryRun === true && changes.some((c) => c.action !== 'unchanged')) ctx.stdout.write('(dry run: nothing was applied)\n')
      return 0
    }))

  program.command('diff')
    .description('show what `kindling apply -f` would change; exits 1 when something would, 0 when nothing')
    .requiredOption('-f, --file <path>', 'project file (YAML, apiVersion: kindling/v1)')
    .option('--prune', 'count the functions the file does not name as deletions')
    .action((opts: ApplyOptions) => run(async (ctx, client) => {
      const changes = await send(ctx, client, opts.file, { prune: opts.prune === true, dryRun: true })
      printChanges(ctx, changes)
      return changes.some((c) => c.action !== 'unchanged') ? 1 : 0
    }))
}

interface Change {
  kind: string
  name: string
  action: string
  fields?: string[]
  version?: number
}

async function send(ctx: CliContext, client: ApiClient, file: string, flags: { prune: boolean; dryRun: boolean }): Promise<Change[]> {
  const project = await loadProject(file, { note: (line) => { ctx.stderr.write(`${line}\n`) } })
  const res = await client.send('POST', '/v1/apply', {
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ functions: project.functions, runtimes: project.runtimes, ...flags }),
  })
  const data = parseJson(res.body)
  if (res.status < 200 || res.status > 299) throw errorOf(project, res.status, data, res.body)
  const changes = isRecord(data) && Array.isArray(data['changes']) ? data['changes'].filter(isRecord) : undefined
  if (changes === undefined) throw new ApiError(res.status, undefined, `POST /v1/apply answered ${statusLine(res.status)} without a plan`)
  return changes.map((c) => ({
    kind: String(c['kind']),
    name: String(c['name']),
    action: String(c['action']),
    ...(Array.isArray(c['fields']) ? { fields: c['fields'].map(String) } : {}),
    ...(typeof c['version'] === 'number' ? { version: c['version'] } : {}),
  }))
}

/** The platform's refusal; each problem it lists (`details.errors`) on its own line, at its place in the file. */
function errorOf(project: Project, status: number, data: unknown, raw: Buffer): ApiError | ProjectError {
  const kerr = kindlingError(data)
  if (kerr === undefined) {
    const text = raw.toString('utf8').trim().slice(0, 200)
    return new ApiError(status, undefined, `POST /v1/apply answered ${statusLine(status)}${text === '' ? '' : `: ${text}`}`)
  }
  const errors = isRecord(data) && Array.isArray(data['errors']) ? data['errors'].filter(isRecord) : []
  if (errors.length === 0) return new ApiError(status, kerr.code, kerr.message)
  const head = kerr.message.split(': ')[0] ?? kerr.message
  const lines = errors.map((e) => {
    const kind = String(e['kind'])
    const name = typeof e['name'] === 'string' ? e['name'] : undefined
    const field = Array.isArray(e['field']) ? e['field'].map(String) : undefined
    const code = typeof e['code'] === 'string' && e['code'] !== kerr.code ? ` (${e['code']})` : ''
    return `${project.where(kind, name, field)}: ${name === undefined ? '' : `${kind} "${name}": `}${String(e['message'])}${code}`
  })
  return new ApiError(status, kerr.code, `${head}\n${lines.join('\n')}`)
}

const SIGN: Record<string, string> = { create: '+', update: '~', delete: '-' }

function printChanges(ctx: CliContext, changes: Change[]): void {
  const shown = changes.filter((c) => c.action !== 'unchanged')
  if (shown.length === 0) {
    ctx.stdout.write('no changes\n')
    return
  }
  for (const c of shown) {
    const fields = c.fields === undefined || c.fields.length === 0 ? '' : `: ${c.fields.join(', ')}`
    const version = c.version === undefined ? '' : ` (v${c.version})`
    ctx.stdout.write(`${SIGN[c.action] ?? '?'} ${c.kind} ${c.name}${fields}${version}\n`)
  }
}
