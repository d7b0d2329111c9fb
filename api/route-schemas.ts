import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifySchema } from 'fastify'
import { FunctionBody, FUNCTION_DEFAULTS, NAME_PATTERN, RUNTIME_DEFAULTS, RuntimeBody } from '../common/spec.js'
import { ALIAS_PATTERN } from '../common/aliases.js'
import { CANARY_DEFAULTS } from '../releases/canary.js'
import { NEXT_RUNS, TRIGGER_MAX_BODY_BYTES, TriggerBody } from '../triggers/spec.js'
import { AliasTargetSchema, errors, FunctionSchema, ref } from './openapi.js'

/**
 * The schemas of the `/v1` routes of api/plugin.ts and api/builds.ts, for the API description (issue 14).
 * Request bodies are the very TypeBox schemas common/spec.ts validates with; the API's scope does not
 * validate or serialise with them (see api/plugin.ts).
 */

const nameParam = (what: string): TSchema => Type.Object({ name: Type.String({ pattern: NAME_PATTERN, description: `The ${what}: a DNS label.` }) })
const buildParam = Type.Object({ id: Type.String({ description: 'A build id (`b-…`).' }) })
const list = (key: string, item: TSchema, description: string): TSchema => Type.Object({ [key]: Type.Array(item) }, { description })
const defaults = (d: Readonly<Record<string, unknown>>): string => Object.entries(d).map(([k, v]) => `\`${k}: ${JSON.stringify(v)}\``).join(', ')

const Building = Type.Object({
  function: Type.String(),
  state: Type.Literal('building'),
  build: ref('Build'),
}, { description: 'Its dependencies are being built; the deploy lands when the build succeeds (`GET /v1/builds/{id}`, `GET /v1/events`).' })

const DeployLine = Type.String({
  description: 'With `?wait=true` and `Accept: application/x-ndjson`: one JSON object a line — `{"event":"build","build"}`, ' +
    '`{"event":"log","line"}` for each line of the build log, then `{"event":"result","statusCode","body"}` or `{"event":"error","statusCode","error"}`.',
})

const DEPLOY_ERRORS = [
  'KDL_ERR_BAD_REQUEST', 'KDL_ERR_BAD_SPEC', 'KDL_ERR_BAD_ARCHIVE', 'KDL_ERR_PAYLOAD_TOO_LARGE', 'KDL_ERR_DEPLOY_SUPERSEDED', 'KDL_ERR_LOAD_FAILED',
  'KDL_ERR_LOAD_TIMEOUT', 'KDL_ERR_BUILD_FAILED', 'KDL_ERR_BACKEND', 'KDL_ERR_NO_CAPACITY', 'KDL_ERR_SHUTTING_DOWN', 'KDL_ERR_SANDBOX_UNAVAILABLE',
] as const

export const listFunctions: FastifySchema = {
  tags: ['functions'], summary: 'List the deployed functions, by name, a page at a time', operationId: 'listFunctions',
  description: 'At most `limit` functions (default 100, at most 1000), by name; `next`, when present, is the `cursor` of the next page.',
  querystring: Type.Object({
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
    cursor: Type.Optional(Type.String({ description: 'The `next` of the previous page.' })),
  }),
  response: {
    200: Type.Object({ functions: Type.Array(ref('Function')), next: Type.Optional(Type.String({ description: 'Cursor of the next page; absent on the last.' })) }, { description: 'A page of functions.' }),
    ...errors('KDL_ERR_BAD_REQUEST'),
  },
}

export const getFunction: FastifySchema = {
  tags: ['functions'], summary: 'Get a function', operationId: 'getFunction',
  description: 'Its spec, version and code hash, and `status`: its instances by state and the load guard\'s view of it.',
  params: nameParam('function'),
  response: { 200: ref('Function', 'The function.'), ...errors('KDL_ERR_FN_NOT_FOUND') },
}

