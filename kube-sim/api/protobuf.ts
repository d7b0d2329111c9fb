import { ApiError, type KubeObject } from '../types.js'

/**
 * Kubernetes' protobuf encoding, decoded for the kinds kubectl's generators send that way (issue 10):
 * `kubectl create namespace|configmap|secret|serviceaccount|role|rolebinding|clusterrole|clusterrolebinding`, and
 * the Eviction of `kubectl drain`. The
 * envelope is `k8s\0` + `runtime.Unknown{typeMeta, raw}`; `raw` is the object in the field numbers of the API's
 * generated.proto, transcribed below for these kinds only (another kind is refused with 415).
 */
type Field = readonly [name: string, kind: Kind, repeated?: 'repeated']
type Kind = 'string' | 'bytes' | 'int' | 'bool' | 'map' | 'mapBytes' | Schema
interface Schema { [field: number]: Field }

const OWNER_REF: Schema = { 1: ['kind', 'string'], 3: ['name', 'string'], 4: ['uid', 'string'], 5: ['apiVersion', 'string'], 6: ['controller', 'bool'], 7: ['blockOwnerDeletion', 'bool'] }
const META: Schema = {
  1: ['name', 'string'], 2: ['generateName', 'string'], 3: ['namespace', 'string'], 5: ['uid', 'string'], 6: ['resourceVersion', 'string'],
  11: ['labels', 'map'], 12: ['annotations', 'map'], 13: ['ownerReferences', OWNER_REF, 'repeated'], 14: ['finalizers', 'string', 'repeated'],
}
const REF: Schema = { 1: ['name', 'string'] }
const RULE: Schema = { 1: ['verbs', 'string', 'repeated'], 2: ['apiGroups', 'string', 'repeated'], 3: ['resources', 'string', 'repeated'], 4: ['resourceNames', 'string', 'repeated'], 5: ['nonResourceURLs', 'string', 'repeated'] }
const SUBJECT: Schema = { 1: ['kind', 'string'], 2: ['apiGroup', 'string'], 3: ['name', 'string'], 4: ['namespace', 'string'] }
const ROLE_REF: Schema = { 1: ['apiGroup', 'string'], 2: ['kind', 'string'], 3: ['name', 'string'] }
const BINDING: Schema = { 1: ['metadata', META], 2: ['subjects', SUBJECT, 'repeated'], 3: ['roleRef', ROLE_REF] }

const DELETE_OPTIONS: Schema = { 1: ['gracePeriodSeconds', 'int'], 2: ['preconditions', { 1: ['uid', 'string'], 2: ['resourceVersion', 'string'] }], 3: ['orphanDependents', 'bool'], 4: ['propagationPolicy', 'string'], 5: ['dryRun', 'string', 'repeated'] }

const KINDS: Record<string, Schema> = {
  'v1/Binding': { 1: ['metadata', META], 2: ['target', { 1: ['kind', 'string'], 2: ['namespace', 'string'], 3: ['name', 'string'], 4: ['uid', 'string'], 5: ['apiVersion', 'string'] }] },
  'meta.k8s.io/v1/DeleteOptions': DELETE_OPTIONS,
  'v1/DeleteOptions': DELETE_OPTIONS,
  'policy/v1/Eviction': { 1: ['metadata', META], 2: ['deleteOptions', DELETE_OPTIONS] },
  'v1/Namespace': { 1: ['metadata', META], 2: ['spec', { 1: ['finalizers', 'string', 'repeated'] }] },
  'v1/ConfigMap': { 1: ['metadata', META], 2: ['data', 'map'], 3: ['binaryData', 'mapBytes'], 4: ['immutable', 'bool'] },
  'v1/Secret': { 1: ['metadata', META], 2: ['data', 'mapBytes'], 3: ['type', 'string'], 4: ['stringData', 'map'], 5: ['immutable', 'bool'] },
  'v1/ServiceAccount': { 1: ['metadata', META], 2: ['secrets', { 2: ['name', 'string'], 1: ['kind', 'string'], 3: ['namespace', 'string'] }, 'repeated'], 3: ['imagePullSecrets', REF, 'repeated'], 4: ['automountServiceAccountToken', 'bool'] },
  'rbac.authorization.k8s.io/v1/Role': { 1: ['metadata', META], 2: ['rules', RULE, 'repeated'] },
  'rbac.authorization.k8s.io/v1/ClusterRole': { 1: ['metadata', META], 2: ['rules', RULE, 'repeated'] },
  'rbac.authorization.k8s.io/v1/RoleBinding': BINDING,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': BINDING,
}

