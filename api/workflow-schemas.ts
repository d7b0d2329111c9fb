import { Type, type TSchema } from '@sinclair/typebox'
import type { FastifySchema } from 'fastify'
import { NAME_PATTERN } from '../common/spec.js'
import { errors } from './openapi.js'

/** The schemas of the workflow routes (api/workflows.ts), for the API description; descriptive, as in route-schemas.ts. */

const nameParam = Type.Object({ name: Type.String({ pattern: NAME_PATTERN, description: 'The workflow: a DNS label.' }) })
const idParam = Type.Object({ id: Type.String({ description: 'A run id, as the start gave it.' }) })
const runParams = Type.Object({ name: Type.String({ pattern: NAME_PATTERN }), id: Type.String() })
const Iso = (description: string): TSchema => Type.String({ format: 'date-time', description })
const StepErr = Type.Object({ error: Type.String({ description: 'The error name `retry` and `catch` match on.' }), cause: Type.String() })
const DEF_ERRORS = ['KDL_ERR_WF_INVALID', 'KDL_ERR_WF_UNKNOWN_STATE', 'KDL_ERR_WF_MISSING_NEXT', 'KDL_ERR_WF_NO_EXIT', 'KDL_ERR_WF_BAD_EXPRESSION'] as const

const Workflow = Type.Object({
  name: Type.String(),
  version: Type.Integer({ minimum: 1 }),
  digest: Type.String({ description: 'sha256 of the definition\'s canonical JSON.' }),
  createdAt: Iso('When this version was written.'),
  definition: Type.Object({}, { additionalProperties: true, description: 'The definition, validated and normalised (defaults filled in).' }),
}, { description: 'A workflow version.' })

const RunSummary = Type.Object({
  id: Type.String(),
  workflow: Type.String(),
  version: Type.Integer({ description: 'The definition version the run follows.' }),
  status: Type.Union(['running', 'succeeded', 'failed', 'cancelled'].map((s) => Type.Literal(s))),
  startedAt: Iso('When it started.'),
  endedAt: Type.Optional(Iso('When it ended.')),
  output: Type.Optional(Type.Unknown({ description: 'The result of a succeeded run.' })),
  error: Type.Optional(StepErr),
  wakeAt: Type.Optional(Iso('When a run that only waits (a wait state, a retry\'s back-off) is due again.')),
  cancelRequested: Type.Optional(Type.Boolean()),
}, { description: 'A workflow run.' })

const Step = Type.Object({
  id: Type.String({ description: 'The step: the state\'s name, `@n` when entered the n-th time, under its map item (`Items[2]/…`) or parallel branch (`Both#1/…`).' }),
  state: Type.String(),
  type: Type.String(),
  status: Type.Union(['running', 'waiting', 'succeeded', 'failed', 'cancelled'].map((s) => Type.Literal(s))),
  input: Type.Optional(Type.Unknown()),
  output: Type.Optional(Type.Unknown()),
  error: Type.Optional(StepErr),
  attempts: Type.Integer({ minimum: 0 }),
  startedAt: Iso('When the state was entered.'),
  endedAt: Type.Optional(Iso('When it gave its output or failed.')),
  ms: Type.Optional(Type.Number()),
})

const RunDetail = Type.Composite([RunSummary, Type.Object({ steps: Type.Array(Step) })], { description: 'A run and its step history, in the order steps started.' })

export const putWorkflow: FastifySchema = {
  tags: ['workflows'], summary: 'Define a workflow (create, or a new version when changed)', operationId: 'putWorkflow',
  description: 'The body is the definition, as JSON or YAML (`content-type: application/yaml`). An identical definition makes no new version (`changed: false`).',
  params: nameParam,
  response: {
    200: Type.Composite([Workflow, Type.Object({ changed: Type.Boolean() })], { description: 'The workflow\'s head after the write.' }),
    201: Type.Composite([Workflow, Type.Object({ changed: Type.Boolean() })], { description: 'The new workflow.' }),
    ...errors(...DEF_ERRORS, 'KDL_ERR_BAD_SPEC', 'KDL_ERR_BAD_REQUEST', 'KDL_ERR_STORE_UNAVAILABLE'),
  },
}

