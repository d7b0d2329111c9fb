import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { isMap, isScalar, LineCounter, parseDocument, type Node, type YAMLMap } from 'yaml'
import { assertName, FunctionBody, functionBodyProblems, runtimeBodyProblems } from '../common/spec.js'
import { CodeError, packCode } from './code-pack.js'
import { CliError } from './http.js'

/** The apiVersion a project file declares. */
export const PROJECT_API_VERSION = 'kindling/v1'
/** Keys a project will hold once the platform has them (issue 14); refused clearly until then. */
const NOT_YET = ['triggers', 'workflows']
/** A function's keys: the deploy body's (`code` is a path here, `archive` is what it becomes), and one of the CLI's. */
const FUNCTION_KEYS = [...Object.keys(FunctionBody.properties).filter((k) => k !== 'archive'), 'includeNodeModules']

/** A project file read, checked and its code packed: the body of `POST /v1/apply`, and where each entry is in the file. */
export interface Project {
  file: string
  functions: Record<string, Record<string, unknown>>
  runtimes: Record<string, unknown>
  /** `file:line:col` of an entry's field (`[]`: the entry's name; `archive` is the `code` key). */
  where(kind: string, name: string | undefined, field: readonly string[] | undefined): string
}

/** A project file with problems: every one of them, each `file:line:col: message`. */
export class ProjectError extends CliError {
  readonly lines: string[]
  constructor(file: string, lines: string[]) {
    super(`error KDL_ERR_BAD_SPEC: ${file}: ${lines.length} ${lines.length === 1 ? 'problem' : 'problems'}, nothing was applied\n${lines.join('\n')}`)
    this.name = 'ProjectError'
    this.lines = lines
  }
}

/**
 * Reads a project file (issue 14): YAML with `apiVersion: kindling/v1`, `functions:` (name → deploy body, `code` a
 * path relative to the file) and `runtimes:` (name → runtime body). Checked with the platform's own validation;
 * every problem is reported at once, at its line, and nothing is packed into a request while any exists.
 */