interface Raw { no: number; wire: number; value: bigint | Buffer }

function varint(buf: Buffer, at: { i: number }): bigint {
  let out = 0n
  let shift = 0n
  for (;;) {
    if (at.i >= buf.length) throw new Error('truncated varint')
    const b = buf[at.i++]!
    out |= BigInt(b & 0x7f) << shift
    if ((b & 0x80) === 0) return out
    shift += 7n
  }
}

function fields(buf: Buffer): Raw[] {
  const out: Raw[] = []
  const at = { i: 0 }
  while (at.i < buf.length) {
    const key = Number(varint(buf, at))
    const no = key >>> 3
    const wire = key & 7
    if (wire === 0) out.push({ no, wire, value: varint(buf, at) })
    else if (wire === 2) {
      const n = Number(varint(buf, at))
      out.push({ no, wire, value: buf.subarray(at.i, at.i + n) })
      at.i += n
    } else if (wire === 1) { out.push({ no, wire, value: buf.subarray(at.i, at.i + 8) }); at.i += 8 }
    else if (wire === 5) { out.push({ no, wire, value: buf.subarray(at.i, at.i + 4) }); at.i += 4 }
    else throw new Error(`unsupported wire type ${wire}`)
  }
  return out
}

function decode(buf: Buffer, schema: Schema): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const f of fields(buf)) {
    const spec = schema[f.no]
    if (spec === undefined) continue
    const [name, kind, repeated] = spec
    let value: unknown
    if (kind === 'map' || kind === 'mapBytes') {
      const entry = fields(f.value as Buffer)
      const k = (entry.find((e) => e.no === 1)?.value as Buffer | undefined)?.toString('utf8') ?? ''
      const v = (entry.find((e) => e.no === 2)?.value as Buffer | undefined) ?? Buffer.alloc(0)
      const map = (out[name] ??= {}) as Record<string, string>
      map[k] = kind === 'map' ? v.toString('utf8') : v.toString('base64')
      continue
    }
    if (kind === 'string') {
      value = (f.value as Buffer).toString('utf8')
      // Go writes every string field; JSON omits the empty ones (`omitempty`): so does this.
      if (value === '' && !repeated) continue
    }
    else if (kind === 'bytes') value = (f.value as Buffer).toString('base64')
    else if (kind === 'int') value = Number(f.value as bigint)
    else if (kind === 'bool') value = (f.value as bigint) !== 0n
    else value = decode(f.value as Buffer, kind)
    if (repeated) ((out[name] ??= []) as unknown[]).push(value)
    else out[name] = value
  }
  return out
}

/** The object in a protobuf request body; 415 for a kind not transcribed here. */
export function decodeProtobuf(body: Buffer): KubeObject {
  if (body.length < 4 || body.subarray(0, 4).toString('latin1') !== 'k8s\0') throw new ApiError(400, 'BadRequest', 'provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]')
  const unknown = decode(body.subarray(4), { 1: ['typeMeta', { 1: ['apiVersion', 'string'], 2: ['kind', 'string'] }], 2: ['raw', 'bytes'] }) as { typeMeta?: { apiVersion?: string; kind?: string }; raw?: string }
  const apiVersion = unknown.typeMeta?.apiVersion ?? ''
  const kind = unknown.typeMeta?.kind ?? ''
  const schema = KINDS[`${apiVersion}/${kind}`]
  if (schema === undefined) {
    throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (the kindling stand-in decodes protobuf for namespaces, configmaps, secrets, serviceaccounts and RBAC objects only, not ${kind}; use a manifest with kubectl apply -f)`)
  }
  const obj = decode(Buffer.from(unknown.raw ?? '', 'base64'), schema)
  return { apiVersion, kind, ...obj, metadata: (obj.metadata ?? {}) as KubeObject['metadata'] }
}
