import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifyInstance, FastifySchema } from 'fastify'
import { ERROR_CODES, type ErrorCode } from '../common/errors.js'
import { FunctionBody, NAME_PATTERN, RuntimeBody } from '../common/spec.js'

/**
 * The description of the HTTP API (issue 14): OpenAPI 3.1 built by @fastify/swagger from the schemas of
 * the `/v1` routes, served with Swagger UI at `/docs` (its JSON at `/docs/json`). The route schemas are
 * descriptive: the API's scope validates with `common/spec.ts` (KDL_ERR_BAD_SPEC naming each field), not
 * with fastify's compilers. Invocations (`/fn/...`) and `/metrics` are answered outside fastify's routing
 * and are described here by hand.
 */

export const DOCS_PREFIX = '/docs'

/** Tags of the `/v1` operations, in the order the UI shows them. */
export const TAGS = [
  { name: 'functions', description: 'Deploy, list and delete functions.' },
  { name: 'versions', description: 'Versions, aliases, rollback and canary releases (issue 15).' },
  { name: 'builds', description: "Dependency builds: a function's package.json installed before its first load." },
  { name: 'runtimes', description: 'Runtime kinds and their generic pools.' },
  { name: 'platform', description: 'Pools, the start gate and platform events.' },
  { name: 'triggers', description: 'Cron triggers: a function called on a schedule, once per tick across the replicas (issue 11; KINDLING_STORE=redis).' },
  { name: 'invocation', description: 'Calling a function: outside `/v1`, no bearer token.' },
  { name: 'workflows', description: 'Workflows (issue 12): definitions chaining functions, and their durable runs (`POST /wf/{name}` starts one).' },
  { name: 'async', description: 'Async invocations (issue 11): jobs, retries and the dead-letter queue (KINDLING_STORE=redis).' },
] as const
export type Tag = (typeof TAGS)[number]['name']

/** A reference to one of the shared schemas below (`Error`, `Function`, `Runtime`, `Build`, `Event`). */
export function ref(id: SharedSchemaId, description?: string): TSchema {
  return Type.Unsafe({ $ref: `${id}#`, ...(description === undefined ? {} : { description }) })
}

/** The body of every error answer (common/errors.ts `errorBody`); some codes add fields (e.g. `build`, `logTail`). */
export const ErrorSchema = Type.Object({
  statusCode: Type.Integer({ description: 'The HTTP status, repeated.' }),
  code: Type.String({ pattern: '^KDL_ERR_[A-Z_]+$', description: 'Stable: a shipped code is never renamed or reused.' }),
  error: Type.String({ description: 'The status text.' }),
  message: Type.String({ description: 'What went wrong, for a person.' }),
}, { $id: 'Error', description: 'An error answer: `{statusCode, code, error, message}` and, for some codes, more fields.' })

const Iso = (description: string): TSchema => Type.String({ format: 'date-time', description })

/** What an alias routes to. */
export const AliasTargetSchema = Type.Union([
  Type.Object({ version: Type.Integer({ minimum: 1 }) }, { additionalProperties: false }),
  Type.Object({ weights: Type.Record(Type.String({ pattern: '^[1-9][0-9]*$' }), Type.Integer({ minimum: 0, maximum: 1_000_000 })) }, { additionalProperties: false }),
], { description: 'One version, or versions by integer weight: `{"weights": {"3": 90, "4": 10}}` sends a call to 4 with probability 10/100.' })