export async function loadProject(file: string, opts: { note?: (line: string) => void } = {}): Promise<Project> {
  const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new CliError(`error: ${file}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`)
  })
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true })
  const at = (node: Node | null | undefined): string => {
    const { line, col } = lc.linePos(node?.range?.[0] ?? 0)
    return `${file}:${line}:${col}`
  }
  const problems: Array<{ offset: number; line: string }> = []
  const bad = (node: Node | null | undefined, message: string): void => {
    problems.push({ offset: node?.range?.[0] ?? 0, line: `${at(node)}: ${message}` })
  }
  for (const e of doc.errors) {
    const { line, col } = lc.linePos(e.pos[0])
    problems.push({ offset: e.pos[0], line: `${file}:${line}:${col}: ${e.message.split('\n')[0]}` })
  }
  const fail = (): ProjectError => new ProjectError(file, problems.sort((a, b) => a.offset - b.offset).map((p) => p.line))
  if (problems.length > 0) throw fail()

  const root = doc.contents
  const functions: Project['functions'] = {}
  const runtimes: Project['runtimes'] = {}
  const fnNodes = new Map<string, YAMLMap.Parsed | YAMLMap>()
  const fnKeys = new Map<string, Node>()
  const rtNodes = new Map<string, YAMLMap>()
  const rtKeys = new Map<string, Node>()
  const packing: Array<Promise<void>> = []
  if (!isMap(root)) {
    bad(root, `a project file is a map: apiVersion: ${PROJECT_API_VERSION}, functions, runtimes`)
    throw fail()
  }
  let version: unknown
  for (const pair of root.items) {
    const key = pair.key as Node | null
    const name = isScalar(key) ? String(key.value) : ''
    const value = pair.value as Node | null
    if (name === 'apiVersion') {
      version = isScalar(value) ? value.value : undefined
      if (version !== PROJECT_API_VERSION) bad(value ?? key, `apiVersion must be ${PROJECT_API_VERSION}`)
    } else if (name === 'functions' || name === 'runtimes') {
      if (value === null || (isScalar(value) && value.value === null)) continue
      if (!isMap(value)) { bad(value, `${name} must be a map of name → spec`); continue }
      for (const entry of value.items) {
        const k = entry.key as Node | null
        const entryName = isScalar(k) ? String(k.value) : ''
        const spec = entry.value as Node | null
        try {
          assertName(name === 'functions' ? 'function' : 'runtime', entryName)
        } catch (err) {
          bad(k, (err as Error).message)
          continue
        }
        if (!isMap(spec)) { bad(spec ?? k, `${name === 'functions' ? 'function' : 'runtime'} "${entryName}" must be a map of its fields`); continue }
        if (name === 'functions') {
          fnNodes.set(entryName, spec)
          fnKeys.set(entryName, k!)
          checkFunction(entryName, k!, spec)
        } else {
          rtNodes.set(entryName, spec)
          rtKeys.set(entryName, k!)
          const body = spec.toJSON() as unknown
          for (const p of runtimeBodyProblems(body)) bad(fieldNode(spec, p.path) ?? k, `runtime "${entryName}": ${p.message}`)
          runtimes[entryName] = body
        }
      }
    } else if (NOT_YET.includes(name)) {
      bad(key, `"${name}" is not supported yet by this platform`)
    } else {
      bad(key, `unknown key "${name}" (a project file holds apiVersion, functions, runtimes)`)
    }
  }
  if (version === undefined && !root.items.some((p) => isScalar(p.key) && p.key.value === 'apiVersion')) {
    bad(root, `apiVersion: ${PROJECT_API_VERSION} is missing`)
  }

  function checkFunction(name: string, keyNode: Node, spec: YAMLMap): void {
    const body = spec.toJSON() as Record<string, unknown>
    for (const pair of spec.items) {
      const k = pair.key as Node | null
      const field = isScalar(k) ? String(k.value) : ''
      if (!FUNCTION_KEYS.includes(field)) {
        bad(k, `function "${name}": unknown field "${field}"${field === 'archive' ? ' (code names a file, an archive or a directory)' : ''}`)
        delete body[field]
      }
    }
    const { code, includeNodeModules, ...rest } = body
    if (includeNodeModules !== undefined && typeof includeNodeModules !== 'boolean') {
      bad(fieldNode(spec, ['includeNodeModules']), `function "${name}": includeNodeModules must be true or false`)
    }
    for (const p of functionBodyProblems(rest)) bad(fieldNode(spec, p.path) ?? keyNode, `function "${name}": ${p.message}`)
    const codeNode = spec.get('code', true) as Node | undefined
    if (code === undefined) {
      bad(keyNode, `function "${name}": code is missing (a path to an ES module file, a .tar.gz or a directory, relative to ${file})`)
      return
    }
    if (typeof code !== 'string' || code === '') {
      bad(codeNode, `function "${name}": code must be a path`)
      return
    }
    const path = resolve(dirname(file), code)
    const entrypoint = typeof rest['entrypoint'] === 'string' ? rest['entrypoint'] : undefined
    packing.push(packCode(path, entrypoint, { includeNodeModules: includeNodeModules === true, note: (line) => opts.note?.(`${name}: ${line}`) }).then(
      (packed) => { functions[name] = { ...rest, ...packed } },
      (err: unknown) => {
        if (!(err instanceof CodeError)) throw err
        bad(codeNode, `function "${name}": code ${code}${err.message.startsWith('is ') ? ' ' : ': '}${err.message}`)
      },
    ))
  }

  await Promise.all(packing)
  if (problems.length > 0) throw fail()
  return {
    file,
    functions,
    runtimes,
    where: (kind, name, field) => {
      const nodes = kind === 'function' ? fnNodes : kind === 'runtime' ? rtNodes : undefined
      const keys = kind === 'function' ? fnKeys : kind === 'runtime' ? rtKeys : undefined
      const spec = name === undefined ? undefined : nodes?.get(name)
      const keyNode = name === undefined ? undefined : keys?.get(name)
      const path = (field ?? []).map((f, i) => (i === 0 && f === 'archive' ? 'code' : f))
      return at((spec === undefined || path.length === 0 ? undefined : fieldNode(spec, path)) ?? keyNode ?? root)
    },
  }
}

/** The key node of a field (`['env', 'X']`: the key `X` under `env`), or undefined when the file lacks it. */
function fieldNode(map: YAMLMap, path: readonly string[]): Node | undefined {
  let current: unknown = map
  let found: Node | undefined
  for (const segment of path) {
    if (!isMap(current)) return found
    const pair = current.items.find((p) => isScalar(p.key) && String(p.key.value) === segment)
    if (pair === undefined) return found
    found = pair.key as Node
    current = pair.value
  }
  return found
}
