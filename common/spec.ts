import { Type, type Static } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { KdlError } from './errors.js'
import type { FunctionSpec, RuntimeSpec } from './types.js'

/** Function and runtime names are DNS labels, so they can name pods, cgroups and files alike. */
export const NAME_PATTERN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
const nameRe = new RegExp(NAME_PATTERN)

/** Environment variable names a function may set: a POSIX shell name. */
export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$'

export const FunctionBody = Type.Object({
  runtime: Type.String({ pattern: NAME_PATTERN }),
  code: Type.Optional(Type.String({ minLength: 1 })),
  archive: Type.Optional(Type.String({ minLength: 1, description: 'base64 of a .tar.gz' })),
  entrypoint: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  mode: Type.Optional(Type.Union([Type.Literal('ephemeral'), Type.Literal('recycle'), Type.Literal('persistent')])),
  prewarm: Type.Optional(Type.Integer({ minimum: 0, maximum: 64 })),
  concurrency: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  maxInstances: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  queueTimeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 600_000 })),
  timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 900_000 })),
  memoryMb: Type.Optional(Type.Integer({ minimum: 16, maximum: 65_536 })),
  cpu: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 64 })),
  env: Type.Optional(Type.Record(Type.String(), Type.String(), { propertyNames: { pattern: ENV_NAME_PATTERN }, maxProperties: 1000 })),
  network: Type.Optional(Type.Union([Type.Literal('none'), Type.Literal('egress')])),
  maxInvocations: Type.Optional(Type.Integer({ minimum: 1 })),
  maxAgeMs: Type.Optional(Type.Integer({ minimum: 1 })),
  idleTimeoutMs: Type.Optional(Type.Integer({ minimum: 1 })),
  // Async invocations (issue 11): retries after a failed attempt (5xx, 429, timeout) and the longest a job may wait.
  asyncRetries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10 })),
  asyncMaxAgeMs: Type.Optional(Type.Integer({ minimum: 60_000, maximum: 21_600_000 })),
}, { additionalProperties: false })
export type FunctionBody = Static<typeof FunctionBody>

export const RuntimeBody = Type.Object({
  poolSize: Type.Optional(Type.Integer({ minimum: 0, maximum: 256 })),
  memoryMb: Type.Optional(Type.Integer({ minimum: 16, maximum: 65_536 })),
  cpu: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 64 })),
  image: Type.Optional(Type.String({ minLength: 1 })),
}, { additionalProperties: false })
export type RuntimeBody = Static<typeof RuntimeBody>

/** Defaults a function spec takes when the deploy leaves a field out. */
export const FUNCTION_DEFAULTS = Object.freeze({
  mode: 'recycle',
  prewarm: 0,
  concurrency: 1,
  maxInstances: 10,
  queueTimeoutMs: 10_000,
  timeoutMs: 30_000,
  network: 'none',
  maxInvocations: 1000,
  maxAgeMs: 3_600_000,
  idleTimeoutMs: 300_000,
  asyncRetries: 2,
  asyncMaxAgeMs: 21_600_000,
} as const)

// verbose: a failed union's error carries its branches, so the message can list the values allowed.
const ajv = new Ajv({ allErrors: true, strict: false, verbose: true })
const checkFunction = ajv.compile<FunctionBody>(FunctionBody)
const checkRuntime = ajv.compile<RuntimeBody>(RuntimeBody)

/** One thing wrong with a spec: where (field names from the spec's root; `[]` for the spec itself) and what. */
export interface SpecProblem {
  path: string[]
  message: string
}

function problemsOf(errors: ErrorObject[] | null | undefined): SpecProblem[] {
  // A bad env key reports twice (the pattern inside propertyNames, then propertyNames): keep the second.
  const all = errors ?? []
  // A union (mode, network) that failed reports each branch and then the union: keep the union, named by its values.
  const unions = all.filter((e) => e.keyword === 'anyOf').map((e) => e.schemaPath + '/')
  return all.filter((e) => e.propertyName === undefined && !unions.some((u) => e.schemaPath.startsWith(u))).map((e) => {
    const path = e.instancePath === '' ? [] : e.instancePath.slice(1).split('/').map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'))
    const where = path.length === 0 ? 'spec' : path.join('.')
    if (e.keyword === 'additionalProperties') {
      const field = String(e.params['additionalProperty'])
      return { path: [...path, field], message: `unknown field "${field}"` }
    }
    if (e.keyword === 'propertyNames') {
      const key = String(e.params['propertyName'])
      return { path: [...path, key], message: `${where} key "${key}" is not a valid name (letters, digits and _, not starting with a digit)` }
    }
    if (e.keyword === 'anyOf' && Array.isArray(e.schema) && e.schema.every((b: { const?: unknown }) => b.const !== undefined)) {
      return { path, message: `${where} must be one of ${e.schema.map((b: { const: unknown }) => JSON.stringify(b.const)).join(', ')}` }
    }
    return { path, message: `${where} ${e.message ?? 'is invalid'}` }
  })
}

