import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { CgroupRef } from '../../common/backend.js'
import type { BackendLog } from './docker-common.js'

interface CgroupMounts {
  /** v1 controller → mount directory. */
  v1: Record<string, string>
  unified?: string | undefined
}

/**
 * Finds a container's cgroup directories from /proc/<pid>/cgroup (right for any cgroup driver and parent) and the
 * cgroup mounts of this mount namespace (read once, on first use).
 */
export class CgroupLocator {
  readonly #log: BackendLog
  #mounts: Promise<CgroupMounts> | undefined

  constructor(log: BackendLog) {
    this.#log = log
  }

  /** The cgroup directories of process `pid` (instance `id`) that exist, or undefined when they cannot be found. */
  async locate(pid: number, id: string): Promise<CgroupRef | undefined> {
    try {
      this.#mounts ??= readCgroupMounts()
      const mounts = await this.#mounts
      const lines = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n')
      const v1: Record<string, string> = {}
      let unified: string | undefined
      for (const line of lines) {
        const m = /^\d+:([^:]*):(.*)$/.exec(line)
        if (m === null) continue
        const [, ctrls = '', path = ''] = m
        if (ctrls === '') {
          if (mounts.unified !== undefined) unified = join(mounts.unified, path)
          continue
        }
        for (const c of ctrls.split(',')) {
          const mount = mounts.v1[c]
          if (mount !== undefined) v1[c] = join(mount, path)
        }
      }
      const ref: CgroupRef | undefined = Object.keys(v1).length > 0
        ? { version: 1, paths: v1 }
        : unified !== undefined ? { version: 2, paths: { unified } } : undefined
      if (ref === undefined) return undefined
      for (const [ctrl, dir] of Object.entries(ref.paths)) {
        if (await stat(dir).then(() => false, () => true)) delete ref.paths[ctrl]
      }
      return ref
    } catch (err) {
      this.#log.warn({ err, instance: id }, 'cannot locate the instance cgroup')
      return undefined
    }
  }
}

/** cgroup mounts of this mount namespace, from /proc/self/mountinfo. */
async function readCgroupMounts(): Promise<CgroupMounts> {
  const out: CgroupMounts = { v1: {} }
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const [pre, post] = line.split(' - ')
    if (pre === undefined || post === undefined) continue
    const mountPoint = pre.split(' ')[4]
    const [fstype, , superOpts = ''] = post.split(' ')
    if (mountPoint === undefined) continue
    if (fstype === 'cgroup2') out.unified ??= mountPoint
    if (fstype !== 'cgroup') continue
    for (const opt of superOpts.split(',')) {
      if (['rw', 'ro', 'relatime', 'noatime', 'nosuid', 'nodev', 'noexec', 'clone_children', 'xattr'].includes(opt) || opt.includes('=')) continue
      out.v1[opt] ??= mountPoint
    }
  }
  return out
}
