import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { Readable } from 'node:stream'
import type { Builder, BuildRecord } from '../builder/builder.js'
import type { CodeStore, StoredCode } from '../codestore/code-store.js'
import { errorBody, isKdlError, KdlError } from '../common/errors.js'
import type { EventLog, PlatformEvent } from '../common/events.js'
import type { FunctionLogs } from '../common/function-logs.js'
import { assertName, parseRuntimeBody } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord, FunctionSpec } from '../common/types.js'
import type { Executor } from '../executor/executor.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import type { AsyncQueue } from '../async/queue.js'
import { registerApplyRoute } from './apply.js'
import { registerAsyncRoutes } from './async.js'
import { buildView, registerBuildRoutes } from './builds.js'
import { Deployer } from './deployer.js'
import { registerLogRoutes } from './logs.js'
import { actorOf, registerReleaseRoutes } from './releases.js'
import type { CanaryController } from '../releases/canary.js'
import type { Releases } from '../releases/versions.js'
import * as S from './route-schemas.js'
import { registerStatsRoutes, type CallStatsSource } from './stats.js'
import { registerTriggerRoutes } from './triggers.js'
import { registerWorkflowRoutes, type WorkflowRouteDeps } from './workflows.js'
import type { TriggerStore } from '../triggers/store.js'

export interface ApiDeps {
  store: Store
  codeStore: CodeStore
  /** Builds code with dependencies (issue 9); without it a package.json is code like any other. */
  builder?: Builder | undefined
  executor: Executor
  pools: PoolManager
  /** Versions, aliases, rollback (issue 15). */
  releases: Releases
  canary: CanaryController
  events: EventLog
  /** Each function's recent output (`GET /v1/functions/:name/logs`). */
  logs: FunctionLogs
  /** The router's per-function view (slots, waiting calls), for `GET /v1/pools`. */
  routerSnapshot: () => unknown
  /** Runtime kinds the backend can start (`node`, later `python`). */
  runtimeKinds: readonly string[]
  /** When set, every `/v1` call needs `Authorization: Bearer <token>`. */
  apiToken?: string | undefined
  /** The load guard's state of a function (`status.loadGuard` in `GET /v1/functions/:name`); absent when the guard is off. */
  loadGuardState?: ((fn: string) => unknown) | undefined
  /** The router's per-function call counts (`GET /v1/stats`, the dashboard's charts). */
  callStats?: CallStatsSource | undefined
  /** The events of every replica (several replicas on Redis); the local log answers when it fails or is absent. */
  sharedEvents?: ((opts: { since?: number | undefined; fn?: string | undefined; limit?: number | undefined }) => Promise<PlatformEvent[]>) | undefined
  /** The store and the live replicas (`GET /v1/cluster`). */
  cluster?: (() => { store: 'file' | 'redis'; replica: string; replicas: readonly string[] }) | undefined
  /** Several replicas (issue 11): a version's code is put in the shared store before the version is committed. */
  shareCode?: ((hash: string) => Promise<void>) | undefined
  /** Cron triggers (issue 11); undefined on the file store (the routes answer 503 KDL_ERR_ASYNC_UNAVAILABLE). */
  triggers?: TriggerStore | undefined
  /** Async jobs and their dead-letter queue (issue 11); absent on the file store (`/v1/async` answers 503). */
  asyncQueue?: AsyncQueue | undefined
  /** Workflows (issue 12): definitions and runs, on either store. */
  workflows?: WorkflowRouteDeps | undefined
}

