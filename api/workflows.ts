import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { parse as parseYaml } from 'yaml'
import { KdlError } from '../common/errors.js'
import type { Locks } from '../common/keyed-mutex.js'
import { assertName } from '../common/spec.js'
import type { RunRecord, RunStatus, WorkflowRecord, WorkflowStore } from '../common/workflows.js'
import { parseDefinition, type Definition } from '../workflows/definition.js'
import type { WorkflowEngine } from '../workflows/engine.js'
import { stepsOf } from '../workflows/history.js'
import * as S from './workflow-schemas.js'

export interface WorkflowRouteDeps {
  store: WorkflowStore
  engine: WorkflowEngine
  /** Every writer of a workflow holds its lock (across replicas on Redis), so version numbers stay unique. */
  locks: Locks
  /** Largest run input, bytes (KINDLING_WORKFLOW_MAX_INPUT_BYTES). */
  maxInputBytes: number
  /** Longest a sync start waits, ms (KINDLING_WORKFLOW_SYNC_WAIT_MS). */
  syncWaitMs: number
}

const YAML_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml']
const STATUSES: readonly RunStatus[] = ['running', 'succeeded', 'failed', 'cancelled']

/** JSON with keys sorted at every level: the digest of a definition does not depend on how it was written. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`
  if (typeof v === 'object' && v !== null) return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`
  return JSON.stringify(v) ?? 'null'
}

function summary(r: RunRecord): Record<string, unknown> {
  const { wakeAt, ...rest } = r
  return { ...rest, ...(wakeAt === undefined ? {} : { wakeAt: new Date(wakeAt).toISOString() }) }
}

async function runView(store: WorkflowStore, id: string, workflow?: string): Promise<Record<string, unknown>> {
  const run = await store.getRun(id)
  if (run === undefined || (workflow !== undefined && run.workflow !== workflow)) throw new KdlError('KDL_ERR_WF_RUN_NOT_FOUND', `no workflow run "${id.slice(0, 80)}"${workflow === undefined ? '' : ` of "${workflow}"`}`)
  return { ...summary(run), steps: stepsOf(await store.readLog(id), run.status) }
}

/** The workflow management routes under `/v1` (issue 12): definitions, runs, cancel. Registered inside the API (its token applies). */
export function registerWorkflowRoutes(app: FastifyInstance, deps: WorkflowRouteDeps): void {
  const { store, engine, locks } = deps
  app.addContentTypeParser(YAML_TYPES, { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseYaml(body as string, { maxAliasCount: 100 }))
    } catch (err) {
      done(new KdlError('KDL_ERR_BAD_REQUEST', `the body is not YAML: ${(err as Error).message}`), undefined)
    }
  })
  type Name = { Params: { name: string } }

  app.put<Name>('/v1/workflows/:name', { schema: S.putWorkflow }, async (request, reply) => {
    const { name } = request.params
    assertName('workflow', name)
    let body = request.body
    if (typeof body === 'object' && body !== null && !Array.isArray(body) && 'name' in body) {
      const { name: named, ...rest } = body as Record<string, unknown>
      if (named !== name) throw new KdlError('KDL_ERR_BAD_SPEC', `the definition names "${String(named)}" but the URL names "${name}"`)
      body = rest
    }
    const definition = parseDefinition(body)
    const digest = createHash('sha256').update(canonical(definition)).digest('hex')
    return locks.run(`workflow:${name}`, async () => {
      const head = await store.getWorkflow(name)
      if (head?.digest === digest) return { ...head, changed: false }
      const record: WorkflowRecord = { name, version: (head?.version ?? 0) + 1, definition, digest, createdAt: new Date().toISOString() }
      await store.putWorkflow(record)
      void reply.code(head === undefined ? 201 : 200)
      return { ...record, changed: true }
    })
  })

  app.get('/v1/workflows', { schema: S.listWorkflows }, async () => ({
    workflows: (await store.listWorkflows()).map((w) => ({ name: w.name, version: w.version, createdAt: w.createdAt, states: Object.keys((w.definition as Definition).states).length })),
  }))

  app.get<Name & { Querystring: { version?: string } }>('/v1/workflows/:name', { schema: S.getWorkflow }, async (request) => {
    const { name } = request.params
    assertName('workflow', name)
    const v = request.query.version
    const version = v === undefined ? undefined : Number(v)
    if (version !== undefined && (!Number.isInteger(version) || version < 1)) throw new KdlError('KDL_ERR_BAD_REQUEST', `version must be a positive integer (got "${v}")`)
    const record = version === undefined ? await store.getWorkflow(name) : await store.getWorkflowVersion(name, version)
    if (record === undefined) throw new KdlError('KDL_ERR_WF_NOT_FOUND', `workflow "${name}"${version === undefined ? '' : ` has no version ${version}`}${version === undefined ? ' is not defined' : ''}`)
    return record
  })

  app.delete<Name>('/v1/workflows/:name', { schema: S.deleteWorkflow }, async (request) => {
    const { name } = request.params
    assertName('workflow', name)
    return locks.run(`workflow:${name}`, async () => {
      if (!await store.deleteWorkflow(name)) throw new KdlError('KDL_ERR_WF_NOT_FOUND', `workflow "${name}" is not defined`)
      return { deleted: name }
    })
  })

  app.get<Name & { Querystring: { limit?: string; status?: string; before?: string } }>('/v1/workflows/:name/runs', { schema: S.listRuns }, async (request) => {
    const { name } = request.params
    assertName('workflow', name)
    const limit = request.query.limit === undefined ? 50 : Number(request.query.limit)
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new KdlError('KDL_ERR_BAD_REQUEST', 'limit must be an integer from 1 to 1000')
    const status = request.query.status
    if (status !== undefined && !(STATUSES as readonly string[]).includes(status)) throw new KdlError('KDL_ERR_BAD_REQUEST', `status must be one of ${STATUSES.join(', ')}`)
    const runs = await store.listRuns(name, { limit: limit + 1, before: request.query.before, status: status as RunStatus | undefined })
    const page = runs.slice(0, limit)
    const last = page.at(-1)
    return { runs: page.map(summary), ...(runs.length > limit && last !== undefined ? { next: last.id } : {}) }
  })

  app.get<{ Params: { id: string } }>('/v1/runs/:id', { schema: S.getRun }, async (request) => runView(store, request.params.id))
  app.get<{ Params: { name: string; id: string } }>('/v1/workflows/:name/runs/:id', { schema: S.getWorkflowRun }, async (request) => runView(store, request.params.id, request.params.name))

  const cancel = async (id: string, workflow?: string): Promise<Record<string, unknown>> => {
    if (workflow !== undefined && (await store.getRun(id))?.workflow !== workflow) throw new KdlError('KDL_ERR_WF_RUN_NOT_FOUND', `no workflow run "${id.slice(0, 80)}" of "${workflow}"`)
    return summary(await engine.cancel(id))
  }
  app.post<{ Params: { id: string } }>('/v1/runs/:id/cancel', { schema: S.cancelRun }, async (request) => cancel(request.params.id))
  app.post<{ Params: { name: string; id: string } }>('/v1/workflows/:name/runs/:id/cancel', { schema: S.cancelWorkflowRun }, async (request) => cancel(request.params.id, request.params.name))
}