export const deployFunction: FastifySchema = {
  tags: ['functions'], summary: 'Deploy a function (create or update)', operationId: 'deployFunction',
  description: 'Exactly one of `code` (an ES module as a string, stored as `index.mjs`) or `archive` (base64 of a `.tar.gz`, with an `entrypoint` such as ' +
    '`index.js` or `lib/main.js:handler`). The code is trial-loaded first: code that does not load is refused (422) and nothing is stored. ' +
    'Code with a package.json declaring dependencies is built first: the answer is `202` unless `?wait=true`. ' +
    `Defaults: ${defaults(FUNCTION_DEFAULTS)}; \`entrypoint\`: \`index.mjs\` for \`code\`, \`index.js\` for \`archive\`.`,
  params: nameParam('function'),
  querystring: Type.Object({
    wait: Type.Optional(Type.String({ enum: ['true', '1'], description: 'Wait for a build and answer as a deploy without one does (201/200 or the error).' })),
    promote: Type.Optional(Type.String({ enum: ['true', 'false'], default: 'true', description: '`false`: store the new version without moving `latest` to it (for a canary or an alias). A first deploy always promotes.' })),
  }),
  headers: Type.Object({ 'x-kindling-actor': Type.Optional(Type.String({ maxLength: 200, description: 'Who deploys (kept as the version\'s `deployedBy`); the CLI sends user@host.' })) }),
  body: FunctionBody,
  response: {
    200: ref('Function', 'Updated: a new version.'),
    201: ref('Function', 'Created: version 1.'),
    202: { description: 'Accepted: a build runs first.', content: { 'application/json': { schema: Building }, 'application/x-ndjson': { schema: DeployLine } } },
    ...errors(...DEPLOY_ERRORS),
  },
}

export const deleteFunction: FastifySchema = {
  tags: ['functions'], summary: 'Delete a function', operationId: 'deleteFunction',
  description: 'Stops routing to it at once; calls in flight finish, then its instances go.',
  params: nameParam('function'),
  response: { 200: Type.Object({ deleted: Type.String() }, { description: 'Deleted.' }), ...errors('KDL_ERR_FN_NOT_FOUND') },
}