/** The management API under `/v1`: functions, runtimes, pools, events. */
export const apiPlugin: FastifyPluginAsync<ApiDeps> = async (app: FastifyInstance, deps: ApiDeps) => {
  const { store, codeStore, executor, pools, builder } = deps
  // The route schemas describe the API (/docs, issue 14); validation stays with common/spec.ts (KDL_ERR_BAD_SPEC
  // naming each field), and answers are sent whole, not trimmed to their schema.
  app.setValidatorCompiler(() => () => true)
  app.setSerializerCompiler(() => (data) => JSON.stringify(data))
  const deployer = new Deployer({
    store, codeStore, builder, executor, pools, releases: deps.releases, runtimeKinds: deps.runtimeKinds, log: app.log, shareCode: deps.shareCode, removed: (name) => { deps.logs.drop(name); deps.callStats?.forget(name) },
  })
  const { locks } = deployer

  if (deps.apiToken !== undefined) {
    const expected = Buffer.from(`Bearer ${deps.apiToken}`)
    app.addHook('onRequest', async (request) => {
      const got = Buffer.from(request.headers.authorization ?? '')
      if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
        throw new KdlError('KDL_ERR_UNAUTHORIZED', 'missing or wrong bearer token (KINDLING_API_TOKEN is set)')
      }
    })
  }

  const view = (r: FunctionRecord): Record<string, unknown> => ({
    ...r, status: { instances: executor.instancesOf(r.name), loadGuard: deps.loadGuardState?.(r.name) },
  })

  app.get<{ Querystring: { limit?: string; cursor?: string } }>('/v1/functions', { schema: S.listFunctions }, async (request) => {
    const { limit, after } = pageOf(request.query)
    // One more than asked tells whether a next page exists.
    const records = await store.listFunctions({ after, limit: limit + 1 })
    const page = records.slice(0, limit)
    const last = page.at(-1)
    return { functions: page.map(view), ...(records.length > limit && last !== undefined ? { next: cursorOf(last.name) } : {}) }
  })

  app.get<{ Params: { name: string } }>('/v1/functions/:name', { schema: S.getFunction }, async (request) => {
    const r = await store.getFunction(request.params.name)
    if (r === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${request.params.name}" is not deployed`)
    return view(r)
  })

  /** Trial-loads and stores one version (under the name's lock); the answer's status and body. */
  const commit = async (name: string, spec: FunctionSpec, code: StoredCode, seq: number, build: BuildRecord | undefined, how: DeployHow): Promise<{ status: number; body: Record<string, unknown> }> =>
    locks.run(name, async () => {
      deployer.assertLatest(name, seq)
      const prev = await store.getFunction(name)
      const record = deployer.recordOf(name, spec, code, build, prev, how.actor)
      const head = await deployer.deploy(record, how.promote)
      // The answer is the function as it is now; a version stored without promotion is named beside it.
      return { status: prev === undefined ? 201 : 200, body: { ...view(head), deployed: record.version } }
    })

  app.put<{ Params: { name: string }; Querystring: { wait?: string; promote?: string } }>('/v1/functions/:name', { schema: S.deployFunction }, async (request, reply) => {
    const { name } = request.params
    assertName('function', name)
    const promote = request.query.promote
    if (promote !== undefined && promote !== 'true' && promote !== 'false') throw new KdlError('KDL_ERR_BAD_REQUEST', 'promote: must be true or false')
    const how: DeployHow = { promote: promote !== 'false', actor: actorOf(request) }
    return deployer.deploying(async () => {
      const { body, spec } = deployer.specOf(request.body)
      const code = await deployer.storeCode(body, spec)
      const seq = deployer.claim(name)
      const plan = await deployer.buildPlan(code, spec.runtime)
      if (plan === undefined || builder === undefined) {
        const r = await commit(name, spec, code, seq, undefined, how)
        void reply.code(r.status)
        return r.body
      }

      // Dependencies: built once per set of inputs (issue 9), then trial-loaded with them in place.
      const ticket = await builder.ensure(plan, name)
      const finish = async (): Promise<{ status: number; body: Record<string, unknown> }> => {
        await ticket.done
        const r = await commit(name, spec, await builder.assemble(code, plan.inputsHash), seq, ticket.record, how)
        return { status: r.status, body: { ...r.body, build: { ...buildView(ticket.record), reused: ticket.reused } } }
      }
      if (ticket.reused) {
        const r = await finish()
        void reply.code(r.status)
        return r.body
      }
      // The build goes on after a 202: it counts as a deploy in flight until it lands or fails.
      const done = deployer.deploying(finish)
      // Whoever waits (or nobody, after a 202): the outcome is logged and an event either way.
      done.then(() => {}, (err: unknown) => {
        const kdl = asKdl(err)
        request.log.warn({ fn: name, code: kdl.code, build: ticket.record.id }, 'deploy after build failed')
        deps.events.add({ type: 'deploy.failed', function: name, message: kdl.message, data: { code: kdl.code, build: ticket.record.id } })
      })
      const wait = request.query.wait === 'true' || request.query.wait === '1'
      if (!wait) {
        void reply.code(202)
        return { function: name, state: 'building', build: buildView(ticket.record) }
      }
      if ((request.headers.accept ?? '').includes('application/x-ndjson')) {
        // The CLI's deploy: the build's log as it is written, then the deploy's outcome, one JSON object a line.
        const ac = new AbortController()
        request.raw.once('close', () => ac.abort())
        const log = ticket.log
        const lines = async function* (): AsyncGenerator<string> {
          yield JSON.stringify({ event: 'build', build: buildView(ticket.record) }) + '\n'
          if (log !== undefined) {
            for await (const chunk of log.follow(ac.signal)) {
              for (const line of chunk.split('\n')) if (line !== '') yield JSON.stringify({ event: 'log', line }) + '\n'
            }
          }
          try {
            const r = await done
            yield JSON.stringify({ event: 'result', statusCode: r.status, body: r.body }) + '\n'
          } catch (err) {
            const kdl = asKdl(err)
            yield JSON.stringify({ event: 'error', statusCode: kdl.statusCode, error: errorBody(kdl) }) + '\n'
          }
        }
        return reply.code(202).type('application/x-ndjson').send(Readable.from(lines()))
      }
      const r = await done
      void reply.code(r.status)
      return r.body
    })
  })

  app.delete<{ Params: { name: string } }>('/v1/functions/:name', { schema: S.deleteFunction }, async (request) => {
    const { name } = request.params
    deployer.claim(name)
    return locks.run(name, async () => {
      if (!await deployer.remove(name)) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
      return { deleted: name }
    })
  })

  if (builder !== undefined) registerBuildRoutes(app, builder)
  registerLogRoutes(app, { store, logs: deps.logs })
  registerApplyRoute(app, { deployer, store, runtimeKinds: deps.runtimeKinds })
  registerReleaseRoutes(app, { releases: deps.releases, canary: deps.canary, view })
  if (deps.callStats !== undefined) registerStatsRoutes(app, store, deps.callStats)
  registerTriggerRoutes(app, { triggers: deps.triggers, store })
  registerAsyncRoutes(app, deps.asyncQueue, deps.events)
  if (deps.workflows !== undefined) registerWorkflowRoutes(app, deps.workflows)

  app.get('/v1/runtimes', { schema: S.listRuntimes }, async () => ({ runtimes: await store.listRuntimes() }))

  app.put<{ Params: { name: string } }>('/v1/runtimes/:name', { schema: S.putRuntime }, async (request, reply) => {
    const { name } = request.params
    assertName('runtime', name)
    if (!deps.runtimeKinds.includes(name)) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `runtime "${name}" is not one this backend can run (${deps.runtimeKinds.join(', ')})`)
    }
    return locks.run(`runtime:${name}`, async () => {
      const current = await store.getRuntime(name)
      const spec = parseRuntimeBody(name, request.body, current)
      await deployer.setRuntime(spec)
      void reply.code(current === undefined ? 201 : 200)
      return spec
    })
  })

  app.get('/v1/cluster', { schema: S.getCluster }, async () => deps.cluster?.() ?? { store: 'file', replica: 'local', replicas: ['local'] })

  app.get('/v1/pools', { schema: S.getPools }, async () => ({ pools: pools.snapshot(), starts: pools.starts(), memory: pools.memory(), functions: deps.routerSnapshot() }))

  app.get<{ Querystring: { since?: string; function?: string; limit?: string } }>('/v1/events', { schema: S.listEvents }, async (request) => {
    const q = request.query
    const opts = {
      since: q.since === undefined ? undefined : Number(q.since),
      fn: q.function,
      limit: q.limit === undefined ? undefined : Math.min(1000, Number(q.limit)),
    }
    if (deps.sharedEvents !== undefined) {
      try {
        return { events: await deps.sharedEvents(opts) }
      } catch (err) {
        request.log.warn({ err }, 'the shared event stream does not answer: this replica\'s own events are listed')
      }
    }
    return { events: deps.events.list(opts) }
  })
}

