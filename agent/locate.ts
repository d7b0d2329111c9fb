/**
 * Where a pod's cgroups are on this node (issue 13, the node agent): pod UID (+ container id) → CgroupRef, for both
 * of the kubelet's cgroup drivers and both cgroup versions.
 *
 * - cgroupfs driver: `<…>/kubepods/[burstable|besteffort/]pod<uid>/<container id>` (Guaranteed pods sit directly
 *   under kubepods);
 * - systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
 *   cri-containerd-<id>.scope` (also `docker-<id>.scope`, `crio-<id>.scope`);
 * - v1: the same relative path in each controller's hierarchy (cpu / cpuacct, memory, pids); v2: the unified one.
 *
 * A pod is found by a bounded walk of the hierarchy (the cpu one on v1) from the root: at most `maxDepth` levels and
 * `maxDirs` directories per walk, never into another pod's or a container's group. Every pod group a walk passes is
 * remembered (UID → relative path), so one walk serves a whole batch; a remembered pod whose directory is gone is
 * forgotten, and looked for again.
 */
import { readdir, realpath, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { CgroupRef } from '../common/backend.js'
import { KdlError } from '../common/errors.js'

export interface LocateOptions {
  /** Where the cgroup filesystems are mounted. @default '/sys/fs/cgroup' (KINDLING_AGENT_CGROUP_ROOT) */
  root?: string
  /** Levels below the root a walk descends. @default 10 */
  maxDepth?: number
  /** Directories one walk reads at most. @default 20_000 */
  maxDirs?: number
}

/** The hierarchy of this node: v2's unified directory, or v1's controller directories (realpaths). */
export type Layout =
  | { version: 2; walk: string; unified: string }
  | { version: 1; walk: string; mounts: Record<'cpu' | 'memory' | 'pids', string> & { cpuacct?: string } }

/** A pod's groups: its own and its containers' (by 64-hex container id). */
export interface PodGroups {
  uid: string
  /** The pod group's path relative to the hierarchy root. */
  path: string
  /** `cgroupfs` (`pod<uid>`) or `systemd` (`kubepods-…-pod<uid_>.slice`). */
  driver: 'cgroupfs' | 'systemd'
  pod: CgroupRef
  containers: Map<string, CgroupRef>
}

const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const CONTAINER = /^(?:(?:cri-containerd|docker|crio)-)?([0-9a-f]{64})(?:\.scope)?$/
const CGROUPFS_POD = /^pod([0-9a-f-]{36})$/
const SYSTEMD_POD = /^kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice$/

/** A container id as pod status shows it (`containerd://<id>`, `docker://<id>`) or bare → the 64 hex digits. */
export function bareContainerId(id: string): string {
  const bare = id.replace(/^[a-z-]+:\/\//, '')
  if (!/^[0-9a-f]{64}$/.test(bare)) throw new KdlError('KDL_ERR_BAD_REQUEST', `not a container id: ${id}`)
  return bare
}

/** The pod UID a group directory's name is of, and by which driver; undefined for any other name. */
export function podOfDir(name: string): { uid: string; driver: 'cgroupfs' | 'systemd' } | undefined {
  const fs = CGROUPFS_POD.exec(name)
  if (fs !== null) return { uid: fs[1] as string, driver: 'cgroupfs' }
  const sd = SYSTEMD_POD.exec(name)
  if (sd !== null) return { uid: (sd[1] as string).replace(/_/g, '-'), driver: 'systemd' }
  return undefined
}

/** The container id a group directory's name is of (`<id>`, `cri-containerd-<id>.scope`, `docker-<id>.scope`). */
export function containerOfDir(name: string): string | undefined {
  return CONTAINER.exec(name)?.[1]
}

/** Finds the hierarchy under `root`: v2 when `root/cgroup.controllers` exists, else v1's cpu, memory and pids. */
export async function detectLayout(root: string): Promise<Layout> {
  if (await isFile(join(root, 'cgroup.controllers'))) return { version: 2, walk: root, unified: root }
  const dir = async (...names: string[]): Promise<string | undefined> => {
    for (const n of names) {
      const p = join(root, n)
      if (await isDir(p)) return realpath(p)
    }
    return undefined
  }
  const cpu = await dir('cpu', 'cpu,cpuacct', 'cpuacct,cpu')
  const cpuacct = await dir('cpuacct', 'cpu,cpuacct', 'cpuacct,cpu')
  const memory = await dir('memory')
  const pids = await dir('pids')
  if (cpu === undefined || memory === undefined || pids === undefined) {
    throw new KdlError('KDL_ERR_BACKEND', `no cgroup hierarchy under ${root}: neither cgroup.controllers (v2) nor cpu, memory and pids directories (v1)`)
  }
  return { version: 1, walk: cpu, mounts: { cpu, memory, pids, ...(cpuacct === undefined ? {} : { cpuacct }) } }
}

/** The ref of the group at `rel` (relative to the hierarchy root). */
export function refAt(layout: Layout, rel: string): CgroupRef {
  if (layout.version === 2) return { version: 2, paths: { unified: join(layout.unified, rel) } }
  const paths: Record<string, string> = {}
  for (const [c, mount] of Object.entries(layout.mounts)) paths[c] = join(mount, rel)
  return { version: 1, paths }
}

export class CgroupLocator {
  readonly root: string
  readonly #maxDepth: number
  readonly #maxDirs: number
  #layout: Promise<Layout> | undefined
  /** Pod UID → its group's path relative to the root, with the driver that named it. */
  readonly #known = new Map<string, { path: string; driver: 'cgroupfs' | 'systemd' }>()
  /** Walks made (tests: a batch costs one). */
  walks = 0

  constructor(opts: LocateOptions = {}) {
    this.root = opts.root ?? '/sys/fs/cgroup'
    this.#maxDepth = opts.maxDepth ?? 10
    this.#maxDirs = opts.maxDirs ?? 20_000
  }

  layout(): Promise<Layout> {
    this.#layout ??= detectLayout(this.root)
    this.#layout.catch(() => { this.#layout = undefined })
    return this.#layout
  }

  /** Pods remembered now. */
  get cached(): number {
    return this.#known.size
  }

  /**
   * The groups of the pod, with its containers' as they are now; undefined when no group of it is on this node.
   * `uids` are looked for in the same walk when one is needed (a batch).
   */
  async locate(uid: string, also: readonly string[] = []): Promise<PodGroups | undefined> {
    if (!UID.test(uid)) throw new KdlError('KDL_ERR_BAD_REQUEST', `not a pod UID: ${uid}`)
    const layout = await this.layout()
    let known = this.#known.get(uid)
    if (known !== undefined && !(await isDir(join(layout.walk, known.path)))) {
      this.#known.delete(uid)
      known = undefined
    }
    if (known === undefined) {
      await this.#walk(layout, new Set([uid, ...also]))
      known = this.#known.get(uid)
      if (known === undefined) return undefined
    }
    const containers = new Map<string, CgroupRef>()
    let entries: string[]
    try {
      entries = await subdirs(join(layout.walk, known.path))
    } catch {
      this.#known.delete(uid)
      return undefined
    }
    for (const name of entries) {
      const id = containerOfDir(name)
      if (id !== undefined) containers.set(id, refAt(layout, join(known.path, name)))
    }
    return { uid, path: known.path, driver: known.driver, pod: refAt(layout, known.path), containers }
  }

  /** Forgets a pod (its groups went). */
  forget(uid: string): void {
    this.#known.delete(uid)
  }

  /** Forgets every remembered pod whose group is gone. */
  async prune(): Promise<void> {
    const layout = await this.layout()
    for (const [uid, k] of this.#known) if (!(await isDir(join(layout.walk, k.path)))) this.#known.delete(uid)
  }

  /** Breadth-first from the root, remembering every pod group seen; stops early once all `wanted` are found. */
  async #walk(layout: Layout, wanted: Set<string>): Promise<void> {
    this.walks++
    // Pods remembered by earlier walks but never asked for may have gone meanwhile: the cache holds this node's pods only.
    await this.prune()
    let level = ['']
    let read = 0
    const missing = new Set([...wanted].filter((u) => !this.#known.has(u)))
    for (let depth = 0; depth < this.#maxDepth && level.length > 0 && missing.size > 0; depth++) {
      const next: string[] = []
      for (const rel of level) {
        if (read++ >= this.#maxDirs) return
        let names: string[]
        try {
          names = await subdirs(join(layout.walk, rel))
        } catch {
          continue
        }
        for (const name of names) {
          const path = rel === '' ? name : `${rel}/${name}`
          const pod = podOfDir(name)
          if (pod !== undefined) {
            this.#known.set(pod.uid, { path, driver: pod.driver })
            missing.delete(pod.uid)
            continue
          }
          // A container's group (of a pod found already, or of something else) holds no pod.
          if (containerOfDir(name) !== undefined) continue
          next.push(path)
        }
      }
      level = next
    }
  }
}

async function subdirs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true })
  return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort()
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory()
  } catch {
    return false
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile()
  } catch {
    return false
  }
}