/** A function as the API shows it: its stored spec (defaults filled in), its version, and its instances. */
export const FunctionSchema = Type.Composite([
  Type.Required(Type.Omit(FunctionBody, ['code', 'archive', 'memoryMb', 'cpu'])),
  Type.Pick(FunctionBody, ['memoryMb', 'cpu']),
  Type.Object({
    name: Type.String({ pattern: NAME_PATTERN }),
    version: Type.Integer({ minimum: 1, description: 'The version `latest` serves (the heaviest one while it is split by weight). Every deploy makes a new one.' }),
    codeHash: Type.String({ description: 'sha256 of the deployed code.' }),
    build: Type.Optional(Type.Object({ id: Type.String(), inputsHash: Type.String() }, { description: 'The build that installed its dependencies.' })),
    createdAt: Iso('First deploy.'),
    updatedAt: Iso('Latest deploy.'),
    deployedBy: Type.Optional(Type.String({ description: 'Who deployed the version: the `x-kindling-actor` header, else the caller\'s address.' })),
    aliases: Type.Optional(Type.Record(Type.String(), AliasTargetSchema, { description: 'The function\'s aliases; `latest` is what the bare name serves.' })),
    lastVersion: Type.Optional(Type.Integer({ minimum: 1, description: 'The highest version number given so far (a rollback does not reuse numbers).' })),
    canary: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'The running or last canary (`GET /v1/functions/{name}/canary`).' })),
    status: Type.Object({
      instances: Type.Record(Type.String(), Type.Integer(), { description: 'Instances of the function by state.' }),
      loadGuard: Type.Optional(Type.Object({}, { additionalProperties: true, description: "The load guard's view of the function (absent when the guard is off)." })),
    }),
  }),
], { $id: 'Function' })

/** A runtime's stored spec (`PUT /v1/runtimes/:name` takes the same fields, each optional). */
export const RuntimeSchema = Type.Composite([
  Type.Object({ name: Type.String({ pattern: NAME_PATTERN }) }),
  Type.Required(Type.Omit(RuntimeBody, ['image'])),
  Type.Pick(RuntimeBody, ['image']),
], { $id: 'Runtime' })

/** A dependency build (builder/builder.ts `BuildRecord`) and the links to it and its log. */
export const BuildSchema = Type.Object({
  id: Type.String(),
  inputsHash: Type.String({ description: 'sha256 of the inputs: package.json, lockfile, runtime and npm versions, registry.' }),
  runtime: Type.String(),
  state: Type.Union([Type.Literal('queued'), Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed')]),
  command: Type.String({ description: '`npm ci --omit=dev` (lockfile provided) or `npm install --omit=dev`.' }),
  lockfile: Type.Union([Type.Literal('provided'), Type.Literal('generated')]),
  functions: Type.Array(Type.String(), { description: 'Functions whose deploys asked for it, in order.' }),
  createdAt: Iso('When it was asked for.'),
  startedAt: Type.Optional(Iso('When its install started.')),
  finishedAt: Type.Optional(Iso('When it ended.')),
  durationMs: Type.Optional(Type.Number()),
  error: Type.Optional(Type.Object({
    code: Type.Literal('KDL_ERR_BUILD_FAILED'),
    reason: Type.String({ description: '`exit`, `memory`, `timeout`, `interrupted`, `output` or `sandbox`.' }),
    message: Type.String(),
  })),
  links: Type.Object({ self: Type.String(), log: Type.String() }),
}, { $id: 'Build' })

/** One platform event (`GET /v1/events`). */
export const EventSchema = Type.Object({
  id: Type.Integer({ description: 'Increasing; `?since=` takes the last one seen.' }),
  at: Iso('When it happened.'),
  type: Type.String({ description: 'e.g. `deploy.failed`, `instance.crashed`, `loadguard.throttle`.' }),
  function: Type.Optional(Type.String()),
  instance: Type.Optional(Type.String()),
  message: Type.String(),
  data: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'The numbers behind the event.' })),
  replica: Type.Optional(Type.String({ description: 'The replica it happened on (`KINDLING_STORE=redis`).' })),
}, { $id: 'Event' })

const SHARED = [ErrorSchema, FunctionSchema, RuntimeSchema, BuildSchema, EventSchema] as const
export type SharedSchemaId = 'Error' | 'Function' | 'Runtime' | 'Build' | 'Event'

