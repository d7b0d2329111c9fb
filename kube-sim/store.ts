import { randomUUID } from 'node:crypto'
import { applyDefaults } from './defaults.js'
import { canonical, clone } from './json.js'
import { dependentsOf, orphaned, type Dependent } from './gc.js'
import { apiVersionOf, resourceTypes } from './resources.js'
import { matchesFields, matchesRequirements, parseFieldSelector, parseLabelSelector, type FieldRequirement, type Requirement } from './selectors.js'
import { ApiError, type DeleteOptions, type KubeObject, type ListOptions, type ObjectStore, type ResourceType, type WatchEvent, type WatchEventType, type WatchOptions } from './types.js'
import { invalidError, validateObject, validatePodUpdate } from './validate.js'

/**
 * The stand-in's object store (issue 10): every object in memory, one global resourceVersion counter, a ring of
 * the last `historySize` changes for watches.
 *
 * Watch delivery is synchronous and ordered: a write's event reaches every matching watcher before the write
 * returns, in resourceVersion order. A write made from inside a callback is queued and delivered after the
 * current event has reached every watcher (still before the outermost write returns), so no watcher ever sees
 * versions out of order. A watcher whose selector an object stops (or starts) matching sees DELETED (or ADDED),
 * as the real watch cache reports it.
 *
 * Simplifications, each said where it matters: `Foreground` deletion acts as `Background`; a namespace is removed
 * at once with its contents (no `Terminating` phase); pod spec updates are not restricted to the mutable fields.
 */
export interface MemoryStoreOptions {
  /** Changes kept for watches from an older resourceVersion. @default 1000 */
  historySize?: number
  /** Validate written objects against the published schemas (422 Invalid). @default true */
  validate?: boolean
  /** The next free cluster IP of a new Service (the cluster's service subnet). @default 10.96.x.y, counting */
  allocateServiceIP?: () => string
  /** Interval of BOOKMARK events for watches that allow them. @default 3000 */
  bookmarkIntervalMs?: number
  /** Called with an exception thrown by a watch callback. @default rethrown on a microtask (loud). */
  onCallbackError?: (err: unknown) => void
}

interface Change {
  rv: number
  key: string
  type: WatchEventType
  obj: KubeObject
  prev?: KubeObject | undefined
}

interface Watcher {
  key: string
  namespace: string | undefined
  labels: Requirement[]
  fields: FieldRequirement[]
  onEvent: (e: WatchEvent) => void
  lastRv: number
  stopped: boolean
}

const PROTECTED_NAMESPACES = ['default', 'kube-system', 'kube-public']
const NAME_CHARS = 'bcdfghjklmnpqrstvwxz2456789'
function typeKey(t: Pick<ResourceType, 'group' | 'resource'>): string {
  return `${t.group}/${t.resource}`
}
function objKey(ns: string | undefined, name: string): string {
  return ns === undefined ? name : `${ns}/${name}`
}
function now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z')
}
/** Everything but metadata and status, for `metadata.generation`. */
function specPart(o: KubeObject): string {
  const { metadata: _m, status: _s, ...rest } = o
  return canonical(rest)
}
function withoutVersion(o: KubeObject): string {
  return canonical({ ...o, metadata: { ...o.metadata, resourceVersion: undefined } })
}

export class MemoryStore implements ObjectStore {
  readonly #types: ResourceType[]
  readonly #byKey = new Map<string, ResourceType>()
  readonly #objects = new Map<string, Map<string, KubeObject>>()
  readonly #history: Array<Change | undefined>
  readonly #watchers = new Map<string, Set<Watcher>>()
  readonly #pending: Change[] = []
  readonly #validate: boolean
  readonly #bookmarkMs: number
  readonly #onCallbackError: (err: unknown) => void
  #rv = 0
  #dispatching = false
  #serviceIps = 10
  readonly #allocateServiceIP: () => string

