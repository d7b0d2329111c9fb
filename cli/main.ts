import { Command, CommanderError } from 'commander'
import { Agent } from 'undici'
import { registerAgentCommand } from './agent.js'
import { registerApplyCommands } from './apply.js'
import { registerAsyncCommands } from './async.js'
import type { Action, Runner } from './args.js'
import { registerBuildsCommands } from './builds.js'
import { registerEventsCommand } from './events.js'
import { registerFnCommands } from './fn.js'
import { registerImagesCommands } from './images.js'
import { registerKubeSimCommand } from './kube-sim.js'
import { ApiClient, CliError } from './http.js'
import type { CliContext, OutputStream } from './output.js'
import { registerPoolsCommand } from './pools.js'
import { registerRuntimesCommands } from './runtimes.js'
import { registerTriggersCommands } from './triggers.js'
import { registerUpCommand } from './up.js'
import { registerWorkflowCommands } from './workflows.js'

export const DEFAULT_URL = 'http://127.0.0.1:8080'

/** Where `runCli` writes and what it reads instead of the process globals. */
export interface CliIo {
  stdout: OutputStream
  stderr: OutputStream
  /** `KINDLING_URL`, `KINDLING_API_TOKEN`, and for `up` the whole platform configuration. */
  env?: Record<string, string | undefined>
}

function errorLine(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown }
  const message = typeof e.message === 'string' ? e.message : String(err)
  return typeof e.code === 'string' && e.code.startsWith('KDL_ERR_') ? `error ${e.code}: ${message}` : `error: ${message}`
}

/**
 * Runs one `kindling` command line (without the `node kindling` prefix) and resolves to its exit code:
 * 0 success, 1 failure (API error, unreachable platform, non-2xx invocation), 2 bad usage.
 */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const env = io.env ?? {}
  const url = (env['KINDLING_URL'] ?? '').trim() || DEFAULT_URL
  const token = (env['KINDLING_API_TOKEN'] ?? '').trim() || undefined
  const ctx: CliContext = { url: url.replace(/\/+$/, ''), token, stdout: io.stdout, stderr: io.stderr, env }
  // Invocations may legitimately run for up to a function's timeout (15 min max): no client-side timeouts.
  let agent: Agent | undefined
  let exitCode = 0

  const run: Runner = async (action: Action) => {
    let parsed: URL | undefined
    try {
      parsed = new URL(ctx.url)
    } catch { /* reported below */ }
    if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
      throw new CliError(`error: KINDLING_URL "${ctx.url}" is not an http(s) URL`)
    }
    agent ??= new Agent({ headersTimeout: 0, bodyTimeout: 0 })
    const client = new ApiClient({ url: ctx.url, token: ctx.token, dispatcher: agent })
    exitCode = (await action(ctx, client)) ?? 0
  }

  const program = new Command('kindling')
    .description('Kindling: a private FaaS platform whose edge is cold start')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .showHelpAfterError('(add --help for usage)')
    .addHelpText('after', `\nEnvironment:\n  KINDLING_URL        platform address (default ${DEFAULT_URL})\n  KINDLING_API_TOKEN  bearer token for /v1\n`)
  registerUpCommand(program, run)
  registerFnCommands(program, run)
  registerRuntimesCommands(program, run)
  registerPoolsCommand(program, run)
  registerEventsCommand(program, run)
  registerBuildsCommands(program, run)
  registerImagesCommands(program, run)
  registerApplyCommands(program, run)
  registerTriggersCommands(program, run)
  registerAsyncCommands(program, run)
  registerWorkflowCommands(program, run)
  registerKubeSimCommand(program, run)
  registerAgentCommand(program, run)

  try {
    await program.parseAsync(argv, { from: 'user' })
    return exitCode
  } catch (err) {
    // commander has already printed its message; --help / --version exit 0, everything else is usage.
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    if (err instanceof CliError) {
      io.stderr.write(err.message + '\n')
      return err.exitCode
    }
    io.stderr.write(errorLine(err) + '\n')
    return 1
  } finally {
    await agent?.close()
  }
}

/** The bin's entry: the only place that reads `process.argv` / `process.env` and exits the process. */
export async function main(argv: string[] = process.argv): Promise<void> {
  // `kindling events | head` closes the pipe early; that is not a failure.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0)
  })
  const code = await runCli(argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env })
  // `up` may leave platform handles behind after close(); flush stdout, then exit with the command's code.
  process.stdout.write('', () => process.exit(code))
}