export const listBuilds: FastifySchema = {
  tags: ['builds'], summary: 'List dependency builds, newest first', operationId: 'listBuilds',
  querystring: Type.Object({
    function: Type.Optional(Type.String({ description: 'Only the builds this function asked for.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 })),
  }),
  response: { 200: list('builds', ref('Build'), 'The builds on record.') },
}

export const getBuild: FastifySchema = {
  tags: ['builds'], summary: 'Get a build', operationId: 'getBuild',
  params: buildParam,
  response: { 200: ref('Build', 'The build.'), ...errors('KDL_ERR_BUILD_NOT_FOUND') },
}

export const getBuildLog: FastifySchema = {
  tags: ['builds'], summary: "A build's log", operationId: 'getBuildLog',
  description: 'The whole log; while the build runs it is streamed as it is written, until the build ends (unless `?follow=false`).',
  params: buildParam,
  querystring: Type.Object({ follow: Type.Optional(Type.String({ enum: ['true', 'false'], default: 'true', description: '`false`: what is written so far, then the end.' })) }),
  response: {
    200: {
      description: 'The log, text.',
      headers: { 'x-kindling-build-state': { type: 'string', enum: ['queued', 'running', 'succeeded', 'failed'], description: 'The build\'s state when the answer started.' } },
      content: { 'text/plain': { schema: Type.String() } },
    },
    ...errors('KDL_ERR_BUILD_NOT_FOUND'),
  },
}

export const listRuntimes: FastifySchema = {
  tags: ['runtimes'], summary: 'List the runtimes', operationId: 'listRuntimes',
  response: { 200: list('runtimes', ref('Runtime'), 'Every configured runtime.') },
}

export const putRuntime: FastifySchema = {
  tags: ['runtimes'], summary: 'Configure a runtime', operationId: 'putRuntime',
  description: `Only kinds the backend can run (\`node\`). A field left out keeps its current value; first defaults: ${defaults(RUNTIME_DEFAULTS)}. The generic pool follows \`poolSize\` at once.`,
  params: nameParam('runtime'),
  body: RuntimeBody,
  response: { 200: ref('Runtime', 'Updated.'), 201: ref('Runtime', 'Created.'), ...errors('KDL_ERR_BAD_REQUEST', 'KDL_ERR_BAD_SPEC') },
}

const count = (description: string): TSchema => Type.Integer({ minimum: 0, description })

export const getCluster: FastifySchema = {
  tags: ['platform'], summary: 'The store and the replicas sharing it', operationId: 'getCluster',
  description: 'On `KINDLING_STORE=redis`: every replica that sent a heartbeat in the last 10 s (each keeps its own instances and pools; a function\'s `maxInstances` is split among them, `prewarm` is per replica). On the file store: this process alone.',
  response: {
    200: Type.Object({
      store: Type.Union([Type.Literal('file'), Type.Literal('redis')]),
      replica: Type.String({ description: 'This replica\'s id (random per start).' }),
      replicas: Type.Array(Type.String(), { description: 'The live replicas\' ids, sorted.' }),
    }, { description: 'The store and the live replicas.' }),
  },
}

export const getPools: FastifySchema = {
  tags: ['platform'], summary: 'Pools, the start gate and the router\'s view', operationId: 'getPools',
  response: {
    200: Type.Object({
      pools: Type.Array(Type.Object({
        pool: Type.String({ description: '`generic:<runtime>` or `fn:<function>@<version>`.' }),
        kind: Type.Union([Type.Literal('generic'), Type.Literal('prewarm')]),
        runtime: Type.String(),
        function: Type.Optional(Type.String()),
        version: Type.Optional(Type.Integer()),
        target: count('Instances the pool keeps.'),
        idle: count('Started (and, for prewarm, code-loaded) instances waiting.'),
        starting: count('Instances being started for it.'),
        unmet: Type.Optional(Type.Union([Type.Literal('budget'), Type.Literal('host-memory')], { description: 'The pool is below its target and not filling: the memory budget is used up, or the host is down to its memory floor. It fills when memory comes free (or at a back-off up to 30 s).' })),
        unmetSince: Type.Optional(Type.String({ format: 'date-time' })),
        unmetRetries: Type.Optional(count('Refills tried, backing off, since.')),
      })),
      starts: Type.Object({ running: count('Starts running.'), waiting: count('Starts waiting their turn.'), limit: count('KINDLING_MAX_STARTING in force.') }),
      memory: Type.Object({
        budgetMb: Type.Union([Type.Number(), Type.Null()], { description: 'KINDLING_MEMORY_BUDGET_MB in force (null: none).' }),
        chargedMb: Type.Number({ description: 'What the instances are charged: idle pooled ones their limit × idleMemoryRatio, the others their limit.' }),
        idleMemoryRatio: Type.Number(),
        hostAvailableMb: Type.Optional(Type.Number({ description: "The host's MemAvailable now." })),
        hostFloorMb: Type.Optional(Type.Number({ description: 'KINDLING_MEMORY_FLOOR_MB in force: no start takes the host below it.' })),
      }),
      functions: Type.Array(Type.Object({
        function: Type.String(), version: Type.Integer(), instances: count('Instances serving it.'), busy: count('Instances with a call in flight.'),
        waiting: count('Calls waiting for a slot.'), pending: count('Instances being acquired for it.'),
      }), { description: "The router's per-function view." }),
    }, { description: 'The pools.' }),
  },
}

export const listEvents: FastifySchema = {
  tags: ['platform'], summary: 'Recent platform events', operationId: 'listEvents',
  description: 'Deploys, crashes, OOM kills, recycles, load-guard actions: the newest last, from a bounded in-memory ring (on `KINDLING_STORE=redis`: from the stream every replica appends to, ids increasing across replicas).',
  querystring: Type.Object({
    since: Type.Optional(Type.Integer({ description: 'Only events with a higher id.' })),
    function: Type.Optional(Type.String({ description: 'Only this function\'s events.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 200 })),
  }),
  response: { 200: list('events', ref('Event'), 'The events.') },
}

const LogEntrySchema = Type.Object({
  seq: Type.Integer({ description: 'Increasing over the platform\'s life: `after=<seq>` reads on from this entry.' }),
  t: Type.Integer({ description: 'When the platform read the line, epoch milliseconds.' }),
  function: Type.String(),
  version: Type.Integer({ description: 'The version the instance had loaded (or was loading) when it printed the line.' }),
  instance: Type.String(),
  invocation: Type.Optional(Type.String({ description: 'The call the line was printed during: always for `context.log`, for `console.*` when one call was in flight on the instance.' })),
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
  level: Type.Union([Type.Literal('debug'), Type.Literal('info'), Type.Literal('warn'), Type.Literal('error')], {
    description: '`console.*`/`context.log` carry their level; a plain stdout line is `info`, a plain stderr line `error`.',
  }),
  msg: Type.String(),
  truncated: Type.Optional(Type.Literal(true, { description: 'The line was longer than KINDLING_LOG_MAX_LINE and was cut there.' })),
  dropped: Type.Optional(Type.Integer({ description: 'A marker, not a line: this many lines went over KINDLING_LOG_LINES_PER_SEC and were not kept.' })),
})

export const functionLogs: FastifySchema = {
  tags: ['functions'], summary: "A function's output (logs)", operationId: 'functionLogs',
  description: 'What its instances printed — `console.*`, `context.log`, stdout and stderr — kept in memory per function (KINDLING_LOG_RETAIN_LINES, ' +
    'KINDLING_LOG_RETAIN_BYTES), oldest first. Without `after`: the newest `limit` entries; with it: the entries after that sequence number. ' +
    'Poll with `after` set to the answer\'s `next`. `follow=true` answers `application/x-ndjson`: the same backlog, then each new entry as it is ' +
    'printed, one JSON object a line, until the client leaves. A deleted function\'s logs go with it.',
  params: nameParam('function'),
  querystring: Type.Object({
    since: Type.Optional(Type.String({ description: 'Only entries since a duration ago (`30s`, `5m`, `2h`, `1d`), an ISO date, or epoch milliseconds.' })),
    after: Type.Optional(Type.Integer({ minimum: 0, description: 'Only entries with a larger `seq` (the `next` of an earlier answer).' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 200 })),
    invocation: Type.Optional(Type.String({ description: 'Only the lines of one call (its `x-kindling-invocation-id`).' })),
    follow: Type.Optional(Type.Boolean({ default: false, description: 'Stream new entries as they are printed (ndjson).' })),
  }),
  response: {
    200: {
      description: 'The entries; with `follow=true`, a stream of them.',
      content: {
        'application/json': { schema: Type.Object({ logs: Type.Array(LogEntrySchema), next: Type.Integer({ description: 'Pass as `after` to read on.' }) }) },
        'application/x-ndjson': { schema: LogEntrySchema },
      },
    },
    ...errors('KDL_ERR_BAD_REQUEST', 'KDL_ERR_FN_NOT_FOUND'),
  },
}

const ApplyChangeSchema = Type.Object({
  kind: Type.Union([Type.Literal('function'), Type.Literal('runtime')]),
  name: Type.String(),
  action: Type.Union([Type.Literal('create'), Type.Literal('update'), Type.Literal('unchanged'), Type.Literal('delete')]),
  fields: Type.Optional(Type.Array(Type.String(), { description: 'The spec fields an update changes (`code` when the code or its build differs).' })),
  version: Type.Optional(Type.Integer({ description: 'The function\'s version after the apply.' })),
})

export const applyProject: FastifySchema = {
  tags: ['functions'], summary: 'Apply a whole project (functions and runtimes) at once', operationId: 'applyProject',
  description: 'What `kindling apply -f kindling.yaml` sends. Every entry is checked and every problem answered at once (`errors`, each naming its ' +
    'entry and field) before anything changes; every created or updated function is built and trial-loaded before any lands; then all land. ' +
    'Unchanged entries keep their version and instances. `dryRun` answers the plan only (`kindling diff`); `prune` deletes the functions the ' +
    'project no longer names. `triggers` and `workflows` are refused until the platform has them.',
  body: Type.Object({
    functions: Type.Optional(Type.Record(Type.String({ pattern: NAME_PATTERN }), FunctionBody, { description: 'Function name → deploy body (as `PUT /v1/functions/{name}`).' })),
    runtimes: Type.Optional(Type.Record(Type.String({ pattern: NAME_PATTERN }), RuntimeBody, { description: 'Runtime name → runtime body (as `PUT /v1/runtimes/{name}`).' })),
    prune: Type.Optional(Type.Boolean({ default: false })),
    dryRun: Type.Optional(Type.Boolean({ default: false })),
  }),
  response: {
    200: Type.Object({ changes: Type.Array(ApplyChangeSchema), applied: Type.Boolean() }, { description: 'The plan, and whether it was carried out.' }),
    ...errors(...DEPLOY_ERRORS),
  },
}

const counts = (keys: readonly string[], description: string): TSchema => Type.Object(Object.fromEntries(keys.map((k) => [k, Type.Integer({ minimum: 0 })])), { description })
const StatsBucketFields = {
  calls: Type.Integer({ minimum: 0 }),
  errors: Type.Integer({ minimum: 0, description: 'Calls whose outcome was not `ok`.' }),
  p50Ms: Type.Union([Type.Number(), Type.Null()], { description: 'From a log-spaced latency histogram (0.1 ms – 60 s); null when no call was timed.' }),
  p99Ms: Type.Union([Type.Number(), Type.Null()]),
  meanMs: Type.Union([Type.Number(), Type.Null()]),
  maxMs: Type.Union([Type.Number(), Type.Null()]),
  outcomes: counts(['ok', 'http5xx', 'timeout', 'crashed', 'oom', 'refused'], 'Calls by how they ended.'),
  starts: counts(['warm', 'prewarmed', 'specialized', 'cold'], 'Calls by how their instance was had (`x-kindling-start`).'),
}

export const getStats: FastifySchema = {
  tags: ['platform'], summary: 'Per-function call rate, errors, latency and start kinds over the last minutes', operationId: 'getStats',
  description: 'What the dashboard charts: for each deployed function (or one), its calls in fixed buckets (`bucketMs`, 5 s) over the last `window` ' +
    'seconds (at most 15 minutes), oldest first, and their totals. Counted by the router where it counts outcomes; kept in memory.',
  querystring: Type.Object({
    function: Type.Optional(Type.String({ pattern: NAME_PATTERN, description: 'Only this function.' })),
    window: Type.Optional(Type.Integer({ minimum: 1, maximum: 900, description: 'Seconds back from now (default: the whole 15 minutes).' })),
  }),
  response: {
    200: Type.Object({
      bucketMs: Type.Integer(),
      windowMs: Type.Integer(),
      now: Type.Integer({ description: 'The platform\'s clock, epoch ms.' }),
      functions: Type.Record(Type.String(), Type.Object({
        buckets: Type.Array(Type.Object({ t: Type.Integer({ description: 'Start of the bucket, epoch ms.' }), ...StatsBucketFields })),
        totals: Type.Object(StatsBucketFields),
      })),
    }, { description: 'The numbers of each function.' }),
    ...errors('KDL_ERR_BAD_REQUEST', 'KDL_ERR_FN_NOT_FOUND'),
  },
}

const versionParams = Type.Object({
  name: Type.String({ pattern: NAME_PATTERN, description: 'The function.' }),
  version: Type.Integer({ minimum: 1, description: 'A version number.' }),
})
const aliasParams = Type.Object({
  name: Type.String({ pattern: NAME_PATTERN, description: 'The function.' }),
  alias: Type.String({ pattern: ALIAS_PATTERN, description: 'An alias: a letter, then lowercase letters, digits and dashes.' }),
})
const VersionView = Type.Composite([
  Type.Omit(FunctionSchema, ['status', 'aliases', 'lastVersion', 'canary']),
  Type.Object({ routedBy: Type.Array(Type.Object({ alias: Type.String(), percent: Type.Number() }), { description: 'Aliases routing to it and their share of the alias\'s calls.' }) }),
], { description: 'One immutable version.' })
const Aliases = Type.Object({ aliases: Type.Record(Type.String(), AliasTargetSchema) }, { description: 'The function\'s aliases after the change.' })

export const listVersions: FastifySchema = {
  tags: ['versions'], summary: 'List a function\'s kept versions, oldest first', operationId: 'listVersions',
  description: 'Every deploy keeps an immutable version; the newest `keep` (KINDLING_KEEP_VERSIONS) are kept, and older ones as long as an alias, a canary or a workflow run uses them.',
  params: nameParam('function'),
  response: { 200: Type.Object({ versions: Type.Array(VersionView), keep: Type.Integer() }, { description: 'The versions.' }), ...errors('KDL_ERR_FN_NOT_FOUND') },
}

export const getVersion: FastifySchema = {
  tags: ['versions'], summary: 'Get one version', operationId: 'getVersion',
  params: versionParams,
  response: { 200: VersionView, ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND') },
}

export const rollback: FastifySchema = {
  tags: ['versions'], summary: 'Roll `latest` back to an earlier version', operationId: 'rollback',
  description: 'From the next call on, the bare name serves `to` (default: the newest kept version below the one served now). A canary running on `latest` ends as aborted.',
  params: nameParam('function'),
  body: Type.Object({ to: Type.Optional(Type.Integer({ minimum: 1 })) }, { additionalProperties: false }),
  response: {
    200: Type.Object({ from: Type.Integer(), to: Type.Integer(), function: ref('Function') }, { description: 'Rolled back.' }),
    ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND', 'KDL_ERR_BAD_REQUEST'),
  },
}

export const listAliases: FastifySchema = {
  tags: ['versions'], summary: 'List a function\'s aliases', operationId: 'listAliases',
  params: nameParam('function'),
  response: { 200: Aliases, ...errors('KDL_ERR_FN_NOT_FOUND') },
}

export const putAlias: FastifySchema = {
  tags: ['versions'], summary: 'Create or move an alias', operationId: 'putAlias',
  description: '`/fn/{name}@{alias}` calls through it. A weighted pick is uniform over the total weight; a caller that sends `x-kindling-route-key` always lands on the same version while the weights stay. Each routed version keeps its share of the function\'s prewarm pool.',
  params: aliasParams,
  body: AliasTargetSchema,
  response: { 200: Aliases, ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND', 'KDL_ERR_BAD_SPEC', 'KDL_ERR_CANARY_CONFLICT') },
}

export const deleteAlias: FastifySchema = {
  tags: ['versions'], summary: 'Delete an alias', operationId: 'deleteAlias',
  params: aliasParams,
  response: { 200: Type.Object({ deleted: Type.String() }, { description: 'Deleted.' }), ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND', 'KDL_ERR_BAD_SPEC', 'KDL_ERR_CANARY_CONFLICT') },
}

const CanaryBody = Type.Object({
  to: Type.Integer({ minimum: 1, description: 'The version to release.' }),
  alias: Type.Optional(Type.String({ pattern: ALIAS_PATTERN, default: CANARY_DEFAULTS.alias, description: 'The alias it releases on (its version now is the baseline).' })),
  steps: Type.Optional(Type.Array(Type.Integer({ minimum: 1, maximum: 100 }), { default: CANARY_DEFAULTS.steps, description: 'The canary\'s weight at each step, in percent, rising, ending at 100.' })),
  interval: Type.Optional(Type.String({ default: '60s', description: 'How long each step\'s window lasts: `30s`, `5m`, `500ms` (or `intervalMs`).' })),
  intervalMs: Type.Optional(Type.Integer({ minimum: 100 })),
  minCalls: Type.Optional(Type.Integer({ minimum: 1, default: CANARY_DEFAULTS.minCalls, description: 'Canary calls a window needs for a verdict; fewer hold the step.' })),
  maxErrorRate: Type.Optional(Type.Number({ minimum: 0, maximum: 1, default: CANARY_DEFAULTS.maxErrorRate, description: 'How far the canary\'s error rate (5xx and platform errors) may exceed the baseline\'s.' })),
  maxP99Ms: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'A p99 above it breaches when the canary is also slower than the baseline (Mann-Whitney, p < 0.01).' })),
}, { additionalProperties: false })
const Canary = Type.Object({}, { additionalProperties: true, description: 'The canary: alias, baseline, to, steps, step, state (`running`, `promoted`, `rolled-back`, `aborted`), reason, history of verdicts with their numbers, and while running the live window.' })

export const startCanary: FastifySchema = {
  tags: ['versions'], summary: 'Start a canary release', operationId: 'startCanary',
  description: 'The alias\'s weight moves to `to` step by step. Each step\'s window is judged against the baseline over the same time: a breach rolls back at once; a window with fewer than `minCalls` canary calls holds; a pass moves on, and after the last step `to` is promoted.',
  params: nameParam('function'),
  body: CanaryBody,
  response: { 201: Canary, ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND', 'KDL_ERR_BAD_SPEC', 'KDL_ERR_CANARY_CONFLICT') },
}

export const getCanary: FastifySchema = {
  tags: ['versions'], summary: 'A canary\'s state and verdicts', operationId: 'getCanary',
  params: nameParam('function'),
  response: { 200: Canary, ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND') },
}

export const abortCanary: FastifySchema = {
  tags: ['versions'], summary: 'Abort a running canary (the alias goes back to the baseline)', operationId: 'abortCanary',
  params: nameParam('function'),
  response: { 200: Canary, ...errors('KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND') },
}

// ── Cron triggers (issue 11) ──
const TriggerView = Type.Composite([
  Type.Omit(TriggerBody, ['timezone', 'headers', 'enabled']),
  Type.Object({
    name: Type.String({ pattern: NAME_PATTERN }),
    timezone: Type.String(), headers: Type.Record(Type.String(), Type.String()), enabled: Type.Boolean(),
    createdAt: Type.String({ format: 'date-time' }), updatedAt: Type.String({ format: 'date-time', description: 'The last PUT: the schedule starts anew from it.' }),
    lastTick: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'The planned time of the latest tick fired (by any replica).' }),
    missedTicks: Type.Integer({ minimum: 0, description: 'Ticks reported missed (`trigger.missed` events): every replica was down, or Redis was away.' }),
    nextRuns: Type.Array(Type.String({ format: 'date-time' }), { description: `The next ${NEXT_RUNS} fire times (none while disabled).` }),
  }),
], { description: 'A trigger and its schedule.' })
const TRIGGER_OFF = 'KDL_ERR_ASYNC_UNAVAILABLE'

export const listTriggers: FastifySchema = {
  tags: ['triggers'], summary: 'List the cron triggers', operationId: 'listTriggers',
  response: { 200: list('triggers', TriggerView, 'Every trigger, by name.'), ...errors(TRIGGER_OFF, 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const getTrigger: FastifySchema = {
  tags: ['triggers'], summary: 'Get a cron trigger, its last tick and its next fire times', operationId: 'getTrigger',
  params: nameParam('trigger'),
  response: { 200: TriggerView, ...errors('KDL_ERR_TRIGGER_NOT_FOUND', 'KDL_ERR_BAD_SPEC', TRIGGER_OFF, 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const putTrigger: FastifySchema = {
  tags: ['triggers'], summary: 'Define a cron trigger (create or replace)', operationId: 'putTrigger',
  description: 'Each tick calls the function once across every replica (a Redis lock per trigger and tick). A tick missed while every replica was down is ' +
    `reported as a \`trigger.missed\` event, not fired late. Needs KINDLING_STORE=redis. \`body\` at most ${TRIGGER_MAX_BODY_BYTES} bytes.`,
  params: nameParam('trigger'),
  body: TriggerBody,
  response: {
    200: TriggerView, 201: TriggerView,
    ...errors('KDL_ERR_BAD_SPEC', 'KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_PAYLOAD_TOO_LARGE', TRIGGER_OFF, 'KDL_ERR_STORE_UNAVAILABLE'),
  },
}

export const deleteTrigger: FastifySchema = {
  tags: ['triggers'], summary: 'Delete a cron trigger', operationId: 'deleteTrigger',
  description: 'Every replica stops firing it at once.',
  params: nameParam('trigger'),
  response: { 200: Type.Object({ deleted: Type.String() }, { description: 'Deleted.' }), ...errors('KDL_ERR_TRIGGER_NOT_FOUND', 'KDL_ERR_BAD_SPEC', TRIGGER_OFF, 'KDL_ERR_STORE_UNAVAILABLE') },
}
