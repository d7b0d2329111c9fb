import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { applyDefaults } from '../defaults.js'
import { apiVersionOf } from '../resources.js'
import { toTable, wantsTable } from '../table.js'
import { ApiError, type DeleteOptions, type KubeObject, type ObjectStore, type ResourceType } from '../types.js'
import { validateObject } from '../validate.js'
import { flag, intParam, parseJson, readBody, readRaw, sendJson } from './http.js'
import { jsonPatch, mergePatch, patchTypeOf, strategicMergePatch } from './patch.js'
import { decodeProtobuf } from './protobuf.js'
import { streamWatch } from './watch.js'

/**
 * The verbs on a collection and on one object (issue 10): list (+ watch), create, get, update, patch (merge, JSON,
 * strategic, server-side apply as create-or-merge), delete, deletecollection; `?dryRun=All` answers what the write
 * would give and stores nothing. `?limit=` is accepted and everything is returned, with no `continue` token.
 */
export interface Target {
  type: ResourceType
  namespace: string | undefined
  name: string | undefined
  sub: string | undefined
}

export function notFound(t: Target): ApiError {
  const what = t.type.group === '' ? t.type.resource : `${t.type.resource}.${t.type.group}`
  return new ApiError(404, 'NotFound', `${what} "${t.name}" not found`, { name: t.name ?? '', ...(t.type.group === '' ? {} : { group: t.type.group }), kind: t.type.resource })
}

export function objectBody(text: string, contentType?: string): KubeObject {
  const body = parseJson(text, /^application\/yaml\b/i.test(contentType ?? ''))
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ApiError(400, 'BadRequest', 'the body of the request was in an unknown format')
  const obj = body as KubeObject
  obj.metadata ??= {}
  return obj
}

/** A create's or update's body: JSON, YAML or protobuf by its content type. */
export async function readObject(req: IncomingMessage): Promise<KubeObject> {
  const ct = req.headers['content-type'] ?? ''
  const raw = await readRaw(req)
  if (/^application\/vnd\.kubernetes\.protobuf\b/i.test(ct)) return decodeProtobuf(raw)
  return objectBody(raw.toString('utf8'), ct)
}

function dryRun(q: URLSearchParams): boolean {
  const v = q.getAll('dryRun')
  if (v.some((x) => x !== 'All')) throw new ApiError(400, 'BadRequest', `invalid dry run option: ${v.join(',')}; supported: All`)
  return v.length > 0
}

function placed(t: Target, obj: KubeObject): KubeObject {
  if (t.type.namespaced) {
    if (obj.metadata.namespace !== undefined && obj.metadata.namespace !== '' && obj.metadata.namespace !== t.namespace) {
      throw new ApiError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request')
    }
    obj.metadata.namespace = t.namespace
  }
  return obj
}

export function list(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): void {
  if (flag(q, 'watch')) { streamWatch(store, t.type, t.namespace, req, res, q); return }
  intParam(q, 'limit')
  const { items, resourceVersion } = store.list(t.type, { namespace: t.namespace, labelSelector: q.get('labelSelector') ?? undefined, fieldSelector: q.get('fieldSelector') ?? undefined })
  if (wantsTable(req.headers.accept)) { sendJson(res, 200, toTable(t.type, items, resourceVersion, q.get('includeObject') ?? undefined)); return }
  sendJson(res, 200, { kind: t.type.listKind, apiVersion: apiVersionOf(t.type), metadata: { resourceVersion }, items })
}

export function get(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): void {
  const obj = store.get(t.type, t.namespace, t.name!)
  if (obj === undefined) throw notFound(t)
  if (wantsTable(req.headers.accept)) { sendJson(res, 200, toTable(t.type, [obj], obj.metadata.resourceVersion ?? '', q.get('includeObject') ?? undefined)); return }
  sendJson(res, 200, obj)
}

/** What a create would store, without storing it (dry run). */
function dryCreate(store: ObjectStore, t: Target, obj: KubeObject): KubeObject {
  const o = structuredClone(obj)
  o.apiVersion = apiVersionOf(t.type)
  o.kind = t.type.kind
  if (t.type.namespaced && store.get(store.type('', 'v1', 'namespaces')!, undefined, t.namespace!) === undefined) {
    throw new ApiError(404, 'NotFound', `namespaces "${t.namespace}" not found`, { name: t.namespace!, kind: 'namespaces' })
  }
  if (!o.metadata.name && o.metadata.generateName) o.metadata.name = `${o.metadata.generateName}${randomUUID().slice(0, 5)}`
  applyDefaults(t.type, o, true)
  validateObject(t.type, o)
  if (store.get(t.type, t.namespace, o.metadata.name!) !== undefined) throw new ApiError(409, 'AlreadyExists', `${t.type.resource} "${o.metadata.name}" already exists`)
  o.metadata.uid = randomUUID()
  o.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z')
  return o
}

/** What an update would store (dry run): the checks the store makes, nothing stored. */
function dryUpdate(store: ObjectStore, t: Target, obj: KubeObject): KubeObject {
  const cur = store.get(t.type, t.namespace, t.name!)
  if (cur === undefined) throw notFound(t)
  if (obj.metadata.resourceVersion && obj.metadata.resourceVersion !== cur.metadata.resourceVersion) {
    throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${t.type.resource} "${t.name}": the object has been modified; please apply your changes to the latest version and try again`)
  }
  const o = t.sub === 'status' ? { ...cur, status: obj.status } : { ...structuredClone(obj), metadata: { ...obj.metadata, uid: cur.metadata.uid, creationTimestamp: cur.metadata.creationTimestamp, resourceVersion: cur.metadata.resourceVersion } }
  applyDefaults(t.type, o, false)
  validateObject(t.type, o)
  return o
}

export async function create(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  if (t.type.namespaced && t.namespace === undefined) throw new ApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`)
  const obj = placed(t, await readObject(req))
  sendJson(res, 201, dryRun(q) ? dryCreate(store, t, obj) : store.create(t.type, obj))
}

