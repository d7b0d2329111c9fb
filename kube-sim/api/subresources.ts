import type { IncomingMessage, ServerResponse } from 'node:http'
import { labelSelectorString } from '../selectors.js'
import { ApiError, type KubeObject, type ObjectStore } from '../types.js'
import { notFound, objectBody, patched, readObject, type Target } from './crud.js'
import { readBody, sendJson, success } from './http.js'

/**
 * Subresources other than `status` (issue 10): `scale` (an autoscaling/v1 Scale over a workload's replicas),
 * a pod's `binding` (what a scheduler posts: sets `spec.nodeName` once), `eviction` (a graceful delete; disruption
 * budgets are not consulted) and `log` (the text the `logs` hook gives — the kubelet's output; `follow` returns the
 * text so far and ends).
 */
export type LogsHook = (namespace: string, pod: string, container: string | undefined) => string | Promise<string>

function toScale(o: KubeObject): KubeObject {
  let selector = ''
  try { selector = o.spec?.selector ? labelSelectorString(o.spec.selector) : '' } catch { selector = '' }
  return {
    kind: 'Scale', apiVersion: 'autoscaling/v1',
    metadata: { name: o.metadata.name, namespace: o.metadata.namespace, uid: o.metadata.uid, resourceVersion: o.metadata.resourceVersion, creationTimestamp: o.metadata.creationTimestamp },
    spec: { replicas: o.spec?.replicas ?? 0 },
    status: { replicas: o.status?.replicas ?? 0, selector },
  }
}

function current(store: ObjectStore, t: Target): KubeObject {
  const o = store.get(t.type, t.namespace, t.name!)
  if (o === undefined) throw notFound(t)
  return o
}

function writeScale(store: ObjectStore, t: Target, obj: KubeObject, scale: KubeObject): KubeObject {
  const replicas = scale.spec?.replicas
  if (!Number.isInteger(replicas) || replicas < 0) {
    throw new ApiError(422, 'Invalid', `Scale.autoscaling "${t.name}" is invalid: spec.replicas: Invalid value: ${JSON.stringify(replicas)}: must be greater than or equal to 0`, { name: t.name!, kind: 'Scale', causes: [{ reason: 'FieldValueInvalid', field: 'spec.replicas', message: 'must be greater than or equal to 0' }] })
  }
  const next = { ...obj, spec: { ...obj.spec, replicas }, metadata: { ...obj.metadata, resourceVersion: scale.metadata?.resourceVersion || obj.metadata.resourceVersion } }
  return toScale(store.update(t.type, next))
}

export async function scale(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const obj = current(store, t)
  if (req.method === 'GET') { sendJson(res, 200, toScale(obj)); return }
  const text = await readBody(req)
  if (req.method === 'PUT') { sendJson(res, 200, writeScale(store, t, obj, objectBody(text))); return }
  if (req.method === 'PATCH') { sendJson(res, 200, writeScale(store, t, obj, patched(toScale(obj), req.headers['content-type'], text))); return }
  throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
}

export async function binding(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'POST') throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
  const body = await readObject(req)
  const node = (body as { target?: { name?: string } }).target?.name
  if (typeof node !== 'string' || node === '') throw new ApiError(422, 'Invalid', `Binding "${t.name}" is invalid: target.name: Required value`, { name: t.name!, kind: 'Binding', causes: [{ reason: 'FieldValueRequired', field: 'target.name', message: 'Required value' }] })
  const pod = current(store, t)
  if (pod.spec?.nodeName) throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on pods/binding "${t.name}": pod ${t.name} is already assigned to node "${pod.spec.nodeName}"`, { name: t.name!, kind: 'pods/binding' })
  if (pod.metadata.deletionTimestamp) throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on pods/binding "${t.name}": pod ${t.name} is being deleted, cannot be assigned to a host`, { name: t.name!, kind: 'pods/binding' })
  const uid = body.metadata?.uid
  if (uid && uid !== pod.metadata.uid) throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on pods/binding "${t.name}": Precondition failed: UID in precondition: ${uid}, UID in object meta: ${pod.metadata.uid}`)
  store.update(t.type, { ...pod, spec: { ...pod.spec, nodeName: node } })
  sendJson(res, 201, success(t.name!, 'pods'))
}

export async function eviction(store: ObjectStore, t: Target, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'POST') throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
  const body = (await readObject(req)) as KubeObject & { deleteOptions?: { gracePeriodSeconds?: number; preconditions?: { uid?: string; resourceVersion?: string } } }
  current(store, t)
  store.delete(t.type, t.namespace, t.name!, { gracePeriodSeconds: body.deleteOptions?.gracePeriodSeconds, preconditions: body.deleteOptions?.preconditions })
  sendJson(res, 201, success(t.name!, 'pods'))
}

export async function log(store: ObjectStore, t: Target, res: ServerResponse, q: URLSearchParams, hook: LogsHook | undefined): Promise<void> {
  const pod = current(store, t)
  const container = q.get('container') ?? undefined
  const names: string[] = (pod.spec?.containers ?? []).map((c: { name: string }) => c.name)
  if (container === undefined && names.length > 1) {
    throw new ApiError(400, 'BadRequest', `a container name must be specified for pod ${t.name}, choose one of: [${names.join(' ')}]`)
  }
  if (container !== undefined && !names.includes(container) && !(pod.spec?.initContainers ?? []).some((c: { name: string }) => c.name === container)) {
    throw new ApiError(400, 'BadRequest', `container ${container} is not valid for pod ${t.name}`)
  }
  let text = hook === undefined ? '' : await hook(t.namespace!, t.name!, container ?? names[0])
  const tail = q.get('tailLines')
  if (tail !== null && Number(tail) >= 0) {
    const lines = text.split('\n')
    if (lines.at(-1) === '') lines.pop()
    text = lines.slice(Math.max(0, lines.length - Number(tail))).map((l) => `${l}\n`).join('')
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) })
  res.end(text)
}
