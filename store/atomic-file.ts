import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { KdlError } from '../common/errors.js'

/**
 * The file stores' one way of writing a record (store/file-store.ts, store/file-workflows.ts): a reader, or a
 * restart after a crash, sees either the old file or the new one, never a torn one.
 */

export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code
}

/** A record file's text, or undefined when it does not exist; `label` names it in the error. */
export async function readText(file: string, label: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined
    throw new KdlError('KDL_ERR_INTERNAL', `reading ${label} failed`, { cause: err })
  }
}

/** temp file in the same dir → write → fsync → rename over `file` → fsync the dir. `name` names the temp file. */
export async function atomicWrite(folder: string, file: string, text: string, name: string): Promise<void> {
  try {
    await mkdir(folder, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw new KdlError('KDL_ERR_INTERNAL', `creating ${folder} failed`, { cause: err })
  }
  const tmp = join(folder, `.${name}.json.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  try {
    // 0600: function records hold the deployer's env values, runs their callers' inputs.
    await writeSynced(tmp, text)
    await rename(tmp, file)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw new KdlError('KDL_ERR_INTERNAL', `writing ${file} failed`, { cause: err })
  }
  await syncDir(folder)
}

/** Makes a rename or unlink durable. Filesystems that cannot fsync a directory are tolerated. */
/** Creates `file` (it must not exist), 0600, writes `text` and fsyncs it. */
export async function writeSynced(file: string, text: string): Promise<void> {
  const handle = await open(file, 'wx', 0o600)
  try {
    await handle.writeFile(text, 'utf8')
    await handle.sync()
  } finally {
    await handle.close()
  }
}

export async function syncDir(folder: string): Promise<void> {
  let handle
  try {
    handle = await open(folder, 'r')
    await handle.sync()
  } catch (err) {
    if (!(isErrno(err, 'EINVAL') || isErrno(err, 'EISDIR') || isErrno(err, 'EPERM'))) {
      throw new KdlError('KDL_ERR_INTERNAL', `syncing ${folder} failed`, { cause: err })
    }
  } finally {
    await handle?.close()
  }
}