export function write(store: ObjectStore, t: Target, obj: KubeObject, dry: boolean): KubeObject {
  if (obj.metadata.name !== undefined && obj.metadata.name !== t.name) throw new ApiError(400, 'BadRequest', `the name of the object (${obj.metadata.name}) does not match the name on the URL (${t.name})`)
  obj.metadata.name = t.name
  placed(t, obj)
  if (dry) return dryUpdate(store, t, obj)
  return store.update(t.type, obj, t.sub === 'status' ? { subresource: 'status' } : {})
}

export async function update(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  const obj = await readObject(req)
  sendJson(res, 200, write(store, t, obj, dryRun(q)))
}

/** The patched document; `undefined` for an apply of an object that does not exist yet. */
export function patched(current: KubeObject, contentType: string | undefined, text: string): KubeObject {
  const kind = patchTypeOf(contentType)
  if (kind === undefined) throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json`)
  if (kind === 'json') return jsonPatch(current, parseJson(text))
  const body = parseJson(text, kind === 'apply')
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ApiError(400, 'BadRequest', 'the patch is not an object')
  return kind === 'merge' ? mergePatch(current, body) : strategicMergePatch(current, body)
}

export async function patch(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  const text = await readBody(req)
  const dry = dryRun(q)
  const current = store.get(t.type, t.namespace, t.name!)
  if (current === undefined) {
    if (patchTypeOf(req.headers['content-type']) !== 'apply' || t.sub !== undefined) throw notFound(t)
    if (q.get('fieldManager') === null) throw new ApiError(400, 'BadRequest', 'PATCH, application/apply-patch+yaml requires a fieldManager')
    const obj = placed(t, objectBody(text, 'application/yaml'))
    if (obj.metadata.name !== t.name) throw new ApiError(400, 'BadRequest', `the name of the object (${obj.metadata.name}) does not match the name on the URL (${t.name})`)
    sendJson(res, 201, dry ? dryCreate(store, t, obj) : store.create(t.type, obj))
    return
  }
  const next = patched(current, req.headers['content-type'], text)
  sendJson(res, 200, write(store, t, next, dry))
}

interface DeleteRequest extends DeleteOptions { dryRun: boolean }

/** DeleteOptions from the body (JSON or protobuf) and the query, the query winning. */
async function deleteOptions(req: IncomingMessage, q: URLSearchParams): Promise<DeleteRequest> {
  const raw = await readRaw(req)
  const body = (raw.length === 0 ? {} : /^application\/vnd\.kubernetes\.protobuf\b/i.test(req.headers['content-type'] ?? '') ? decodeProtobuf(raw) : parseJson(raw.toString('utf8')) ?? {}) as Record<string, unknown>
  const grace = intParam(q, 'gracePeriodSeconds') ?? (typeof body.gracePeriodSeconds === 'number' ? body.gracePeriodSeconds : undefined)
  let policy = (q.get('propagationPolicy') ?? body.propagationPolicy) as DeleteOptions['propagationPolicy'] | undefined
  const orphan = q.get('orphanDependents') ?? body.orphanDependents
  if (policy === undefined && (orphan === true || orphan === 'true')) policy = 'Orphan'
  if (policy !== undefined && !['Orphan', 'Background', 'Foreground'].includes(policy)) {
    throw new ApiError(422, 'Invalid', `DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "${policy}": supported values: "Foreground", "Background", "Orphan", "nil"`)
  }
  const pre = body.preconditions as DeleteOptions['preconditions']
  const bodyDry = Array.isArray(body.dryRun) ? (body.dryRun as string[]) : []
  if (bodyDry.some((x) => x !== 'All')) throw new ApiError(400, 'BadRequest', `invalid dry run option: ${bodyDry.join(',')}; supported: All`)
  return { gracePeriodSeconds: grace, propagationPolicy: policy, preconditions: pre, dryRun: dryRun(q) || bodyDry.length > 0 }
}

export async function remove(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  const opts = await deleteOptions(req, q)
  if (opts.dryRun) {
    const cur = store.get(t.type, t.namespace, t.name!)
    if (cur === undefined) throw notFound(t)
    sendJson(res, 200, cur)
    return
  }
  sendJson(res, 200, store.delete(t.type, t.namespace, t.name!, opts))
}

export async function removeCollection(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  const opts = await deleteOptions(req, q)
  const dry = opts.dryRun
  const { items } = store.list(t.type, { namespace: t.namespace, labelSelector: q.get('labelSelector') ?? undefined, fieldSelector: q.get('fieldSelector') ?? undefined })
  const out: KubeObject[] = []
  for (const o of items) {
    if (dry) { out.push(o); continue }
    try {
      out.push(store.delete(t.type, o.metadata.namespace, o.metadata.name!, opts))
    } catch (err) {
      // Gone meanwhile (a dependent of one deleted before it): nothing to delete.
      if (!(err instanceof ApiError && err.code === 404)) throw err
    }
  }
  sendJson(res, 200, { kind: t.type.listKind, apiVersion: apiVersionOf(t.type), metadata: { resourceVersion: store.currentVersion() }, items: out })
}
