import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifySchema } from 'fastify'
import { JOB_ID_PATTERN } from '../async/queue.js'
import { errors } from './openapi.js'

/** The schemas of the `/v1/async` routes (api/async.ts), for the API description; descriptive, as in route-schemas.ts. */

const idParam = Type.Object({ id: Type.String({ pattern: JOB_ID_PATTERN, description: 'A job id (`j-…`), as the 202 of the enqueue gave it.' }) })
const Iso = (description: string): TSchema => Type.String({ format: 'date-time', description })
const JobError = Type.Object({
  code: Type.String({ description: 'A `KDL_ERR_*` code of the platform, or `HTTP_<status>` for a function\'s own error answer.' }),
  message: Type.String(),
  status: Type.Optional(Type.Integer()),
})
const STATES = ['queued', 'running', 'succeeded', 'failed', 'dead'] as const

const Job = Type.Object({
  id: Type.String(),
  function: Type.String({ description: 'The function key as called: `name`, `name@alias` or `name@7`.' }),
  state: Type.Union(STATES.map((s) => Type.Literal(s)), { description: '`queued` (waiting, or waiting for a retry: `nextAttemptAt`), `running`, `succeeded`, `failed` (a 4xx answer: not retried), `dead` (in the dead-letter queue).' }),
  attempts: Type.Integer({ minimum: 0 }),
  maxAttempts: Type.Integer({ minimum: 1, description: '1 + the function\'s `asyncRetries`.' }),
  enqueuedAt: Iso('When it was enqueued.'),
  startedAt: Type.Optional(Iso('When its latest attempt started.')),
  finishedAt: Type.Optional(Iso('When it settled (succeeded, failed, dead).')),
  nextAttemptAt: Type.Optional(Iso('When its next attempt is due (a retry waiting).')),
  redrivenAt: Type.Optional(Iso('When it was last redriven from the dead-letter queue.')),
  worker: Type.Optional(Type.String({ description: 'The replica that ran its latest attempt.' })),
  result: Type.Optional(Type.Object({
    status: Type.Integer(),
    headers: Type.Record(Type.String(), Type.String()),
    body: Type.String(),
    bodyEncoding: Type.Union([Type.Literal('utf8'), Type.Literal('base64')]),
    truncated: Type.Optional(Type.Boolean({ description: 'The body was longer than KINDLING_ASYNC_MAX_BODY_BYTES and was cut.' })),
  }, { description: 'The latest answer of the function.' })),
  error: Type.Optional(JobError),
  lastError: Type.Optional(JobError),
}, { description: 'An async job.' })

const DlqEntry = Type.Object({
  id: Type.String({ description: 'The job id.' }),
  entry: Type.String({ description: 'The dead-letter stream entry.' }),
  function: Type.String(),
  error: JobError,
  at: Iso('When it was dead-lettered.'),
})

export const getJob: FastifySchema = {
  tags: ['async'], summary: 'Get an async job: state, attempts, result or error', operationId: 'getAsyncJob',
  description: 'Finished jobs are kept 7 days; dead ones until redriven or purged.',
  params: idParam,
  response: { 200: Job, ...errors('KDL_ERR_JOB_NOT_FOUND', 'KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const listDlq: FastifySchema = {
  tags: ['async'], summary: 'List the dead-letter queue, newest first', operationId: 'listAsyncDlq',
  querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })) }),
  response: { 200: Type.Object({ jobs: Type.Array(DlqEntry) }, { description: 'Dead jobs, newest first.' }), ...errors('KDL_ERR_BAD_REQUEST', 'KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const getDlq: FastifySchema = {
  tags: ['async'], summary: 'Get a dead job', operationId: 'getAsyncDlqJob',
  params: idParam,
  response: { 200: Job, ...errors('KDL_ERR_JOB_NOT_FOUND', 'KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const redriveOne: FastifySchema = {
  tags: ['async'], summary: 'Redrive a dead job (same id, attempts reset)', operationId: 'redriveAsyncJob',
  params: idParam,
  response: { 200: Type.Object({ redriven: Type.Array(Type.String()) }, { description: 'Enqueued again.' }), ...errors('KDL_ERR_JOB_NOT_FOUND', 'KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const redriveAll: FastifySchema = {
  tags: ['async'], summary: 'Redrive every dead job', operationId: 'redriveAsyncDlq',
  response: { 200: Type.Object({ redriven: Type.Array(Type.String()) }, { description: 'The jobs enqueued again.' }), ...errors('KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const purgeOne: FastifySchema = {
  tags: ['async'], summary: 'Purge a dead job', operationId: 'purgeAsyncJob',
  params: idParam,
  response: { 200: Type.Object({ purged: Type.Array(Type.String()) }, { description: 'Deleted.' }), ...errors('KDL_ERR_JOB_NOT_FOUND', 'KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const purgeAll: FastifySchema = {
  tags: ['async'], summary: 'Purge the dead-letter queue', operationId: 'purgeAsyncDlq',
  response: { 200: Type.Object({ purged: Type.Array(Type.String()) }, { description: 'The jobs deleted.' }), ...errors('KDL_ERR_ASYNC_UNAVAILABLE', 'KDL_ERR_STORE_UNAVAILABLE') },
}