/** An error answer's schema for one status: the shared Error with `code` narrowed to the codes listed. */
interface ErrorResponseSchema {
  description: string
  allOf: unknown[]
  /** The codes of the answer, for tooling and for merging (an extension keyword; validators ignore it). */
  'x-kindling-errors': ErrorCode[]
  headers?: Record<string, { type: string; description: string }>
}

const RETRY_AFTER = { type: 'string', description: 'Seconds after which a retry may find a free instance.' }

/**
 * The error answers of a route, for its schema's `response`: one entry per status, each naming its
 * KDL_ERR_* codes (an `enum` on `code`, and `x-kindling-errors`) with their descriptions from the table.
 *
 * @example `response: { 200: ref('Function'), ...errors('KDL_ERR_FN_NOT_FOUND') }`
 */
export function errors(...codes: ErrorCode[]): Record<number, ErrorResponseSchema> {
  const byStatus = new Map<number, ErrorCode[]>()
  for (const code of new Set(codes)) {
    const status = ERROR_CODES[code].status
    byStatus.set(status, [...(byStatus.get(status) ?? []), code])
  }
  const out: Record<number, ErrorResponseSchema> = {}
  for (const [status, list] of [...byStatus].sort((a, b) => a[0] - b[0])) {
    out[status] = {
      description: list.map((c) => `\`${c}\`: ${ERROR_CODES[c].description}`).join('\n\n'),
      allOf: [{ $ref: 'Error#' }, { type: 'object', properties: { statusCode: { const: status }, code: { type: 'string', enum: list } } }],
      'x-kindling-errors': list,
      ...(list.includes('KDL_ERR_SATURATED') ? { headers: { 'retry-after': RETRY_AFTER } } : {}),
    }
  }
  return out
}

/** Codes every `/v1` route can answer, added to each operation when the document is built. */
function commonCodes(auth: boolean): ErrorCode[] {
  return auth ? ['KDL_ERR_UNAUTHORIZED', 'KDL_ERR_INTERNAL'] : ['KDL_ERR_INTERNAL']
}

/** A route's schema as the document shows it: the common error answers merged in, bearer auth when it is on. */
function describeRoute(schema: FastifySchema, auth: boolean): FastifySchema {
  const response = { ...(schema.response as Record<string, unknown> | undefined) }
  const codes = new Set<ErrorCode>()
  for (const [status, r] of Object.entries(response)) {
    const listed = (r as Partial<ErrorResponseSchema>)['x-kindling-errors']
    if (listed === undefined) continue
    for (const c of listed) codes.add(c)
    delete response[status]
  }
  for (const c of commonCodes(auth)) codes.add(c)
  Object.assign(response, errors(...codes))
  const described: FastifySchema & { 'x-kindling-errors': ErrorCode[] } = { ...schema, response, 'x-kindling-errors': [...codes].sort() }
  if (auth) described.security = [{ bearerAuth: [] }]
  return described
}

/** The error answers of a hand-described operation, as OpenAPI response objects. */
function errorResponses(codes: ErrorCode[], headers: Record<number, Record<string, { description: string; schema: unknown }>> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [status, s] of Object.entries(errors(...codes))) {
    const h = {
      ...(s.headers === undefined ? {} : { 'retry-after': { description: RETRY_AFTER.description, schema: { type: 'string' } } }),
      ...headers[Number(status)],
    }
    out[status] = {
      description: s.description,
      ...(Object.keys(h).length === 0 ? {} : { headers: h }),
      content: { 'application/json': { schema: { allOf: [{ $ref: '#/components/schemas/Error' }, s.allOf[1]], 'x-kindling-errors': s['x-kindling-errors'] } } },
    }
  }
  return out
}