  constructor(opts: MemoryStoreOptions = {}) {
    this.#history = new Array<Change | undefined>(Math.max(1, opts.historySize ?? 1000))
    this.#validate = opts.validate ?? true
    this.#allocateServiceIP = opts.allocateServiceIP ?? (() => {
      const n = this.#serviceIps++
      return `10.96.${n >> 8}.${n & 255}`
    })
    this.#bookmarkMs = opts.bookmarkIntervalMs ?? 3000
    this.#onCallbackError = opts.onCallbackError ?? ((err) => queueMicrotask(() => { throw err }))
    this.#types = resourceTypes()
    for (const t of this.#types) {
      this.#byKey.set(typeKey(t), t)
      this.#objects.set(typeKey(t), new Map())
    }
    const ns = this.#byKey.get('/namespaces')!
    for (const name of ['default', 'kube-system', 'kube-public', 'kube-node-lease']) this.create(ns, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } })
  }

  type(group: string, version: string, resource: string): ResourceType | undefined {
    const t = this.#byKey.get(`${group}/${resource}`)
    return t !== undefined && t.version === version ? t : undefined
  }

  typeOf(apiVersion: string, kind: string): ResourceType | undefined {
    return this.#types.find((t) => t.kind === kind && apiVersionOf(t) === apiVersion)
  }

  types(): readonly ResourceType[] {
    return this.#types
  }

  currentVersion(): string {
    return String(this.#rv)
  }

  get(type: ResourceType, namespace: string | undefined, name: string): KubeObject | undefined {
    const o = this.#bucket(type).get(objKey(type.namespaced ? namespace : undefined, name))
    return o === undefined ? undefined : clone(o)
  }

  list(type: ResourceType, opts: ListOptions = {}): { items: KubeObject[]; resourceVersion: string } {
    const match = this.#matcher(type, opts)
    const hits: Array<[string, KubeObject]> = []
    for (const e of this.#bucket(type)) if (match(e[1])) hits.push(e)
    // etcd answers in key order: namespace, then name.
    hits.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    return { items: hits.map((e) => clone(e[1])), resourceVersion: this.currentVersion() }
  }

  create(type: ResourceType, input: KubeObject): KubeObject {
    const obj = clone(input)
    this.#checkKind(type, obj)
    const meta = (obj.metadata ??= {})
    if (type.namespaced) {
      meta.namespace ??= 'default'
      if (!this.#bucket(this.#byKey.get('/namespaces')!).has(meta.namespace)) {
        throw new ApiError(404, 'NotFound', `namespaces "${meta.namespace}" not found`, { name: meta.namespace, kind: 'namespaces' })
      }
    } else delete meta.namespace
    const bucket = this.#bucket(type)
    if ((meta.name === undefined || meta.name === '') && typeof meta.generateName === 'string' && meta.generateName !== '') {
      const prefix = meta.generateName.slice(0, 58)
      do {
        let suffix = ''
        for (let i = 0; i < 5; i++) suffix += NAME_CHARS[Math.floor(Math.random() * NAME_CHARS.length)]
        meta.name = prefix + suffix
      } while (bucket.has(objKey(meta.namespace, meta.name)))
    }
    // As the real server's create strategies do: the status is the server's (a node registers with its own).
    if (type.subresources.includes('status') && !(type.group === '' && type.resource === 'nodes')) delete obj.status
    applyDefaults(type, obj, true)
    if (type.group === '' && type.resource === 'services' && obj.spec?.type !== 'ExternalName' && obj.spec && obj.spec.clusterIP === undefined) {
      obj.spec.clusterIP = this.#allocateServiceIP()
      obj.spec.clusterIPs = [obj.spec.clusterIP]
    }
    if (this.#validate) validateObject(type, obj)
    else if (typeof meta.name !== 'string' || meta.name === '') throw invalidError(type, '', [{ reason: 'FieldValueRequired', field: 'metadata.name', message: 'Required value: name or generateName is required' }])
    const key = objKey(meta.namespace, meta.name!)
    if (bucket.has(key)) throw new ApiError(409, 'AlreadyExists', `${this.#what(type)} "${meta.name}" already exists`, this.#details(type, meta.name!))
    delete meta.deletionTimestamp
    delete meta.deletionGracePeriodSeconds
    meta.uid = randomUUID()
    meta.creationTimestamp = now()
    meta.generation = 1
    meta.resourceVersion = String(++this.#rv)
    bucket.set(key, obj)
    this.#emit({ rv: this.#rv, key: typeKey(type), type: 'ADDED', obj })
    return clone(obj)
  }

  update(type: ResourceType, input: KubeObject, opts: { subresource?: 'status' } = {}): KubeObject {
    const inMeta = input.metadata ?? {}
    const ns = type.namespaced ? (inMeta.namespace ?? 'default') : undefined
    const name = inMeta.name ?? ''
    const bucket = this.#bucket(type)
    const key = objKey(ns, name)
    const stored = bucket.get(key)
    if (stored === undefined) throw this.#notFound(type, name)
    this.#checkKind(type, input)
    if (inMeta.resourceVersion !== undefined && inMeta.resourceVersion !== '' && inMeta.resourceVersion !== stored.metadata.resourceVersion) throw this.#conflict(type, name)
    let next: KubeObject
    if (opts.subresource === 'status') {
      next = { ...clone(stored), status: clone(input.status) }
      if (input.status === undefined) delete next.status
    } else {
      next = clone(input)
      next.apiVersion = stored.apiVersion
      next.kind = stored.kind
      if (type.subresources.includes('status')) {
        if (stored.status === undefined) delete next.status
        else next.status = clone(stored.status)
      }
      // Set by the server only: what a client sends for these is ignored.
      const keep = ['uid', 'creationTimestamp', 'namespace', 'name', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'generation'] as const
      const meta: Record<string, unknown> = { ...(next.metadata ?? {}) }
      for (const k of keep) {
        if (stored.metadata[k] === undefined) delete meta[k]
        else meta[k] = stored.metadata[k]
      }
      next.metadata = meta
      applyDefaults(type, next, false)
      if (specPart(next) !== specPart(stored)) next.metadata.generation = (stored.metadata.generation ?? 0) + 1
    }
    if (stored.metadata.deletionTimestamp !== undefined) {
      // Finalizers may only be removed from an object being deleted.
      const had = new Set(stored.metadata.finalizers ?? [])
      const added = (next.metadata.finalizers ?? []).filter((f) => !had.has(f))
      if (added.length > 0) throw invalidError(type, name, [{ reason: 'FieldValueForbidden', field: 'metadata.finalizers', message: `Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers ${JSON.stringify(added)}` }])
    }
    next.metadata.resourceVersion = stored.metadata.resourceVersion
    if (withoutVersion(next) === withoutVersion(stored)) return clone(stored)
    if (this.#validate) {
      validateObject(type, next)
      if (type.group === '' && type.resource === 'pods' && opts.subresource !== 'status') validatePodUpdate(stored, next)
    }
    next.metadata.resourceVersion = String(++this.#rv)
    bucket.set(key, next)
    this.#emit({ rv: this.#rv, key: typeKey(type), type: 'MODIFIED', obj: next, prev: stored })
    if (this.#removable(type, next)) return clone(this.#remove(type, next, 'Background'))
    return clone(next)
  }

  delete(type: ResourceType, namespace: string | undefined, name: string, opts: DeleteOptions = {}): KubeObject {
    const ns = type.namespaced ? (namespace ?? 'default') : undefined
    const stored = this.#bucket(type).get(objKey(ns, name))
    if (stored === undefined) throw this.#notFound(type, name)
    if (type.group === '' && type.resource === 'namespaces' && PROTECTED_NAMESPACES.includes(name)) {
      throw new ApiError(403, 'Forbidden', `namespaces "${name}" is forbidden: this namespace may not be deleted`, { name, kind: 'namespaces' })
    }
    const pre = opts.preconditions
    if (pre?.uid !== undefined && pre.uid !== stored.metadata.uid) {
      throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${this.#what(type)} "${name}": Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${stored.metadata.uid}`, this.#details(type, name))
    }
    if (pre?.resourceVersion !== undefined && pre.resourceVersion !== stored.metadata.resourceVersion) {
      throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${this.#what(type)} "${name}": Precondition failed: ResourceVersion in precondition: ${pre.resourceVersion}, ResourceVersion in object meta: ${stored.metadata.resourceVersion}`, this.#details(type, name))
    }
    const policy = opts.propagationPolicy ?? 'Background'
    if (policy === 'Orphan') {
      for (const d of dependentsOf(this.#all(), stored.metadata.uid!, ns)) this.update(d.type, orphaned(d.obj, stored.metadata.uid!))
    }
    const current = this.#bucket(type).get(objKey(ns, name))!
    const graceful = this.#graceful(type, current)
    const hasFinalizers = (current.metadata.finalizers ?? []).length > 0
    if (!graceful && !hasFinalizers) return clone(this.#remove(type, current, policy))

    let grace: number | undefined
    if (graceful) {
      const asked = opts.gracePeriodSeconds ?? current.metadata.deletionGracePeriodSeconds ?? current.spec?.terminationGracePeriodSeconds ?? 30
      grace = Math.max(0, Math.min(asked, current.metadata.deletionGracePeriodSeconds ?? Number.POSITIVE_INFINITY))
    }
    const meta = { ...current.metadata }
    meta.deletionTimestamp ??= new Date(Date.now() + (grace ?? 0) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
    if (grace !== undefined) meta.deletionGracePeriodSeconds = grace
    else meta.deletionGracePeriodSeconds ??= 0
    const next: KubeObject = { ...current, metadata: meta }
    if (this.#removable(type, next)) return clone(this.#remove(type, next, policy))
    if (withoutVersion(next) === withoutVersion(current)) return clone(current)
    meta.resourceVersion = String(++this.#rv)
    this.#bucket(type).set(objKey(ns, name), next)
    this.#emit({ rv: this.#rv, key: typeKey(type), type: 'MODIFIED', obj: next, prev: current })
    return clone(next)
  }

  watch(type: ResourceType, opts: WatchOptions, onEvent: (event: WatchEvent) => void): () => void {
    const labels = parseLabelSelector(opts.labelSelector ?? '')
    const fields = parseFieldSelector(opts.fieldSelector ?? '')
    const w: Watcher = { key: typeKey(type), namespace: type.namespaced ? opts.namespace : undefined, labels, fields, onEvent, lastRv: this.#rv, stopped: false }
    const from = opts.resourceVersion === undefined || opts.resourceVersion === '' || opts.resourceVersion === '0' ? undefined : Number(opts.resourceVersion)
    if (from !== undefined && !Number.isSafeInteger(from)) throw new ApiError(400, 'BadRequest', `invalid resource version: ${opts.resourceVersion}`)
    const oldest = Math.max(1, this.#rv - this.#history.length + 1)
    if (from !== undefined && from + 1 < oldest) throw new ApiError(410, 'Expired', `too old resource version: ${from} (${oldest - 1})`)
    let set = this.#watchers.get(w.key)
    if (set === undefined) this.#watchers.set(w.key, (set = new Set()))
    set.add(w)
    let timer: NodeJS.Timeout | undefined
    const stop = (): void => {
      w.stopped = true
      set.delete(w)
      if (timer !== undefined) clearInterval(timer)
    }
    if (opts.allowWatchBookmarks === true) {
      timer = setInterval(() => {
        if (!w.stopped) this.#call(w, { type: 'BOOKMARK', object: { apiVersion: apiVersionOf(type), kind: type.kind, metadata: { resourceVersion: this.currentVersion() } } })
      }, this.#bookmarkMs)
      timer.unref()
    }
    const upTo = w.lastRv
    // Writes made by the callback during the replay wait in the queue, behind it.
    this.#dispatch(() => {
      if (from === undefined) {
        for (const o of this.list(type, opts).items) {
          if (w.stopped) break
          this.#call(w, { type: 'ADDED', object: o })
        }
      } else {
        for (let rv = Math.max(from + 1, oldest); rv <= upTo && !w.stopped; rv++) {
          const c = this.#history[(rv - 1) % this.#history.length]
          if (c !== undefined && c.key === w.key) this.#deliver(w, c)
        }
      }
    })
    return stop
  }

  // ---- internals

  #bucket(type: ResourceType): Map<string, KubeObject> {
    const b = this.#objects.get(typeKey(type))
    if (b === undefined) throw new ApiError(404, 'NotFound', `the server could not find the requested resource (${type.resource})`)
    return b
  }

  *#all(): Iterable<Dependent> {
    for (const t of this.#types) for (const obj of this.#bucket(t).values()) yield { type: t, obj }
  }

  #what(type: ResourceType): string {
    return type.group === '' ? type.resource : `${type.resource}.${type.group}`
  }

  #details(type: ResourceType, name: string): { name: string; group?: string; kind: string } {
    return { name, ...(type.group === '' ? {} : { group: type.group }), kind: type.resource }
  }

  #notFound(type: ResourceType, name: string): ApiError {
    return new ApiError(404, 'NotFound', `${this.#what(type)} "${name}" not found`, this.#details(type, name))
  }

  #conflict(type: ResourceType, name: string): ApiError {
    return new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${this.#what(type)} "${name}": the object has been modified; please apply your changes to the latest version and try again`, this.#details(type, name))
  }

  #checkKind(type: ResourceType, obj: KubeObject): void {
    const want = apiVersionOf(type)
    if (obj.apiVersion !== undefined && obj.apiVersion !== want) throw new ApiError(400, 'BadRequest', `the API version in the data (${obj.apiVersion}) does not match the expected API version (${want})`)
    if (obj.kind !== undefined && obj.kind !== type.kind) throw new ApiError(400, 'BadRequest', `the kind in the data (${obj.kind}) does not match the expected kind (${type.kind})`)
    obj.apiVersion = want
    obj.kind = type.kind
  }

  /** A pod bound to a node terminates gracefully: its kubelet removes it (a delete with grace 0). */
  #graceful(type: ResourceType, obj: KubeObject): boolean {
    return type.group === '' && type.resource === 'pods' && typeof obj.spec?.nodeName === 'string' && obj.spec.nodeName !== ''
      && obj.status?.phase !== 'Succeeded' && obj.status?.phase !== 'Failed'
  }

  #removable(type: ResourceType, obj: KubeObject): boolean {
    if (obj.metadata.deletionTimestamp === undefined || (obj.metadata.finalizers ?? []).length > 0) return false
    return !this.#graceful(type, obj) || obj.metadata.deletionGracePeriodSeconds === 0
  }

  #remove(type: ResourceType, obj: KubeObject, policy: NonNullable<DeleteOptions['propagationPolicy']>): KubeObject {
    const ns = obj.metadata.namespace
    const name = obj.metadata.name!
    if (type.group === '' && type.resource === 'namespaces') {
      // No Terminating phase: the namespace's objects are deleted (gracefully where they say so), then it goes.
      for (const t of this.#types) {
        if (!t.namespaced) continue
        for (const o of [...this.#bucket(t).values()]) {
          if (o.metadata.namespace === name && this.#bucket(t).has(objKey(name, o.metadata.name!))) this.delete(t, name, o.metadata.name!)
        }
      }
    }
    const gone: KubeObject = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.#rv) } }
    this.#bucket(type).delete(objKey(ns, name))
    this.#emit({ rv: this.#rv, key: typeKey(type), type: 'DELETED', obj: gone })
    if (policy !== 'Orphan') {
      for (const d of dependentsOf(this.#all(), obj.metadata.uid!, ns)) {
        const m = d.obj.metadata
        if (this.#bucket(d.type).has(objKey(m.namespace, m.name!))) this.delete(d.type, m.namespace, m.name!, { propagationPolicy: 'Background' })
      }
    }
    return gone
  }

  #matcher(type: ResourceType, opts: ListOptions): (o: KubeObject) => boolean {
    const labels = parseLabelSelector(opts.labelSelector ?? '')
    const fields = parseFieldSelector(opts.fieldSelector ?? '')
    const ns = type.namespaced ? opts.namespace : undefined
    return (o) => (ns === undefined || o.metadata.namespace === ns) && matchesRequirements(labels, o.metadata.labels) && matchesFields(fields, o)
  }

  #emit(c: Change): void {
    this.#history[(c.rv - 1) % this.#history.length] = c
    if (!this.#watchers.has(c.key)) return
    this.#pending.push(c)
    this.#dispatch(() => undefined)
  }

  /** Runs `first`, then delivers queued changes in order — unless a dispatch is under way (it will deliver them). */
  #dispatch(first: () => void): void {
    if (this.#dispatching) { first(); return }
    this.#dispatching = true
    try {
      first()
      for (let next = this.#pending.shift(); next !== undefined; next = this.#pending.shift()) {
        const set = this.#watchers.get(next.key)
        if (set === undefined) continue
        for (const w of [...set]) if (!w.stopped && next.rv > w.lastRv) this.#deliver(w, next)
      }
    } finally {
      this.#dispatching = false
    }
  }

  #matches(w: Watcher, o: KubeObject): boolean {
    return (w.namespace === undefined || o.metadata.namespace === w.namespace) && matchesRequirements(w.labels, o.metadata.labels) && matchesFields(w.fields, o)
  }

  #deliver(w: Watcher, c: Change): void {
    w.lastRv = Math.max(w.lastRv, c.rv)
    const now = this.#matches(w, c.obj)
    const before = c.prev !== undefined && this.#matches(w, c.prev)
    let type: WatchEventType | undefined
    if (c.type === 'MODIFIED') type = now && before ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined
    else if (now) type = c.type
    if (type !== undefined) this.#call(w, { type, object: clone(c.obj) })
  }

  #call(w: Watcher, e: WatchEvent): void {
    try {
      w.onEvent(e)
    } catch (err) {
      this.#onCallbackError(err)
    }
  }
}