/**
 * `POST /wf/:name` (issue 12): a workflow's URL, like a function's `/fn/:name` — outside the API's token. It
 * starts a run and waits for its end up to a bound (sync) or answers 202 at once (`?async=true`).
 */
export const workflowStartPlugin: FastifyPluginAsync<WorkflowRouteDeps> = async (app, deps) => {
  // As in the API: the schemas describe, the handler validates (with the platform's own codes).
  app.setValidatorCompiler(() => () => true)
  app.setSerializerCompiler(() => (data) => JSON.stringify(data))
  app.post<{ Params: { name: string }; Querystring: { async?: string; wait?: string } }>('/wf/:name', { schema: S.startRun, bodyLimit: deps.maxInputBytes }, async (request, reply) => {
    const { name } = request.params
    assertName('workflow', name)
    const wf = await deps.store.getWorkflow(name)
    if (wf === undefined) throw new KdlError('KDL_ERR_WF_NOT_FOUND', `workflow "${name}" is not defined`)
    const input = request.body === undefined || request.body === null || request.body === '' ? {} : request.body
    const wait = request.query.wait === undefined ? deps.syncWaitMs : Math.min(deps.syncWaitMs, Number(request.query.wait))
    if (!Number.isFinite(wait) || wait < 0) throw new KdlError('KDL_ERR_BAD_REQUEST', 'wait must be a number of milliseconds ≥ 0')
    const started = await deps.engine.run(wf, input)
    void reply.header('x-kindling-run-id', started.id)
    const accepted = (): Record<string, unknown> => {
      void reply.code(202).header('location', `/v1/runs/${started.id}`)
      return { id: started.id, workflow: name, status: 'running', location: `/v1/runs/${started.id}` }
    }
    if (request.query.async === 'true' || request.query.async === '') return accepted()
    const run = await deps.engine.wait(started.id, wait)
    if (run === undefined || run.status === 'running') return accepted()
    void reply.header('x-kindling-run-status', run.status)
    // Always JSON (a string result too: fastify would send a returned string as it is).
    if (run.status === 'succeeded') return reply.type('application/json; charset=utf-8').send(JSON.stringify(run.output ?? null))
    const details = { run: run.id, error: run.error?.error, cause: run.error?.cause }
    const headers = { 'x-kindling-run-id': run.id, 'x-kindling-run-status': run.status }
    if (run.status === 'cancelled') throw new KdlError('KDL_ERR_WF_RUN_CANCELLED', `run ${run.id} was cancelled`, { details, headers })
    throw new KdlError('KDL_ERR_WF_RUN_FAILED', `run ${run.id} failed: ${run.error?.error ?? ''}: ${run.error?.cause ?? ''}`, { details, headers })
  })
}