const START_KINDS = ['warm', 'prewarmed', 'specialized', 'cold'] as const
/** Codes an invocation can answer (router/app.ts, the instance table, the executor, the pools, the runtime). */
export const INVOCATION_ERRORS: readonly ErrorCode[] = [
  'KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_RUNTIME_NOT_FOUND', 'KDL_ERR_PAYLOAD_TOO_LARGE', 'KDL_ERR_LOAD_FAILED', 'KDL_ERR_LOAD_TIMEOUT',
  'KDL_ERR_SATURATED', 'KDL_ERR_FN_ERROR', 'KDL_ERR_INTERNAL', 'KDL_ERR_BACKEND', 'KDL_ERR_FN_CRASHED', 'KDL_ERR_FN_OOM',
  'KDL_ERR_NO_CAPACITY', 'KDL_ERR_SHUTTING_DOWN', 'KDL_ERR_SANDBOX_UNAVAILABLE', 'KDL_ERR_FN_TIMEOUT',
]

/** `/fn/{name}` and `/fn/{name}/{path}`: served by the router straight from node's request event, so described by hand. */
function invocationPaths(): Record<string, unknown> {
  const kindlingError = (value: 'handled' | 'unhandled', why: string): { description: string; schema: unknown } => ({ description: why, schema: { type: 'string', enum: [value] } })
  const unhandled = kindlingError('unhandled', 'The platform detected the failure (crash, out of memory, timeout, a function that no longer loads).')
  const responses = {
    '200': {
      description: "The handler's answer, status, headers and body as the handler made them (any status; a string is text/plain, other JSON values application/json, `{status, headers, body}` shapes the answer). See runtimes/PROTOCOL.md.",
      headers: {
        'x-kindling-start': { description: 'How the call was served: `warm` (a free slot of a serving instance), `prewarmed` (the code-loaded pool), `specialized` (a generic instance loaded the code), `cold` (started, then loaded).', schema: { type: 'string', enum: START_KINDS } },
        'x-kindling-invocation-id': { description: 'The id of this call, as the handler saw it (`context.invocationId`).', schema: { type: 'string' } },
      },
      content: { '*/*': { schema: {} } },
    },
    ...errorResponses([...INVOCATION_ERRORS], {
      500: { 'x-kindling-error': kindlingError('handled', '`handled` on KDL_ERR_FN_ERROR: the handler threw or rejected (the body may carry `stack`).') },
      502: { 'x-kindling-error': unhandled },
      504: { 'x-kindling-error': unhandled },
      422: { 'x-kindling-error': unhandled },
    }),
  }
  const name = { name: 'name', in: 'path', required: true, description: 'The function.', schema: { type: 'string', pattern: NAME_PATTERN } }
  const rest = { name: 'path', in: 'path', required: true, description: 'The rest of the path, `/` included: the handler\'s `event.path` (with the query string in `event.query`).', schema: { type: 'string' } }
  const methods = ['get', 'put', 'post', 'delete', 'patch', 'options', 'head'] as const
  const operations = (withPath: boolean): Record<string, unknown> => Object.fromEntries(methods.map((m) => [m, {
    tags: ['invocation'],
    summary: withPath ? `Invoke a function on a sub-path (${m.toUpperCase()})` : `Invoke a function (${m.toUpperCase()})`,
    description: 'Any method; the body is streamed to the instance (at most KINDLING_MAX_BODY_BYTES, else 413) and the answer streamed back. ' +
      'Headers are passed to the handler except hop-by-hop ones and any `x-kindling-*` the client sends. No bearer token: invocations are not behind KINDLING_API_TOKEN. ' +
      'A call with a body refused by a recycle instance whose function no longer loads passes on that refusal (`503 KDL_ERR_LOAD_FAILED`).',
    operationId: `${withPath ? 'invokePath' : 'invoke'}${m[0]!.toUpperCase()}${m.slice(1)}`,
    parameters: withPath ? [name, rest] : [name],
    ...(m === 'get' || m === 'head' || m === 'options' || m === 'delete' ? {} : { requestBody: { required: false, content: { '*/*': { schema: {} } } } }),
    security: [],
    responses,
    'x-kindling-errors': [...INVOCATION_ERRORS].sort(),
  }]))
  return {
    '/fn/{name}': operations(false),
    '/fn/{name}/{path}': operations(true),
    '/metrics': {
      get: {
        tags: ['platform'], summary: 'Prometheus metrics (`kindling_*`)', operationId: 'metrics', security: [],
        responses: { '200': { description: 'The Prometheus text format.', content: { 'text/plain': { schema: { type: 'string' } } } } },
      },
    },
    '/healthz': {
      get: {
        tags: ['platform'], summary: 'Liveness: the process answers', operationId: 'healthz', security: [],
        responses: { '200': { description: 'Alive.', content: { 'application/json': { schema: { type: 'object', properties: { status: { type: 'string', const: 'ok' } } } } } } },
      },
    },
    '/readyz': {
      get: {
        tags: ['platform'], summary: 'Readiness: calls can be routed (a cluster router has reached its controller; a standby controller is not ready)', operationId: 'readyz', security: [],
        responses: {
          '200': { description: 'Ready (a cluster router stays ready while its controller is away: its warm calls need none).', content: { 'application/json': { schema: { type: 'object', properties: { status: { type: 'string', const: 'ready' }, controller: { type: 'string', enum: ['connected', 'away'], description: 'A cluster router: whether its controller answers now.' } } } } } },
          '503': { description: 'Not ready, and why.', content: { 'application/json': { schema: { type: 'object', properties: { status: { type: 'string' }, reason: { type: 'string' } } } } } },
        },
      },
    },
  }
}

