import { Watch, type CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import { apiError, delay, statusOf, type KubeLog } from './kube-common.js'

export type PodEventType = 'ADDED' | 'MODIFIED' | 'DELETED'

export interface PodWatchOptions {
  kubeConfig: KubeConfig
  core: CoreV1Api
  namespace: string
  /** The pods followed (this platform's: `kindling.io/platform=<id>`). */
  labelSelector: string
  /** The API server's URL, for messages. */
  server: string
  /** Bound on the list call, ms. */
  timeoutMs: number
  log: KubeLog
  /** Every change of a followed pod, in the API's order; a relist reports what changed while the watch was away. */
  onEvent: (type: PodEventType, pod: V1Pod) => void
}

/** Longest wait between attempts while the API server is away. */
const MAX_BACKOFF_MS = 5_000
/** A watch the server ends sooner than this without an event counts as a failure (backs off), so nothing spins. */
const SHORT_WATCH_MS = 1_000
/** The server ends each watch after this; the next one resumes from the last resourceVersion. */
const WATCH_TIMEOUT_S = 300

/**
 * A local copy of the followed pods, kept by list + watch (the informer pattern, written out so its failure
 * handling is the backend's): the watch resumes from the last resourceVersion it saw (bookmarks included), with a
 * doubling back-off while the API server is away; `410 Gone` (the version fell out of the server's history)
 * relists and reports what vanished meanwhile as DELETED. The copy is what start() claims from: no list per call.
 */
export class PodWatch {
  /** Followed pods by name, as last seen. */
  readonly pods = new Map<string, V1Pod>()
  readonly #o: PodWatchOptions
  readonly #watch: Watch
  readonly #closed = new AbortController()
  #rv: string | undefined
  #ready: Promise<void> | undefined
  #request: AbortController | undefined
  /** True while the watch is down (logged once per outage). */
  #away = false

  constructor(opts: PodWatchOptions) {
    this.#o = opts
    this.#watch = new Watch(opts.kubeConfig)
  }

  /** The first list (then the watch runs by itself); a failed list rejects and is tried again by the next call. */
  ensure(): Promise<void> {
    this.#ready ??= this.#relist().then(() => { void this.#run() }, (err: unknown) => {
      this.#ready = undefined
      throw apiError(`cannot list the pods of namespace ${this.#o.namespace}`, err, this.#o.server)
    })
    return this.#ready
  }

  /** True once the watch has been down since the last event (the copy may be stale). */
  get away(): boolean {
    return this.#away
  }

  close(): void {
    this.#closed.abort()
    this.#request?.abort()
  }

  async #relist(): Promise<void> {
    const list = await withTimeout(this.#o.core.listNamespacedPod({ namespace: this.#o.namespace, labelSelector: this.#o.labelSelector }), this.#o.timeoutMs, 'the pod list')
    const seen = new Set<string>()
    for (const pod of list.items) {
      const name = pod.metadata?.name
      if (name === undefined) continue
      seen.add(name)
      const old = this.pods.get(name)
      this.pods.set(name, pod)
      if (old?.metadata?.resourceVersion !== pod.metadata?.resourceVersion) this.#emit(old === undefined ? 'ADDED' : 'MODIFIED', pod)
    }
    for (const [name, pod] of [...this.pods]) {
      if (seen.has(name)) continue
      this.pods.delete(name)
      this.#emit('DELETED', pod)
    }
    this.#rv = list.metadata?.resourceVersion
  }

  async #run(): Promise<void> {
    let backoff = 100
    while (!this.#closed.signal.aborted) {
      const t0 = Date.now()
      let events = 0
      try {
        if (this.#rv === undefined) await this.#relist()
        const ended = await this.#watchOnce(() => { events++ })
        if (ended === 'gone') {
          this.#o.log.info({ namespace: this.#o.namespace }, 'pod watch too old (410 Gone); relisting')
          this.#rv = undefined
          continue
        }
        if (events > 0 || Date.now() - t0 >= SHORT_WATCH_MS) { backoff = 100; continue }
      } catch (err) {
        if (this.#closed.signal.aborted) return
        if (statusOf(err) === 410) {
          this.#o.log.info({ namespace: this.#o.namespace }, 'pod watch too old (410 Gone); relisting')
          this.#rv = undefined
          continue
        }
        if (!this.#away) this.#o.log.warn({ err: errorText(err), namespace: this.#o.namespace }, 'pod watch lost; resuming with back-off')
        this.#away = true
      }
      await delay(backoff, this.#closed.signal)
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS)
    }
  }

  /** One watch request from the last resourceVersion; resolves when the server ends it, 'gone' after a 410 ERROR event. */
  #watchOnce(onEvent: () => void): Promise<'ended' | 'gone'> {
    return new Promise((resolve, reject) => {
      let gone = false
      const path = `/api/v1/namespaces/${encodeURIComponent(this.#o.namespace)}/pods`
      const query = { labelSelector: this.#o.labelSelector, resourceVersion: this.#rv, allowWatchBookmarks: true, timeoutSeconds: WATCH_TIMEOUT_S }
      const onLine = (type: string, obj: unknown): void => {
        if (type === 'ERROR') {
          const code = (obj as { code?: unknown } | undefined)?.code
          if (code === 410) gone = true
          else this.#o.log.warn({ status: obj, namespace: this.#o.namespace }, 'pod watch error event')
          this.#request?.abort()
          return
        }
        const pod = obj as V1Pod
        const rv = pod.metadata?.resourceVersion
        if (rv !== undefined) this.#rv = rv
        onEvent()
        if (this.#away) {
          this.#away = false
          this.#o.log.info({ namespace: this.#o.namespace }, 'pod watch resumed')
        }
        if (type === 'BOOKMARK') return
        const name = pod.metadata?.name
        if (name === undefined) return
        if (type === 'DELETED') {
          this.pods.delete(name)
          this.#emit('DELETED', pod)
        } else if (type === 'ADDED' || type === 'MODIFIED') {
          const known = this.pods.has(name)
          this.pods.set(name, pod)
          this.#emit(known ? 'MODIFIED' : 'ADDED', pod)
        }
      }
      const done = (err: unknown): void => {
        this.#request = undefined
        if (gone) resolve('gone')
        else if (err !== null && err !== undefined && !this.#closed.signal.aborted) reject(err)
        else resolve('ended')
      }
      this.#watch.watch(path, query, onLine, done).then((ctl) => {
        this.#request = ctl
        if (this.#closed.signal.aborted) ctl.abort()
      }, (err: unknown) => { done(err) })
    })
  }

  #emit(type: PodEventType, pod: V1Pod): void {
    try { this.#o.onEvent(type, pod) } catch (err) { this.#o.log.error({ err, pod: pod.metadata?.name }, 'pod event handler threw') }
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Races `p` against a timer: an API server that accepts and never answers fails the call instead of hanging it. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} got no answer within ${ms} ms`)), ms)
  })
  p.catch(() => {})
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}
