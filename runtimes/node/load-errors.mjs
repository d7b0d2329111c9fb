// Load failures of the Kindling Node runtime, described for the deployer: syntax errors and top-level throws
// name the file and line. Imported by server.mjs on the load-failure path only.
//
// Node 20 keeps the file and line of an ES module compile error in a private field and prints it only for
// fatal errors, so the SyntaxError that import() rejects with names no file. `node --check` prints it: for
// those, a short-lived `node --check` is asked about each ES module file of the function, the entry first.
// (CommonJS syntax errors carry their location on the first line of `stack`.)
import { spawn } from 'node:child_process'
import { readFile, readdir } from 'node:fs/promises'
import { dirname, extname, isAbsolute, join, relative, sep } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { inspect } from 'node:util'

const MAX_FILES = 64
const CHECK_TIMEOUT_MS = 5_000

/**
 * `{message, stack}` for a failed import of a function's entry.
 * @param {unknown} err what import() rejected with
 * @param {string} dir real path of the code directory
 * @param {string} entryRel the entry file as the deployer named it
 * @param {string} entryFile absolute path of the entry file
 * @param {Record<string, string | undefined>} env environment for `node --check`
 */
export async function describeLoadError(err, dir, entryRel, entryFile, env) {
  const isError = typeof err === 'object' && err !== null && typeof err.message === 'string'
  if (!isError) return { message: `${entryRel} threw while loading: ${inspect(err)}` }
  const stack = typeof err.stack === 'string' ? err.stack : undefined
  const name = typeof err.name === 'string' ? err.name : 'Error'
  if (name === 'SyntaxError') {
    // CommonJS (and newer Node for ESM) put "<file>:<line>" on the first line of the stack.
    const first = stack === undefined ? null : /^(file:\/\/\S+|\/\S*):(\d+)\r?\n/.exec(stack)
    if (first !== null) return { message: `SyntaxError in ${displayPath(first[1], dir)}:${first[2]}: ${err.message}`, stack }
    const found = await locateSyntaxError(dir, entryFile, env).catch(() => null)
    if (found !== null) {
      const where = `${displayPath(found.file, dir)}:${found.line}`
      return { message: `SyntaxError in ${where}: ${err.message}`, stack: `${pathToFileURL(found.file).href}:${found.line}\n${found.excerpt}\n\n${stack ?? ''}` }
    }
    return { message: `SyntaxError in ${entryRel} or a module it imports: ${err.message}`, stack }
  }
  if (err.code === 'ERR_MODULE_NOT_FOUND' || err.code === 'MODULE_NOT_FOUND') {
    return { message: `${entryRel} failed to load: ${err.message}`, stack }
  }
  const frame = stack === undefined ? null : firstFrameIn(stack, dir)
  if (frame !== null) return { message: `${name} in ${frame}: ${err.message}`, stack }
  return { message: `${entryRel} threw while loading: ${name}: ${err.message}`, stack }
}

/** "lib/x.mjs:3" for the first stack frame in a file under dir. */
function firstFrameIn(stack, dir) {
  const frames = /(?:\(|at )(file:\/\/[^\s)]+|\/[^\s):]+):(\d+):\d+\)?$/gm
  for (const m of stack.matchAll(frames)) {
    const shown = displayPath(m[1], dir)
    if (!shown.startsWith('/')) return `${shown}:${m[2]}`
  }
  return null
}

/** A file URL or path as a path relative to dir when inside it, else absolute. */
function displayPath(fileOrUrl, dir) {
  let file = fileOrUrl
  if (file.startsWith('file:')) {
    try {
      file = fileURLToPath(file.replace(/[?#].*$/, ''))
    } catch {
      return fileOrUrl
    }
  }
  const rel = relative(dir, file)
  return rel.startsWith('..') || isAbsolute(rel) ? file : rel.split(sep).join('/')
}

/**
 * @param {string} codeDir real path of the function's code directory
 * @param {string} entryFile absolute path of the entry module
 * @param {Record<string, string | undefined>} env environment of the checking process
 * @returns {Promise<{file: string, line: number, message: string, excerpt: string} | null>}
 */
async function locateSyntaxError(codeDir, entryFile, env) {
  const types = new Map()
  const files = [entryFile, ...(await listSources(codeDir)).filter((f) => f !== entryFile)]
  for (const file of files.slice(0, MAX_FILES)) {
    if (!(await isModule(file, types))) continue
    const found = await check(file, env)
    if (found !== null) return found
  }
  return null
}

/** `.mjs` and `.js` files under dir, breadth first, leaving out node_modules and dot directories. */
async function listSources(dir) {
  const out = []
  const queue = [dir]
  while (queue.length > 0 && out.length < MAX_FILES) {
    const d = /** @type {string} */ (queue.shift())
    let entries
    try {
      entries = await readdir(d, { withFileTypes: true })
    } catch {
      continue
    }
    for (const e of entries) {
      if (e.isDirectory()) {
        if (e.name !== 'node_modules' && !e.name.startsWith('.')) queue.push(join(d, e.name))
      } else if (e.isFile() && (e.name.endsWith('.mjs') || e.name.endsWith('.js'))) {
        out.push(join(d, e.name))
      }
    }
  }
  return out
}

async function isModule(file, types) {
  const ext = extname(file)
  if (ext === '.mjs') return true
  if (ext !== '.js') return false
  return (await packageType(dirname(file), types)) === 'module'
}

/** The "type" of the nearest package.json, as Node decides the format of a `.js` file. */
async function packageType(dir, types) {
  const known = types.get(dir)
  if (known !== undefined) return known
  let type
  try {
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'))
    type = pkg !== null && typeof pkg === 'object' && pkg.type === 'module' ? 'module' : 'commonjs'
  } catch (err) {
    const parent = dirname(dir)
    type = err?.code === 'ENOENT' && parent !== dir ? await packageType(parent, types) : 'commonjs'
  }
  types.set(dir, type)
  return type
}

/** Runs `node --check` on one file's source as an ES module; the error's place when it fails. */
async function check(file, env) {
  const source = await readFile(file)
  const child = spawn(process.execPath, ['--check', '--input-type=module', '-'], {
    env,
    stdio: ['pipe', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  child.stdin.on('error', () => {})
  child.stdin.end(source)
  const timer = setTimeout(() => child.kill('SIGKILL'), CHECK_TIMEOUT_MS)
  const code = await new Promise((resolve) => {
    child.on('error', () => resolve(-1))
    child.on('close', (c) => resolve(c))
  })
  clearTimeout(timer)
  if (code === 0) return null
  // "[stdin]:3\n<source line>\n  ^^^\n\nSyntaxError: Unexpected token ..."
  const m = /^\[stdin\]:(\d+)\r?\n([\s\S]*?)\r?\n\r?\n(?:SyntaxError: )?(.*)/.exec(stderr)
  if (m === null) return null
  return { file, line: Number(m[1]), excerpt: m[2] ?? '', message: m[3] ?? '' }
}
