import { InvalidArgumentError } from 'commander'
import type { ApiClient } from './http.js'
import type { CliContext } from './output.js'

/** A command body: gets the context and the API client, resolves to the exit code (default 0). */
export type Action = (ctx: CliContext, client: ApiClient) => Promise<number | void>
/** Provided by `runCli`: runs an action with the context of this invocation and records its exit code. */
export type Runner = (action: Action) => Promise<void>

/** commander argParser for a non-negative integer option. */
export function intOption(value: string): number {
  if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError('must be a non-negative integer')
  return Number(value.trim())
}

/** commander argParser for a positive number (CPU cores may be fractional). */
export function numberOption(value: string): number {
  const n = Number(value.trim())
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number')
  return n
}

/** Repeatable `--env K=V`. */
export function envOption(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=')
  if (eq <= 0) throw new InvalidArgumentError('must look like KEY=VALUE')
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) }
}

/** Repeatable `-H 'name: value'`. */
export function headerOption(value: string, previous: Array<[string, string]> | undefined): Array<[string, string]> {
  const colon = value.indexOf(':')
  const name = colon < 0 ? '' : value.slice(0, colon).trim()
  if (name === '' || /\s/.test(name)) throw new InvalidArgumentError("must look like 'name: value'")
  return [...(previous ?? []), [name, value.slice(colon + 1).trim()]]
}
