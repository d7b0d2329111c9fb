import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmod, copyFile, mkdir, readFile, readdir, realpath, stat, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { promisify } from 'node:util'
import { KdlError } from '../../../common/errors.js'

const run = promisify(execFile)

/** Where the runtime server lives inside a runtime image. */
export const RUNTIME_DIR = '/opt/kindling/runtime'
/** Where the node binary lives inside a runtime image. */
export const IMAGE_NODE = '/usr/local/bin/node'
export const IMAGE_PATH = '/usr/local/bin:/usr/bin:/bin'

/** Files of a runtime server directory that are not part of the server (kept out of images and of the version hash). */
const SKIP = /^(Dockerfile|\.dockerignore|.*\.md|test|tests|node_modules|\..*)$/

/** Shared objects a dynamically linked binary needs, as `ldd` lists them (the dynamic loader included). */
export async function sharedLibraries(binary: string): Promise<string[]> {
  let stdout: string
  try {
    ({ stdout } = await run('ldd', [binary], { env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } }))
  } catch (err) {
    // A static binary makes ldd exit 1 with "not a dynamic executable".
    const out = String((err as { stdout?: unknown }).stdout ?? '') + String((err as { stderr?: unknown }).stderr ?? '')
    if (/not a dynamic executable|statically linked/.test(out)) return []
    throw new KdlError('KDL_ERR_BACKEND', `ldd ${binary} failed`, { cause: err })
  }
  const libs: string[] = []
  for (const line of stdout.split('\n')) {
    const t = line.trim()
    if (t === '' || /statically linked/.test(t)) continue
    if (t.includes('=> not found')) throw new KdlError('KDL_ERR_BACKEND', `${binary} needs a library the host lacks: ${t}`)
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"; vdso has no path.
    const m = /=>\s+(\/\S+)/.exec(t) ?? /^(\/\S+)/.exec(t)
    if (m?.[1] !== undefined && !libs.includes(m[1])) libs.push(m[1])
  }
  return libs
}

/** Files of a runtime server directory, relative and sorted (deterministic hash and copy order). */
export async function serverFiles(serverDir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (dir: string): Promise<void> => {
    for (const ent of await readdir(dir, { withFileTypes: true })) {
      if (SKIP.test(ent.name)) continue
      const p = join(dir, ent.name)
      if (ent.isDirectory()) await walk(p)
      else if (ent.isFile()) out.push(relative(serverDir, p))
    }
  }
  await walk(serverDir)
  return out.sort()
}

/** Short content hash of what goes into a runtime image: layout revision, node version, server files. */
export async function imageVersion(serverDir: string, nodeVersion: string, layout: string): Promise<string> {
  const h = createHash('sha256').update(`layout:${layout}\nnode:${nodeVersion}\n`)
  const files = await serverFiles(serverDir)
  if (!files.includes('server.mjs')) {
    throw new KdlError('KDL_ERR_BACKEND', `runtime server directory ${serverDir} has no server.mjs`)
  }
  for (const f of files) {
    h.update(`${f}\0`).update(createHash('sha256').update(await readFile(join(serverDir, f))).digest('hex')).update('\n')
  }
  return h.digest('hex').slice(0, 12)
}

async function copyResolved(from: string, to: string, mode: number): Promise<void> {
  await mkdir(dirname(to), { recursive: true, mode: 0o755 })
  await copyFile(await realpath(from), to)
  await chmod(to, mode)
}

export interface RootfsInput {
  /** Host node binary (symlinks are resolved). */
  nodeBin: string
  serverDir: string
}

/**
 * Lays out a minimal root filesystem for the node runtime in `root` (an empty directory): the host's node
 * binary and every library `ldd` lists for it (at the same paths, so the binary's loader and search paths
 * hold), passwd/group with `nobody` (65534), `/tmp`, `/run/kindling`, `/code`, and the server files.
 * Returns the number of bytes copied.
 */
export async function assembleNodeRootfs(root: string, input: RootfsInput): Promise<number> {
  const nodeReal = await realpath(input.nodeBin)
  let bytes = 0
  const add = async (from: string, to: string, mode: number): Promise<void> => {
    await copyResolved(from, join(root, to), mode)
    bytes += (await stat(join(root, to))).size
  }
  await add(nodeReal, IMAGE_NODE, 0o755)
  for (const lib of await sharedLibraries(nodeReal)) await add(lib, lib, 0o755)

  for (const dir of ['etc', 'dev', 'proc', 'sys', 'run/kindling', 'code', 'opt/kindling/runtime', 'usr/bin', 'bin']) {
    await mkdir(join(root, dir), { recursive: true, mode: 0o755 })
  }
  await mkdir(join(root, 'tmp'), { mode: 0o755 })
  await chmod(join(root, 'tmp'), 0o1777)
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n', { mode: 0o644 })
  await writeFile(join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n', { mode: 0o644 })
  await writeFile(join(root, 'etc/nsswitch.conf'), 'passwd: files\ngroup: files\nhosts: files dns\n', { mode: 0o644 })

  for (const f of await serverFiles(input.serverDir)) {
    await add(join(input.serverDir, f), join(RUNTIME_DIR, f), 0o644)
  }
  return bytes
}