export const listWorkflows: FastifySchema = {
  tags: ['workflows'], summary: 'List the workflows', operationId: 'listWorkflows',
  response: {
    200: Type.Object({ workflows: Type.Array(Type.Object({ name: Type.String(), version: Type.Integer(), createdAt: Type.String(), states: Type.Integer() })) }, { description: 'Every workflow\'s head, by name.' }),
    ...errors('KDL_ERR_STORE_UNAVAILABLE'),
  },
}

export const getWorkflow: FastifySchema = {
  tags: ['workflows'], summary: 'Get a workflow\'s definition (its head, or `?version=N`)', operationId: 'getWorkflow',
  params: nameParam,
  querystring: Type.Object({ version: Type.Optional(Type.Integer({ minimum: 1 })) }),
  response: { 200: Workflow, ...errors('KDL_ERR_WF_NOT_FOUND', 'KDL_ERR_BAD_SPEC', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const deleteWorkflow: FastifySchema = {
  tags: ['workflows'], summary: 'Delete a workflow and its versions (its runs stay)', operationId: 'deleteWorkflow',
  params: nameParam,
  response: { 200: Type.Object({ deleted: Type.String() }, { description: 'The workflow was deleted.' }), ...errors('KDL_ERR_WF_NOT_FOUND', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const startRun: FastifySchema = {
  tags: ['workflows'], summary: 'Start a run: wait for its result (sync) or answer 202 at once (`?async=true`)', operationId: 'startWorkflowRun',
  description: 'The body is the run\'s input (JSON; none: `{}`). A sync start waits up to `?wait=` ms (at most KINDLING_WORKFLOW_SYNC_WAIT_MS), then answers 202 with the run id. ' +
    'Every answer carries `x-kindling-run-id`.',
  params: nameParam,
  querystring: Type.Object({ async: Type.Optional(Type.Boolean()), wait: Type.Optional(Type.Integer({ minimum: 0 })) }),
  response: {
    200: Type.Unknown({ description: 'The run succeeded: its output (`x-kindling-run-status: succeeded`).' }),
    202: Type.Object({ id: Type.String(), workflow: Type.String(), status: Type.Literal('running'), location: Type.String() }, { description: 'The run goes on; `location` shows it.' }),
    ...errors('KDL_ERR_WF_RUN_FAILED', 'KDL_ERR_WF_RUN_CANCELLED', 'KDL_ERR_WF_NOT_FOUND', 'KDL_ERR_FN_NOT_FOUND', 'KDL_ERR_VERSION_NOT_FOUND', 'KDL_ERR_PAYLOAD_TOO_LARGE', 'KDL_ERR_BAD_REQUEST', 'KDL_ERR_STORE_UNAVAILABLE'),
  },
}

export const listRuns: FastifySchema = {
  tags: ['workflows'], summary: 'List a workflow\'s runs, newest first', operationId: 'listWorkflowRuns',
  params: nameParam,
  querystring: Type.Object({
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 50 })),
    status: Type.Optional(Type.Union(['running', 'succeeded', 'failed', 'cancelled'].map((s) => Type.Literal(s)))),
    before: Type.Optional(Type.String({ description: 'A run id: the page after it.' })),
  }),
  response: { 200: Type.Object({ runs: Type.Array(RunSummary), next: Type.Optional(Type.String({ description: 'Pass as `before` for the next page.' })) }, { description: 'Runs, newest first.' }), ...errors('KDL_ERR_BAD_REQUEST', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const getRun: FastifySchema = {
  tags: ['workflows'], summary: 'Get a run: its state, step history and result', operationId: 'getWorkflowRun',
  params: idParam,
  response: { 200: RunDetail, ...errors('KDL_ERR_WF_RUN_NOT_FOUND', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const getWorkflowRun: FastifySchema = { ...getRun, operationId: 'getWorkflowRunOf', params: runParams }

export const cancelRun: FastifySchema = {
  tags: ['workflows'], summary: 'Cancel a run', operationId: 'cancelWorkflowRun',
  description: 'A call in flight finishes, its answer is dropped, and nothing more runs. A run another replica advances stops at that replica\'s next claim renewal (`cancelRequested` until then).',
  params: idParam,
  response: { 200: RunSummary, ...errors('KDL_ERR_WF_RUN_NOT_FOUND', 'KDL_ERR_WF_RUN_FINISHED', 'KDL_ERR_STORE_UNAVAILABLE') },
}

export const cancelWorkflowRun: FastifySchema = { ...cancelRun, operationId: 'cancelWorkflowRunOf', params: runParams }
