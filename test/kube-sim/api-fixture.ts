import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startApiServer, type ApiServer } from '../../kube-sim/api-server.js'
import { kubeconfigYaml } from '../../kube-sim/kubeconfig.js'
import { MemoryStore } from '../../kube-sim/store.js'
import type { ObjectStore, ResourceType, WatchOptions } from '../../kube-sim/types.js'

// A MemoryStore behind a real API server, a kubeconfig for it, and kubectl run against it (issue 10's API tests).
export const KUBECTL = fileURLToPath(new URL('../../.kube-tools/bin/kubectl', import.meta.url))

export interface Sim {
  store: MemoryStore
  api: ApiServer
  token: string
  dir: string
  kubeconfig: string
  kubeconfigPath: string
  /** Resolves at the next watch the API server opens on `resource` (what a client waits on has started). */
  nextWatch(resource: string): Promise<WatchOptions>
  type(resource: string, group?: string): ResourceType
  kubectl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }>
  stop(): Promise<void>
}

export async function startSim(opts: { historySize?: number; bookmarkIntervalMs?: number; logs?: (ns: string, pod: string, c: string | undefined) => string } = {}): Promise<Sim> {
  const store = new MemoryStore({ historySize: opts.historySize ?? 1000, bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 1000 })
  const waiting: Array<{ resource: string; resolve: (o: WatchOptions) => void }> = []
  // The server sees the store through this view, which reports each watch it opens.
  const view: ObjectStore = Object.create(store, {
    watch: {
      value: (type: ResourceType, o: WatchOptions, cb: Parameters<ObjectStore['watch']>[2]) => {
        const stop = store.watch(type, o, cb)
        for (const w of waiting.splice(0)) { if (w.resource === type.resource) w.resolve(o); else waiting.push(w) }
        return stop
      },
    },
  })
  // Object.create keeps the store's private fields on the prototype: bind the methods to the store itself.
  for (const m of ['type', 'typeOf', 'types', 'currentVersion', 'get', 'list', 'create', 'update', 'delete'] as const) {
    Object.defineProperty(view, m, { value: (store[m] as (...a: unknown[]) => unknown).bind(store) })
  }
  const token = 'test-token-0123456789'
  const api = await startApiServer({ store: view, token, ...(opts.logs === undefined ? {} : { logs: opts.logs }) })
  const dir = await mkdtemp(join(tmpdir(), 'kube-sim-api-'))
  const kubeconfig = kubeconfigYaml({ server: api.url, token, ca: api.ca })
  const kubeconfigPath = join(dir, 'kubeconfig')
  await writeFile(kubeconfigPath, kubeconfig)
  return {
    store, api, token, dir, kubeconfig, kubeconfigPath,
    nextWatch: (resource) => new Promise((resolve) => waiting.push({ resource, resolve })),
    type(resource, group = '') {
      const t = store.types().find((x) => x.resource === resource && x.group === group)
      if (t === undefined) throw new Error(`no ${resource}`)
      return t
    },
    kubectl: (...args) => new Promise((resolve) => {
      execFile(KUBECTL, ['--kubeconfig', kubeconfigPath, '--cache-dir', join(dir, 'cache'), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1
        resolve({ code, stdout, stderr })
      })
    }),
    async stop() {
      await api.close()
      await rm(dir, { recursive: true, force: true })
    },
  }
}
