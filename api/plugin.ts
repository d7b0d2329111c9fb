import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { Readable } from 'node:stream'
import type { Builder, BuildRecord } from '../builder/builder.js'
import type { CodeStore, StoredCode } from '../codestore/code-store.js'
import { errorBody, isKdlError, KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import { assertName, functionSpecOf, parseFunctionBody, parseRuntimeBody } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord, FunctionSpec } from '../common/types.js'
import type { Executor } from '../executor/executor.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import { buildView, registerBuildRoutes } from './builds.js'
import { KeyedMutex } from './keyed-mutex.js'
import { registerStatsRoutes, type CallStatsSource } from './stats.js'

export interface ApiDeps {
  store: Store
  codeStore: CodeStore
  /** Builds code with dependencies (issue 9); without it a package.json is code like any other. */
  builder?: Builder | undefined
  executor: Executor
  pools: PoolManager
  events: EventLog
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
}

/** The management API under `/v1`: functions, runtimes, pools, events. */
export const apiPlugin: FastifyPluginAsync<ApiDeps> = async (app: FastifyInstance, deps: ApiDeps) => {
  const { store, codeStore, executor, pools, builder } = deps
  const locks = new KeyedMutex()

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

  app.get('/v1/functions', async () => ({ functions: (await store.listFunctions()).map(view) }))

  app.get<{ Params: { name: string } }>('/v1/functions/:name', async (request) => {
    const r = await store.getFunction(request.params.name)
    if (r === undefined) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${request.params.name}" is not deployed`)
    return view(r)
  })

  /**
   * Deploys of a name in request order: a deploy that waited for its build while a later deploy (or a delete)
   * of the same name was made does not land over it.
   */
  const latest = new Map<string, number>()
  let requests = 0

  /** Trial-loads and stores one version (under the name's lock); the answer's status and body. */
  const commit = async (name: string, spec: FunctionSpec, code: StoredCode, seq: number, build: BuildRecord | undefined): Promise<{ status: number; body: Record<string, unknown> }> =>
    locks.run(name, async () => {
      if (latest.get(name) !== seq) {
        throw new KdlError('KDL_ERR_DEPLOY_SUPERSEDED', `a later deploy or delete of "${name}" was made while this one was building; it was not applied`)
      }
      const prev = await store.getFunction(name)
      const now = new Date().toISOString()
      const record: FunctionRecord = {
        name, ...spec, version: (prev?.version ?? 0) + 1, codeHash: code.hash, createdAt: prev?.createdAt ?? now, updatedAt: now,
        ...(build === undefined ? {} : { build: { id: build.id, inputsHash: build.inputsHash } }),
      }
      // Code that does not load is refused here, with the loader's message, and nothing is stored.
      const trial = await executor.trialLoad(record)
      try {
        await store.putFunction(record)
      } catch (err) {
        await pools.destroy(trial)
        throw err
      }
      executor.deployed(record, trial)
      app.log.info({ fn: name, version: record.version }, 'function deployed')
      return { status: prev === undefined ? 201 : 200, body: view(record) }
    })

  app.put<{ Params: { name: string }; Querystring: { wait?: string } }>('/v1/functions/:name', async (request, reply) => {
    const { name } = request.params
    assertName('function', name)
    const body = parseFunctionBody(request.body)
    const spec = functionSpecOf(body)
    if (!deps.runtimeKinds.includes(spec.runtime) || pools.runtime(spec.runtime) === undefined) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `unknown runtime "${spec.runtime}" (configured: ${deps.runtimeKinds.join(', ')})`)
    }
    const code = body.archive !== undefined
      ? await codeStore.putArchive(decodeArchive(body.archive))
      : await codeStore.putInline(body.code ?? '')
    await codeStore.assertEntrypoint(code.dir, spec.entrypoint)
    const seq = ++requests
    latest.set(name, seq)
    const plan = builder === undefined ? undefined : await builder.plan(code.dir, spec.runtime)
    if (plan === undefined || builder === undefined) {
      const r = await commit(name, spec, code, seq, undefined)
      void reply.code(r.status)
      return r.body
    }

    // Dependencies: built once per set of inputs (issue 9), then trial-loaded with them in place.
    const ticket = await builder.ensure(plan, name)
    const finish = async (): Promise<{ status: number; body: Record<string, unknown> }> => {
      await ticket.done
      const r = await commit(name, spec, await builder.assemble(code, plan.inputsHash), seq, ticket.record)
      return { status: r.status, body: { ...r.body, build: { ...buildView(ticket.record), reused: ticket.reused } } }
    }
    if (ticket.reused) {
      const r = await finish()
      void reply.code(r.status)
      return r.body
    }
    const done = finish()
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

  app.delete<{ Params: { name: string } }>('/v1/functions/:name', async (request) => {
    const { name } = request.params
    latest.set(name, ++requests)
    return locks.run(name, async () => {
      if (!await store.deleteFunction(name)) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
      executor.removed(name)
      deps.callStats?.forget(name)
      request.log.info({ fn: name }, 'function deleted')
      return { deleted: name }
    })
  })

  if (builder !== undefined) registerBuildRoutes(app, builder)
  if (deps.callStats !== undefined) registerStatsRoutes(app, store, deps.callStats)

  app.get('/v1/runtimes', async () => ({ runtimes: await store.listRuntimes() }))

  app.put<{ Params: { name: string } }>('/v1/runtimes/:name', async (request, reply) => {
    const { name } = request.params
    assertName('runtime', name)
    if (!deps.runtimeKinds.includes(name)) {
      throw new KdlError('KDL_ERR_BAD_SPEC', `runtime "${name}" is not one this backend can run (${deps.runtimeKinds.join(', ')})`)
    }
    return locks.run(`runtime:${name}`, async () => {
      const current = await store.getRuntime(name)
      const spec = parseRuntimeBody(name, request.body, current)
      await store.putRuntime(spec)
      pools.setRuntime(spec)
      void reply.code(current === undefined ? 201 : 200)
      return spec
    })
  })

  app.get('/v1/pools', async () => ({ pools: pools.snapshot(), starts: pools.starts(), functions: deps.routerSnapshot() }))

  app.get<{ Querystring: { since?: string; function?: string; limit?: string } }>('/v1/events', async (request) => {
    const q = request.query
    return {
      events: deps.events.list({
        since: q.since === undefined ? undefined : Number(q.since),
        fn: q.function,
        limit: q.limit === undefined ? undefined : Math.min(1000, Number(q.limit)),
      }),
    }
  })
}

/** Anything thrown, as the platform's error (a fault of its own is KDL_ERR_INTERNAL). */
function asKdl(err: unknown): KdlError {
  return isKdlError(err) ? err : new KdlError('KDL_ERR_INTERNAL', 'internal error', { cause: err })
}

function decodeArchive(b64: string): Buffer {
  if (!/^[A-Za-z0-9+/=\s]+$/.test(b64)) throw new KdlError('KDL_ERR_BAD_ARCHIVE', 'archive must be base64 of a .tar.gz')
  return Buffer.from(b64, 'base64')
}