export interface OpenApiOptions {
  /** KINDLING_API_TOKEN is set: the `/v1` operations need the bearer token (and may answer 401). */
  auth: boolean
}

/**
 * Registers @fastify/swagger and Swagger UI on the root app. Call it before the API plugin: the
 * description collects the routes registered after it. `/docs` is outside the API's scope, so the
 * token hook does not cover it: the description is public.
 */
export async function registerOpenApi(app: FastifyInstance, opts: OpenApiOptions): Promise<void> {
  for (const s of SHARED) app.addSchema(s)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Kindling',
        version: 'v1',
        description: 'The management API of a Kindling platform (`/v1`) and its invocation route (`/fn/{name}`). ' +
          'Every error is JSON `{statusCode, code, error, message}` with a stable `KDL_ERR_*` code; a route that does not exist answers `404 KDL_ERR_NOT_FOUND`. ' +
          `Request bodies are validated by the platform itself: a bad spec answers \`400 KDL_ERR_BAD_SPEC\` naming each bad field.${opts.auth ? ' This platform has KINDLING_API_TOKEN set: `/v1` needs `Authorization: Bearer <token>`.' : ''}`,
      },
      tags: TAGS.map((t) => ({ ...t })),
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', description: 'KINDLING_API_TOKEN: when the platform has it set, every `/v1` call needs `Authorization: Bearer <token>`.' },
        },
      },
      paths: invocationPaths() as never,
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => typeof json['$id'] === 'string' ? json['$id'] : `def-${i}` },
    transform: ({ schema, url }) => ({
      // `/wf/:name` is a workflow's URL, public like `/fn/:name` (no token), with the same described error answers.
      schema: schema === undefined || schema.hide === true ? schema
        : url.startsWith('/v1/') ? describeRoute(schema, opts.auth)
        : url.startsWith('/wf/') ? { ...describeRoute(schema, false), security: [] }
        : schema,
      url,
    }),
  })
  await app.register(swaggerUi, { routePrefix: DOCS_PREFIX, uiConfig: { deepLinking: true, persistAuthorization: false } })
}

/** One route fastify registered (HEAD routes left out: fastify adds one beside each GET). */
export interface RouteEntry {
  method: string
  url: string
}

/**
 * Records every route registered on `app` from now on, whatever describes it: what the description's
 * test compares the document with.
 */
export function collectRoutes(app: FastifyInstance): RouteEntry[] {
  const routes: RouteEntry[] = []
  app.addHook('onRoute', (r) => {
    for (const method of [r.method].flat()) if (method !== 'HEAD') routes.push({ method, url: r.url })
  })
  return routes
}