/** Functions a page of `GET /v1/functions` holds by default, and at most. */
export const PAGE_DEFAULT = 100
export const PAGE_MAX = 1000

/** A cursor names the last function of a page (base64url, opaque to clients). */
function cursorOf(name: string): string {
  return Buffer.from(name, 'utf8').toString('base64url')
}

function pageOf(q: { limit?: string; cursor?: string }): { limit: number; after: string | undefined } {
  let limit = PAGE_DEFAULT
  if (q.limit !== undefined) {
    if (!/^[0-9]{1,7}$/.test(q.limit) || Number(q.limit) < 1 || Number(q.limit) > PAGE_MAX) {
      throw new KdlError('KDL_ERR_BAD_REQUEST', `limit: must be an integer between 1 and ${PAGE_MAX}`)
    }
    limit = Number(q.limit)
  }
  if (q.cursor === undefined) return { limit, after: undefined }
  const after = Buffer.from(q.cursor, 'base64url').toString('utf8')
  if (q.cursor === '' || cursorOf(after) !== q.cursor || !/^[a-z0-9-]{1,63}$/.test(after)) {
    throw new KdlError('KDL_ERR_BAD_REQUEST', 'cursor: not a cursor this API gave (take `next` from the previous page)')
  }
  return { limit, after }
}

/** How a deploy lands: moving `latest` or not, and who made it. */
interface DeployHow {
  promote: boolean
  actor: string
}

/** Anything thrown, as the platform's error (a fault of its own is KDL_ERR_INTERNAL). */
function asKdl(err: unknown): KdlError {
  return isKdlError(err) ? err : new KdlError('KDL_ERR_INTERNAL', 'internal error', { cause: err })
}

