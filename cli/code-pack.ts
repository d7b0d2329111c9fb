import { lstat, readdir, readFile, stat } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { create as createTar } from 'tar'
import { isRecord } from './output.js'

/** The code part of a deploy body (`PUT /v1/functions/:name`). */
export interface CodeBody {
  code?: string
  archive?: string
  entrypoint?: string
}

export interface PackOptions {
  /** Ship a directory's node_modules even when package.json declares dependencies (the platform then builds nothing). */
  includeNodeModules?: boolean | undefined
  /** Told what was left out and why. */
  note?: ((line: string) => void) | undefined
}

/** Code that cannot be read or packed; the message names the problem, not the path (callers say where). */
export class CodeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'CodeError'
  }
}

/**
 * The code part of a deploy body, from an ES module file, a `.tar.gz` / `.tgz`, or a directory — packed the same
 * way every time (issue 14): entries sorted, no mtimes, owners or host modes beyond the executable bit, so the
 * platform sees one directory as one tree (`kindling apply` reports it unchanged) and `fn deploy` and `apply` agree.
 * `.git` is never part of a function; `node_modules` is left out when package.json declares dependencies (the
 * platform builds them for its runtime) unless `includeNodeModules`.
 */
export async function packCode(path: string, entrypoint: string | undefined, opts: PackOptions = {}): Promise<CodeBody> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new CodeError(err.code === 'ENOENT' ? 'no such file or directory' : err.message)
  })
  const withEntry = <T extends object>(b: T): T & { entrypoint?: string } => (entrypoint === undefined ? b : { ...b, entrypoint })
  if (info.isDirectory()) {
    let top = (await readdir(path)).filter((e) => e !== '.git')
    if (opts.includeNodeModules !== true && top.includes('node_modules') && await declaresDependencies(join(path, 'package.json'))) {
      top = top.filter((e) => e !== 'node_modules')
      opts.note?.('node_modules left out: the platform builds the dependencies package.json declares (--include-node-modules to ship them as they are)')
    }
    if (top.length === 0) throw new CodeError('is an empty directory')
    const entries = await walk(path, top.sort(byteOrder))
    const chunks: Buffer[] = []
    // noDirRecurse: the list above is the whole archive, in its order (a directory's readdir order is the disk's).
    for await (const chunk of createTar({ gzip: true, cwd: path, portable: true, noMtime: true, noDirRecurse: true }, entries)) chunks.push(chunk as Buffer)
    const fallback = !existsSync(join(path, 'index.js')) && existsSync(join(path, 'index.mjs')) ? 'index.mjs' : 'index.js'
    return { archive: Buffer.concat(chunks).toString('base64'), entrypoint: entrypoint ?? fallback }
  }
  if (/\.(tar\.gz|tgz)$/i.test(path)) return withEntry({ archive: (await readFile(path)).toString('base64') })
  const code = await readFile(path, 'utf8')
  if (code.length === 0) throw new CodeError('is empty')
  return withEntry({ code })
}

/** Every path under `root` from the given top-level names, depth first, each directory's children sorted; symlinks not followed. */
async function walk(root: string, names: string[], prefix = ''): Promise<string[]> {
  const out: string[] = []
  for (const name of names) {
    const rel = prefix === '' ? name : `${prefix}/${name}`
    out.push(rel)
    if ((await lstat(join(root, rel))).isDirectory()) out.push(...await walk(root, (await readdir(join(root, rel))).sort(byteOrder), rel))
  }
  return out
}

function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

async function declaresDependencies(packageJson: string): Promise<boolean> {
  try {
    const pkg = JSON.parse(await readFile(packageJson, 'utf8')) as Record<string, unknown>
    return ['dependencies', 'optionalDependencies'].some((k) => isRecord(pkg[k]) && Object.keys(pkg[k]).length > 0)
  } catch {
    return false
  }
}
