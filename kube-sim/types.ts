/**
 * The cluster stand-in's in-process contract (issue 10): one object store that the HTTP API (api-server.ts) serves
 * to real clients, and that the controllers, the scheduler and the kubelets of `kindling kube-sim` use directly —
 * as a real control plane's components use the API server, but without a network hop.
 *
 * Semantics follow the Kubernetes API conventions: every write bumps one global `resourceVersion` (a decimal
 * string), `uid` and `creationTimestamp` are the server's, `generateName` makes a name, `metadata.generation`
 * counts changes of everything but `status` and `metadata`, a write whose `metadata.resourceVersion` is set and
 * stale is a 409 Conflict, and deletion is graceful where the object says so (pods on a node, finalizers).
 */

export interface OwnerReference {
  apiVersion: string
  kind: string
  name: string
  uid: string
  controller?: boolean
  blockOwnerDeletion?: boolean
}

export interface ObjectMeta {
  name?: string
  generateName?: string
  namespace?: string
  uid?: string
  resourceVersion?: string
  generation?: number
  creationTimestamp?: string
  deletionTimestamp?: string
  deletionGracePeriodSeconds?: number
  labels?: Record<string, string>
  annotations?: Record<string, string>
  ownerReferences?: OwnerReference[]
  finalizers?: string[]
  [field: string]: unknown
}

/** Any object the stand-in stores. `spec` and `status` are whatever the kind's published schema says. */
export interface KubeObject {
  apiVersion: string
  kind: string
  metadata: ObjectMeta
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec?: any
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  status?: any
  [field: string]: unknown
}

/** One kind the stand-in serves, as discovery describes it. */
export interface ResourceType {
  /** '' for the core group. */
  group: string
  version: string
  /** The plural in URLs: `pods`, `deployments`. */
  resource: string
  kind: string
  listKind: string
  singular: string
  namespaced: boolean
  shortNames?: string[]
  verbs: string[]
  /** Subresources served under `/<resource>/<name>/<sub>`. */
  subresources: Array<'status' | 'scale' | 'binding' | 'eviction' | 'log'>
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR'

export interface WatchEvent {
  type: WatchEventType
  object: KubeObject
}

export interface ListOptions {
  /** Absent: every namespace (or a cluster-scoped kind). */
  namespace?: string | undefined
  /** The API's label selector syntax: `a=b,c!=d,e in (f,g),!h,i`. */
  labelSelector?: string | undefined
  /** `metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase` (pods), with `=`, `==`, `!=`. */
  fieldSelector?: string | undefined
}

export interface WatchOptions extends ListOptions {
  /** Events after this version; absent: the current state as ADDED events, then changes. */
  resourceVersion?: string | undefined
  /** BOOKMARK events carrying the current resourceVersion, every few seconds. */
  allowWatchBookmarks?: boolean | undefined
}

export interface DeleteOptions {
  gracePeriodSeconds?: number | undefined
  /** Default: `Background` (dependents are collected after the owner goes); `Orphan` clears their owner reference. */
  propagationPolicy?: 'Orphan' | 'Background' | 'Foreground' | undefined
  preconditions?: { uid?: string; resourceVersion?: string } | undefined
}

/** What a failed operation answers, as a `Status` object (`reason`: NotFound, AlreadyExists, Conflict, Invalid, Gone, BadRequest…). */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: { name?: string; group?: string; kind?: string; causes?: Array<{ reason?: string; message: string; field?: string }> },
  ) {
    super(message)
    this.name = 'ApiError'
  }

  /** The error as the API server writes it. */
  status(): KubeObject {
    return {
      apiVersion: 'v1', kind: 'Status', metadata: {}, status: 'Failure',
      message: this.message, reason: this.reason, code: this.code,
      ...(this.details === undefined ? {} : { details: this.details }),
    }
  }
}

/**
 * The object store. Every method is synchronous on the stand-in's one event loop and returns copies: a caller
 * that changes what it got changes nothing stored. Writes are validated against the kind's published schema
 * (422 Invalid naming the field) and notify watchers in resourceVersion order.
 */
export interface ObjectStore {
  /** The kind served at `group/version/resource`, or undefined. */
  type(group: string, version: string, resource: string): ResourceType | undefined
  /** The kind of `apiVersion` + `kind` (as an object names itself), or undefined. */
  typeOf(apiVersion: string, kind: string): ResourceType | undefined
  types(): readonly ResourceType[]
  /** The current global resourceVersion. */
  currentVersion(): string

  get(type: ResourceType, namespace: string | undefined, name: string): KubeObject | undefined
  list(type: ResourceType, opts?: ListOptions): { items: KubeObject[]; resourceVersion: string }
  /** 409 AlreadyExists; 404 when the namespace does not exist; 422 Invalid. */
  create(type: ResourceType, obj: KubeObject): KubeObject
  /**
   * Replaces the object (`subresource: 'status'` replaces only its status, anything else keeps its status).
   * 409 Conflict when `metadata.resourceVersion` is set and not the stored one; 404 when it does not exist.
   */
  update(type: ResourceType, obj: KubeObject, opts?: { subresource?: 'status' }): KubeObject
  /**
   * Deletes: at once, or — a pod bound to a node, an object with finalizers — by setting `deletionTimestamp`
   * (the kubelet removes the pod once its containers have stopped, with `gracePeriodSeconds: 0`). Dependents
   * (owner references) follow the propagation policy. 404 when absent.
   */
  delete(type: ResourceType, namespace: string | undefined, name: string, opts?: DeleteOptions): KubeObject
  /**
   * Follows changes. 410 Gone (thrown) when `resourceVersion` is older than the history kept. Returns the stop.
   */
  watch(type: ResourceType, opts: WatchOptions, onEvent: (event: WatchEvent) => void): () => void
}
