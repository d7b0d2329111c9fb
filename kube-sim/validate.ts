import { Namespace } from 'kubernetes-models/v1/Namespace'
import { Pod } from 'kubernetes-models/v1/Pod'
import { Node } from 'kubernetes-models/v1/Node'
import { Service } from 'kubernetes-models/v1/Service'
import { Event } from 'kubernetes-models/v1/Event'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Secret } from 'kubernetes-models/v1/Secret'
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount'
import { Endpoints } from 'kubernetes-models/v1/Endpoints'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { ReplicaSet } from 'kubernetes-models/apps/v1/ReplicaSet'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import { Lease } from 'kubernetes-models/coordination.k8s.io/v1/Lease'
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role'
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding'
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole'
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { canonical, clone } from './json.js'
import { matchesLabelSelector, type LabelSelector } from './selectors.js'
import { ApiError, type KubeObject, type ResourceType } from './types.js'

/**
 * Validation of written objects (issue 10): the published OpenAPI schema of the kind (through `kubernetes-models`),
 * then the handful of the API server's own rules that clients hit (names, a container's image, a workload's selector
 * matching its template), answered as the API server answers: 422 Invalid, `<Kind> "<name>" is invalid: <field>:
 * <message>` with `details.causes`.
 */
export interface Cause {
  reason: 'FieldValueInvalid' | 'FieldValueRequired' | 'FieldValueDuplicate' | 'FieldValueNotSupported' | 'FieldValueForbidden'
  field: string
  message: string
}

