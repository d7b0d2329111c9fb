import { chown, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/** Hands a build directory to the build's user (npm writes node_modules and its cache there); symlinks are not followed. */
export async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await chown(dir, uid, gid)
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) await chownTree(p, uid, gid)
    else if (!e.isSymbolicLink()) await chown(p, uid, gid)
  }
}
