/**
 * Pod garbage collection (issue 10): a pod bound to a node that no longer exists is deleted at once
 * (`gracePeriodSeconds: 0`: no kubelet is left to stop it), so its ReplicaSet or DaemonSet replaces it. The real
 * PodGC waits for its node informer to settle; the stand-in's store is read directly, so there is nothing to wait for.
 */
import type { KubeObject } from '../types.js'
import { QueueController, type ControllerOptions } from './queue.js'
import { isApiError, keyOf, splitKey } from './shared.js'

export class PodGarbageCollector extends QueueController {
  constructor(opts: ControllerOptions) {
    super(opts, 'pod gc')
  }

  start(): void {
    this.watch(this.kinds.pod, (ev) => {
      if (ev.type !== 'DELETED' && boundTo(ev.object) !== undefined) this.queue.add(keyOf(ev.object))
    })
    this.watch(this.kinds.node, (ev) => {
      if (ev.type !== 'DELETED') return
      const node = String(ev.object.metadata.name)
      for (const pod of this.store.list(this.kinds.pod, { fieldSelector: `spec.nodeName=${node}` }).items) this.queue.add(keyOf(pod))
    })
  }

  sync(key: string): void {
    const { namespace, name } = splitKey(key)
    const pod = this.store.get(this.kinds.pod, namespace, name)
    const node = pod === undefined ? undefined : boundTo(pod)
    if (pod === undefined || node === undefined || this.store.get(this.kinds.node, undefined, node) !== undefined) return
    try {
      this.store.delete(this.kinds.pod, namespace, name, { gracePeriodSeconds: 0, preconditions: { uid: String(pod.metadata.uid) } })
    } catch (err) {
      if (!isApiError(err, 404) && !isApiError(err, 409)) throw err
    }
  }
}

function boundTo(pod: KubeObject): string | undefined {
  const n = pod.spec?.nodeName
  return typeof n === 'string' && n !== '' ? n : undefined
}
