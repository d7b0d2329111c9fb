import { PatchStrategy, setHeaderOptions, type AppsV1Api, type CoreV1Api, type V1Deployment } from '@kubernetes/client-node'
import { LABEL, apiError, statusOf } from './kube-common.js'
import { withTimeout } from './pod-watch.js'

/** Merge patches (client-node 1.x sends JSON patches unless told otherwise). */
export const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch)

export interface PoolDeploymentsOptions {
  core: CoreV1Api
  apps: AppsV1Api
  namespace: string
  platformId: string
  /** The API server's URL, for messages. */
  server: string
  timeoutMs: number
}

/**
 * The cluster objects the pools live in: the namespace (created when missing) and one Deployment per runtime,
 * written create-or-patch so an earlier run's or another replica's Deployment becomes this pool.
 */
export class PoolDeployments {
  readonly #o: PoolDeploymentsOptions
  #namespaceReady: Promise<void> | undefined

  constructor(opts: PoolDeploymentsOptions) {
    this.#o = opts
  }

  /** The namespace exists (created when missing; 403 — no right to read or create namespaces — and 409 are fine). */
  namespace(): Promise<void> {
    const { core, namespace: ns, server, timeoutMs } = this.#o
    this.#namespaceReady ??= (async () => {
      try {
        await withTimeout(core.readNamespace({ name: ns }), timeoutMs, 'the namespace read')
        return
      } catch (err) {
        const s = statusOf(err)
        if (s === 403) return
        if (s !== 404) throw apiError(`cannot read namespace ${ns}`, err, server)
      }
      try {
        await withTimeout(core.createNamespace({ body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { 'app.kubernetes.io/managed-by': 'kindling' } } } }), timeoutMs, 'the namespace create')
      } catch (err) {
        const s = statusOf(err)
        if (s !== 403 && s !== 409) throw apiError(`cannot create namespace ${ns}`, err, server)
      }
    })()
    this.#namespaceReady.catch(() => { this.#namespaceReady = undefined })
    return this.#namespaceReady
  }

  /** Creates the Deployment, or — it exists — makes its size and pod template this one's. */
  async write(body: V1Deployment): Promise<void> {
    const { apps, namespace, server, timeoutMs } = this.#o
    const name = body.metadata?.name ?? ''
    try {
      await withTimeout(apps.createNamespacedDeployment({ namespace, body }), timeoutMs, 'the pool create')
    } catch (err) {
      if (statusOf(err) !== 409) throw apiError(`cannot create the pool Deployment ${name}`, err, server)
      // A merge patch replaces the template's lists (containers, tolerations) whole; the selector is the same.
      const patch = { metadata: { labels: body.metadata?.labels }, spec: { replicas: body.spec?.replicas, template: body.spec?.template } }
      try {
        await withTimeout(apps.patchNamespacedDeployment({ name, namespace, body: patch }, mergePatch), timeoutMs, 'the pool update')
      } catch (e) {
        throw apiError(`cannot update the pool Deployment ${name}`, e, server)
      }
    }
  }

  /** Deletes every pool Deployment of the platform (their pool pods follow by garbage collection). */
  async deleteAll(): Promise<void> {
    const { apps, namespace, platformId, server, timeoutMs } = this.#o
    let items: V1Deployment[]
    try {
      items = (await withTimeout(apps.listNamespacedDeployment({ namespace, labelSelector: `${LABEL.platform}=${platformId}` }), timeoutMs, 'the pool list')).items
    } catch (err) {
      throw apiError('cannot list the pool Deployments', err, server)
    }
    for (const d of items) {
      const name = d.metadata?.name ?? ''
      try {
        await withTimeout(apps.deleteNamespacedDeployment({ name, namespace, propagationPolicy: 'Background' }), timeoutMs, 'the pool delete')
      } catch (err) {
        if (statusOf(err) !== 404) throw apiError(`cannot delete the pool Deployment ${name}`, err, server)
      }
    }
  }
}