/**
 * Every schema problem of a deploy body, each with its field (`kindling apply` puts each on its line of the
 * project file). The rule that a body has exactly one of `code` / `archive` is parseFunctionBody's.
 */
export function functionBodyProblems(body: unknown): SpecProblem[] {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return [{ path: [], message: 'function spec must be a JSON object' }]
  return checkFunction(body) ? [] : problemsOf(checkFunction.errors)
}

/** Every schema problem of a runtime body, each with its field. */
export function runtimeBodyProblems(body: unknown): SpecProblem[] {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return [{ path: [], message: 'runtime spec must be a JSON object' }]
  return checkRuntime(body) ? [] : problemsOf(checkRuntime.errors)
}

const describe = (problems: SpecProblem[]): string => problems.map((p) => p.message).join('; ')

export function assertName(kind: 'function' | 'runtime' | 'workflow', name: string): void {
  if (!nameRe.test(name)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `${kind} name "${name}" must be a DNS label: lower-case letters, digits and "-", at most 63 characters`)
  }
}

/** Validates a deploy body; throws KDL_ERR_BAD_SPEC naming every bad field. */
export function parseFunctionBody(body: unknown): FunctionBody {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', 'function spec must be a JSON object')
  }
  if (!checkFunction(body)) throw new KdlError('KDL_ERR_BAD_SPEC', `invalid function spec: ${describe(problemsOf(checkFunction.errors))}`)
  if ((body.code === undefined) === (body.archive === undefined)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', 'a function needs exactly one of "code" (an ES module as a string) or "archive" (base64 .tar.gz)')
  }
  return body
}

/** The stored spec of a body: every default filled in. */
export function functionSpecOf(body: FunctionBody): FunctionSpec {
  const d = FUNCTION_DEFAULTS
  return {
    runtime: body.runtime,
    entrypoint: body.entrypoint ?? (body.code !== undefined ? 'index.mjs' : 'index.js'),
    mode: body.mode ?? d.mode,
    prewarm: body.prewarm ?? d.prewarm,
    concurrency: body.concurrency ?? d.concurrency,
    maxInstances: body.maxInstances ?? d.maxInstances,
    queueTimeoutMs: body.queueTimeoutMs ?? d.queueTimeoutMs,
    timeoutMs: body.timeoutMs ?? d.timeoutMs,
    memoryMb: body.memoryMb,
    cpu: body.cpu,
    env: body.env ?? {},
    network: body.network ?? d.network,
    maxInvocations: body.maxInvocations ?? d.maxInvocations,
    maxAgeMs: body.maxAgeMs ?? d.maxAgeMs,
    idleTimeoutMs: body.idleTimeoutMs ?? d.idleTimeoutMs,
    asyncRetries: body.asyncRetries ?? d.asyncRetries,
    asyncMaxAgeMs: body.asyncMaxAgeMs ?? d.asyncMaxAgeMs,
  }
}

/** What a runtime is configured with until its spec says otherwise (`PUT /v1/runtimes/:name`). */
export const RUNTIME_DEFAULTS = { poolSize: 2, memoryMb: 128, cpu: 1 } as const

export function parseRuntimeBody(name: string, body: unknown, current: RuntimeSpec | undefined): RuntimeSpec {
  assertName('runtime', name)
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', 'runtime spec must be a JSON object')
  }
  if (!checkRuntime(body)) throw new KdlError('KDL_ERR_BAD_SPEC', `invalid runtime spec: ${describe(problemsOf(checkRuntime.errors))}`)
  return {
    name,
    poolSize: body.poolSize ?? current?.poolSize ?? RUNTIME_DEFAULTS.poolSize,
    memoryMb: body.memoryMb ?? current?.memoryMb ?? RUNTIME_DEFAULTS.memoryMb,
    cpu: body.cpu ?? current?.cpu ?? RUNTIME_DEFAULTS.cpu,
    image: body.image ?? current?.image,
  }
}
