import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { CodeStore } from '../codestore/code-store.js'
import { KdlError } from '../common/errors.js'
import type { EventLog } from '../common/events.js'
import { assertName, functionSpecOf, parseFunctionBody, parseRuntimeBody } from '../common/spec.js'
import type { Store } from '../common/store.js'
import type { FunctionRecord } from '../common/types.js'
import type { Executor } from '../executor/executor.js'
import type { PoolManager } from '../poolmgr/pool-manager.js'
import { KeyedMutex } from './keyed-mutex.js'

export interface ApiDeps {
  store: Store
  codeStore: CodeStore
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
}

/** The management API under `/v1`: functions, runtimes, pools, events. */
export const apiPlugin: FastifyPluginAsync<ApiDeps> = async (app: FastifyInstance, deps: ApiDeps) => {
  const { store, codeStore, executor, pools } = deps
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

  app.put<{ Params: { name: string } }>('/v1/functions/:name', async (request, reply) => {
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

    return locks.run(name, async () => {
      const prev = await store.getFunction(name)
      const now = new Date().toISOString()
      const record: FunctionRecord = {
        name, ...spec, version: (prev?.version ?? 0) + 1, codeHash: code.hash, createdAt: prev?.createdAt ?? now, updatedAt: now,
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
      request.log.info({ fn: name, version: record.version }, 'function deployed')
      void reply.code(prev === undefined ? 201 : 200)
      return view(record)
    })
  })

  app.delete<{ Params: { name: string } }>('/v1/functions/:name', async (request) => {
    const { name } = request.params
    return locks.run(name, async () => {
      if (!await store.deleteFunction(name)) throw new KdlError('KDL_ERR_FN_NOT_FOUND', `function "${name}" is not deployed`)
      executor.removed(name)
      request.log.info({ fn: name }, 'function deleted')
      return { deleted: name }
    })
  })

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

function decodeArchive(b64: string): Buffer {
  if (!/^[A-Za-z0-9+/=\s]+$/.test(b64)) throw new KdlError('KDL_ERR_BAD_ARCHIVE', 'archive must be base64 of a .tar.gz')
  return Buffer.from(b64, 'base64')
}