type Validator = (data: never) => { validate(): void }
const MODELS: Record<string, Validator> = {
  'v1/Namespace': (d) => new Namespace(d), 'v1/Pod': (d) => new Pod(d), 'v1/Node': (d) => new Node(d),
  'v1/Service': (d) => new Service(d), 'v1/Event': (d) => new Event(d), 'v1/ConfigMap': (d) => new ConfigMap(d),
  'v1/Secret': (d) => new Secret(d), 'v1/ServiceAccount': (d) => new ServiceAccount(d), 'v1/Endpoints': (d) => new Endpoints(d),
  'apps/v1/Deployment': (d) => new Deployment(d), 'apps/v1/ReplicaSet': (d) => new ReplicaSet(d), 'apps/v1/DaemonSet': (d) => new DaemonSet(d),
  'coordination.k8s.io/v1/Lease': (d) => new Lease(d),
  'rbac.authorization.k8s.io/v1/Role': (d) => new Role(d), 'rbac.authorization.k8s.io/v1/RoleBinding': (d) => new RoleBinding(d),
  'rbac.authorization.k8s.io/v1/ClusterRole': (d) => new ClusterRole(d), 'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (d) => new ClusterRoleBinding(d),
  'policy/v1/PodDisruptionBudget': (d) => new PodDisruptionBudget(d), 'networking.k8s.io/v1/NetworkPolicy': (d) => new NetworkPolicy(d),
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/

const SUBDOMAIN_MSG = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
const LABEL_MSG = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
const DNS1035_MSG = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"

/** The Go-ish rendering of a bad value in an Invalid message, as the real server prints strings and numbers. */
function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : v === undefined ? 'null' : typeof v === 'object' ? JSON.stringify(v) : String(v)
}
export function invalid(field: string, value: unknown, why: string): Cause {
  return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown(value)}: ${why}` }
}
export function required(field: string, why?: string): Cause {
  return { reason: 'FieldValueRequired', field, message: why === undefined ? 'Required value' : `Required value: ${why}` }
}

/** The 422 the API server answers for these causes (`details.kind` is the Kind, `group` its group, as the real one's). */
export function invalidError(type: Pick<ResourceType, 'group' | 'kind'>, name: string, causes: Cause[]): ApiError {
  const parts = causes.map((c) => `${c.field}: ${c.message}`)
  const text = parts.length === 1 ? parts[0]! : `[${parts.join(', ')}]`
  return new ApiError(422, 'Invalid', `${type.kind} "${name}" is invalid: ${text}`, { name, ...(type.group === '' ? {} : { group: type.group }), kind: type.kind, causes })
}

/** `/spec/containers/0/image` → `spec.containers[0].image`. */
function fieldPath(pointer: string, extra?: string): string {
  const segs = pointer.split('/').filter((s) => s !== '').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
  if (extra !== undefined) segs.push(extra)
  let out = ''
  for (const s of segs) out += /^\d+$/.test(s) ? `[${s}]` : out === '' ? s : `.${s}`
  return out
}

function valueAt(obj: unknown, pointer: string): unknown {
  let cur = obj
  for (const s of pointer.split('/').filter((x) => x !== '')) {
    if (cur === null || typeof cur !== 'object') return undefined
    cur = (cur as Record<string, unknown>)[s]
  }
  return cur
}

interface AjvError { instancePath: string; keyword: string; params: Record<string, unknown>; message?: string }

function schemaCauses(type: ResourceType, obj: KubeObject): Cause[] {
  const make = MODELS[`${type.group === '' ? '' : `${type.group}/`}${type.version}/${type.kind}`]
  if (make === undefined) return []
  try {
    const { apiVersion: _a, kind: _k, ...data } = obj
    make(data as never).validate()
    return []
  } catch (err) {
    const errors = (err as { errors?: AjvError[] }).errors
    if (!Array.isArray(errors)) throw err
    const out: Cause[] = []
    for (const e of errors) {
      if (e.keyword === 'required') out.push(required(fieldPath(e.instancePath, String(e.params.missingProperty))))
      else if (e.keyword === 'enum') out.push({ reason: 'FieldValueNotSupported', field: fieldPath(e.instancePath), message: `Unsupported value: ${shown(valueAt(obj, e.instancePath))}: supported values: ${((e.params.allowedValues as unknown[]) ?? []).map(shown).join(', ')}` })
      else out.push(invalid(fieldPath(e.instancePath), valueAt(obj, e.instancePath), e.message ?? e.keyword))
    }
    // oneOf/anyOf branches repeat the same place: keep the first cause per field.
    return out.filter((c, i) => out.findIndex((d) => d.field === c.field) === i)
  }
}

function nameCauses(type: ResourceType, name: string): Cause[] {
  if (name === '') return [required('metadata.name', 'name or generateName is required')]
  if (type.group === 'rbac.authorization.k8s.io') {
    return name === '.' || name === '..' || /[/%]/.test(name) ? [invalid('metadata.name', name, 'may not contain \'/\' or \'%\'')] : []
  }
  if (type.resource === 'namespaces') return DNS1123_LABEL.test(name) && name.length <= 63 ? [] : [invalid('metadata.name', name, LABEL_MSG)]
  if (type.resource === 'services') return DNS1035_LABEL.test(name) && name.length <= 63 ? [] : [invalid('metadata.name', name, DNS1035_MSG)]
  if (!DNS1123_SUBDOMAIN.test(name)) return [invalid('metadata.name', name, SUBDOMAIN_MSG)]
  if (name.length > 253) return [invalid('metadata.name', name, 'must be no more than 253 characters')]
  return []
}

function labelCauses(field: string, labels: unknown): Cause[] {
  if (labels === undefined || labels === null || typeof labels !== 'object') return []
  const out: Cause[] = []
  for (const [k, v] of Object.entries(labels as Record<string, unknown>)) {
    const slash = k.lastIndexOf('/')
    const namePart = slash < 0 ? k : k.slice(slash + 1)
    const prefix = slash < 0 ? undefined : k.slice(0, slash)
    if (!QUALIFIED_NAME.test(namePart) || namePart.length > 63 || (prefix !== undefined && !DNS1123_SUBDOMAIN.test(prefix))) {
      out.push(invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"))
    }
    if (typeof v === 'string' && (!LABEL_VALUE.test(v) || v.length > 63)) {
      out.push(invalid(field, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
    }
  }
  return out
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function podSpecCauses(prefix: string, spec: any): Cause[] {
  if (spec === null || typeof spec !== 'object') return []
  const out: Cause[] = []
  if (!Array.isArray(spec.containers) || spec.containers.length === 0) out.push(required(`${prefix}.containers`))
  const seen = new Set<string>()
  for (const [list, items] of [['containers', spec.containers], ['initContainers', spec.initContainers]] as const) {
    if (!Array.isArray(items)) continue
    items.forEach((c: Record<string, unknown>, i: number) => {
      const at = `${prefix}.${list}[${i}]`
      if (typeof c.name === 'string') {
        if (!DNS1123_LABEL.test(c.name)) out.push(invalid(`${at}.name`, c.name, LABEL_MSG))
        else if (seen.has(c.name)) out.push({ reason: 'FieldValueDuplicate', field: `${at}.name`, message: `Duplicate value: ${shown(c.name)}` })
        seen.add(c.name)
      }
      if (c.image === undefined || c.image === '') out.push(required(`${at}.image`))
      if (Array.isArray(c.ports)) {
        c.ports.forEach((p: Record<string, unknown>, j: number) => {
          if (typeof p.containerPort === 'number' && (p.containerPort < 1 || p.containerPort > 65535)) out.push(invalid(`${at}.ports[${j}].containerPort`, p.containerPort, 'must be between 1 and 65535, inclusive'))
        })
      }
    })
  }
  return out
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function kindCauses(type: ResourceType, obj: any): Cause[] {
  const out: Cause[] = []
  if (type.group === '' && type.resource === 'pods') out.push(...podSpecCauses('spec', obj.spec))
  if (type.group === 'apps' && obj.spec !== null && typeof obj.spec === 'object') {
    const spec = obj.spec
    if (typeof spec.replicas === 'number' && spec.replicas < 0) out.push(invalid('spec.replicas', spec.replicas, 'must be greater than or equal to 0'))
    out.push(...labelCauses('spec.template.labels', spec.template?.metadata?.labels))
    out.push(...podSpecCauses('spec.template.spec', spec.template?.spec))
    const sel = spec.selector as LabelSelector | undefined
    if (sel !== undefined && sel !== null && typeof sel === 'object') {
      if (Object.keys(sel.matchLabels ?? {}).length === 0 && (sel.matchExpressions ?? []).length === 0) out.push(invalid('spec.selector', sel, 'empty selector is invalid for deployment'))
      else {
        const labels = spec.template?.metadata?.labels as Record<string, string> | undefined
        let ok = false
        try { ok = matchesLabelSelector(sel, labels) } catch { ok = false }
        if (!ok) out.push(invalid('spec.template.metadata.labels', labels ?? {}, '`selector` does not match template `labels`'))
      }
    }
  }
  return out
}

/**
 * Checks an object about to be written; throws the 422. `obj.metadata.name` is the final name (generateName applied).
 */
export function validateObject(type: ResourceType, obj: KubeObject): void {
  const name = typeof obj.metadata?.name === 'string' ? obj.metadata.name : ''
  const causes = [...nameCauses(type, name), ...labelCauses('metadata.labels', obj.metadata?.labels), ...schemaCauses(type, obj)]
  if (causes.length === 0) causes.push(...kindCauses(type, obj))
  if (causes.length > 0) throw invalidError(type, name, causes)
}

const POD_UPDATE_MSG = 'pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)'

/**
 * The real server's rule for pod updates: the spec is immutable but for the images, `activeDeadlineSeconds`,
 * added tolerations, the grace period and removed scheduling gates. One stand-in exception: `spec.nodeName` may be
 * set once on an unbound pod, which is how the in-process scheduler binds (a client binds through `pods/binding`).
 */
export function validatePodUpdate(old: KubeObject, next: KubeObject): void {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const a: any = clone(old.spec ?? {})
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const b: any = clone(next.spec ?? {})
  for (const list of ['containers', 'initContainers']) {
    if (Array.isArray(a[list]) && Array.isArray(b[list]) && a[list].length === b[list].length) {
      b[list].forEach((c: Record<string, unknown>, i: number) => { if (c && typeof c === 'object') c.image = a[list][i]?.image })
    }
  }
  for (const f of ['activeDeadlineSeconds', 'terminationGracePeriodSeconds']) { delete a[f]; delete b[f] }
  const ta: unknown[] = a.tolerations ?? []
  const tb: unknown[] = b.tolerations ?? []
  if (tb.length >= ta.length && ta.every((x, i) => canonical(x) === canonical(tb[i]))) { delete a.tolerations; delete b.tolerations }
  const ga: unknown[] = a.schedulingGates ?? []
  const gb: unknown[] = b.schedulingGates ?? []
  if (gb.every((g) => ga.some((x) => canonical(x) === canonical(g)))) { delete a.schedulingGates; delete b.schedulingGates }
  if ((a.nodeName === undefined || a.nodeName === '') && typeof b.nodeName === 'string') { delete a.nodeName; delete b.nodeName }
  if (canonical(a) !== canonical(b)) {
    throw invalidError({ group: '', kind: 'Pod' }, old.metadata.name ?? '', [{ reason: 'FieldValueForbidden', field: 'spec', message: `Forbidden: ${POD_UPDATE_MSG}` }])
  }
}
