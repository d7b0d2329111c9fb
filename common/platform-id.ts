import { createHash } from 'node:crypto'
import { readFile, realpath, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { KdlError } from './errors.js'

/** File in the data directory that records which platform it belongs to. */
export const PLATFORM_FILE = 'platform.json'

export interface PlatformIdentity {
  /** 12 hex digits: names this platform's cgroup parents and labels its containers. */
  id: string
  /** Real path of the data directory the id was derived from. */
  dataDir: string
}

/**
 * The identity of the platform that owns a data directory: derived from the directory's real path and
 * recorded in it (`platform.json`), so two platforms on one host (each with its own data directory) scope
 * their cgroups, containers and orphan reaping to themselves, and a restart finds its own orphans again.
 * A recorded id whose path no longer matches (the directory was copied or moved) is derived afresh: a
 * copy must not reap the original's instances.
 */
export async function platformIdentity(dataDir: string): Promise<PlatformIdentity> {
  const real = await realpath(dataDir)
  const file = join(real, PLATFORM_FILE)
  const derived: PlatformIdentity = { id: createHash('sha256').update(real).digest('hex').slice(0, 12), dataDir: real }
  const recorded = await readFile(file, 'utf8').then((t) => JSON.parse(t) as Partial<PlatformIdentity>, () => undefined)
  if (recorded?.id === derived.id && recorded.dataDir === real) return derived
  try {
    await writeFile(`${file}.tmp`, `${JSON.stringify(derived)}\n`, { mode: 0o644 })
    await rename(`${file}.tmp`, file)
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `cannot record the platform id in ${file}`, { cause: err })
  }
  return derived
}
