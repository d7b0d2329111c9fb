import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { runCli } from '../../cli/main.js'
import { loadProject } from '../../cli/project-file.js'
import { writeCodeDir } from '../fixtures/code.js'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'

function sink(): { write(s: string | Uint8Array): boolean; text(): string } {
  let buf = ''
  return { write: (s) => { buf += typeof s === 'string' ? s : Buffer.from(s).toString('utf8'); return true }, text: () => buf }
}

async function workdir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-apply-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

function cliOf(p: TestPlatform): (...argv: string[]) => Promise<{ code: number; out: string; err: string }> {
  return async (...argv) => {
    const out = sink()
    const err = sink()
    const code = await runCli(argv, { stdout: out, stderr: err, env: { KINDLING_URL: p.url } })
    return { code, out: out.text(), err: err.text() }
  }
}

async function functionNames(p: TestPlatform): Promise<string[]> {
  const list = (await p.api('GET', '/v1/functions')).json['functions'] as Array<{ name: string }>
  return list.map((f) => f.name).sort()
}

const PROJECT = `apiVersion: kindling/v1
functions:
  hello:
    runtime: node
    code: ./hello.js
    mode: persistent
  api:
    runtime: node
    code: ./api
    env:
      GREETING: hi
runtimes:
  node:
    poolSize: 1
`

t.test('apply creates from a project file; applied again it says "no changes"; diff exits 1 on differences, 0 on none', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOf(p)
  const dir = await workdir(t)
  await writeFile(join(dir, 'hello.js'), 'export default () => "hello from a file"')
  await writeCodeDir(join(dir, 'api'), { 'index.js': 'import { word } from "./lib/word.js"; export default () => word + " " + process.env.GREETING', 'lib/word.js': 'export const word = "api"' })
  const file = join(dir, 'kindling.yaml')
  await writeFile(file, PROJECT)

  const before = await cli('diff', '-f', file)
  t.equal(before.code, 1, before.err)
  t.equal(before.out, '+ function api (v1)\n+ function hello (v1)\n')
  t.same(await functionNames(p), [], 'diff changes nothing')

  const first = await cli('apply', '-f', file)
  t.equal(first.code, 0, first.err)
  t.equal(first.out, '+ function api (v1)\n+ function hello (v1)\n')
  t.equal((await p.invoke('hello')).text, 'hello from a file')
  t.equal((await p.invoke('api')).text, 'api hi')

  // The directory is packed again from scratch, its files rewritten with new mtimes: still the same code.
  await writeCodeDir(join(dir, 'api'), { 'lib/word.js': 'export const word = "api"' })
  const again = await cli('apply', '-f', file)
  t.equal(again.code, 0, again.err)
  t.equal(again.out, 'no changes\n')
  const same = await cli('diff', '-f', file)
  t.equal(same.code, 0)
  t.equal(same.out, 'no changes\n')

  await writeFile(file, PROJECT.replace('GREETING: hi', 'GREETING: bye'))
  await writeCodeDir(join(dir, 'api'), { 'lib/word.js': 'export const word = "API"' })
  const changed = await cli('diff', '-f', file)
  t.equal(changed.code, 1)
  t.equal(changed.out, '~ function api: env, code (v2)\n')
  const dry = await cli('apply', '-f', file, '--dry-run')
  t.equal(dry.code, 0)
  t.equal(dry.out, '~ function api: env, code (v2)\n(dry run: nothing was applied)\n')
  t.equal((await p.invoke('api')).text, 'api hi', 'a dry run applies nothing')
  const update = await cli('apply', '-f', file)
  t.equal(update.out, '~ function api: env, code (v2)\n')
  t.equal((await p.invoke('api')).text, 'API bye')
})

t.test('--prune deletes the functions the file no longer names; without it they stay', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOf(p)
  const dir = await workdir(t)
  await writeFile(join(dir, 'a.js'), 'export default () => "a"')
  const file = join(dir, 'kindling.yaml')
  await writeFile(file, 'apiVersion: kindling/v1\nfunctions:\n  a: { runtime: node, code: a.js }\n')
  t.equal((await p.deploy('stray', { runtime: 'node', code: 'export default () => 1' })).status, 201)

  const keep = await cli('apply', '-f', file)
  t.equal(keep.out, '+ function a (v1)\n')
  t.same(await functionNames(p), ['a', 'stray'])
  const diff = await cli('diff', '-f', file, '--prune')
  t.equal(diff.code, 1)
  t.equal(diff.out, '- function stray\n')
  const pruned = await cli('apply', '-f', file, '--prune')
  t.equal(pruned.code, 0, pruned.err)
  t.equal(pruned.out, '- function stray\n')
  t.same(await functionNames(p), ['a'])
  t.equal((await cli('diff', '-f', file, '--prune')).code, 0)
})

t.test('a file with a YAML syntax error is refused with its line, nothing sent', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOf(p)
  const dir = await workdir(t)
  const file = join(dir, 'kindling.yaml')
  await writeFile(file, 'apiVersion: kindling/v1\nfunctions:\n  hello:\n    runtime: node\n   code: [unclosed\n')
  const r = await cli('apply', '-f', file)
  t.equal(r.code, 1)
  t.equal(r.out, '')
  t.match(r.err, new RegExp(`^error KDL_ERR_BAD_SPEC: ${file.replaceAll('.', '\\.')}: \\d+ problems?, nothing was applied\n`))
  t.match(r.err, new RegExp(`${file.replaceAll('.', '\\.')}:5:\\d+: `), 'the line of the error')
  t.same(await functionNames(p), [])
})

t.test('every problem of a file at once, each at its line:col; nothing applied', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOf(p)
  const dir = await workdir(t)
  await writeFile(join(dir, 'ok.js'), 'export default () => "ok"')
  const file = join(dir, 'kindling.yaml')
  await writeFile(file, [
    'apiVersion: kindling/v1',       // 1
    'functions:',                    // 2
    '  good:',                       // 3
    '    runtime: node',             // 4
    '    code: ok.js',               // 5
    '  bad:',                        // 6
    '    runtime: node',             // 7
    '    code: ok.js',               // 8
    '    prewarm: 500',              // 9
    '    mode: forever',             // 10
    '    colour: red',               // 11
    '  lost:',                       // 12
    '    runtime: node',             // 13
    '    code: ./missing',           // 14
    'triggers:',                     // 15
    '  nightly: {}',                 // 16
    '',
  ].join('\n'))
  const r = await cli('apply', '-f', file)
  t.equal(r.code, 1)
  const lines = r.err.trimEnd().split('\n')
  t.equal(lines[0], `error KDL_ERR_BAD_SPEC: ${file}: 5 problems, nothing was applied`)
  t.same(lines.slice(1), [
    `${file}:9:5: function "bad": prewarm must be <= 64`,
    `${file}:10:5: function "bad": mode must be one of "ephemeral", "recycle", "persistent"`,
    `${file}:11:5: function "bad": unknown field "colour"`,
    `${file}:14:11: function "lost": code ./missing: no such file or directory`,
    `${file}:15:1: "triggers" is not supported yet by this platform`,
  ].sort((a, b) => Number(a.split(':')[1]) - Number(b.split(':')[1])))
  t.same(await functionNames(p), [], 'the good function is not deployed either')
})

t.test('what only the platform can tell (the code does not load, an unknown runtime) is put on the file\'s lines too', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOf(p)
  const dir = await workdir(t)
  await writeFile(join(dir, 'ok.js'), 'export default () => "ok"')
  await writeFile(join(dir, 'broken.js'), 'export default () => { not javascript')
  const file = join(dir, 'kindling.yaml')
  await writeFile(file, 'apiVersion: kindling/v1\nfunctions:\n  good:\n    runtime: node\n    code: ok.js\n  broken:\n    runtime: node\n    code: broken.js\n')
  const r = await cli('apply', '-f', file)
  t.equal(r.code, 1)
  t.match(r.err, /^error KDL_ERR_LOAD_FAILED: a trial load failed, nothing was applied\n/)
  t.match(r.err, new RegExp(`\n${file.replaceAll('.', '\\.')}:8:5: function "broken": `))
  t.same(await functionNames(p), [], 'the function that loads is not deployed either')

  await writeFile(file, 'apiVersion: kindling/v1\nfunctions:\n  good:\n    runtime: cobol\n    code: ok.js\n')
  const rt = await cli('diff', '-f', file)
  t.equal(rt.code, 1)
  t.match(rt.err, new RegExp(`^error KDL_ERR_BAD_SPEC: 1 problem in the project, nothing was applied\n${file.replaceAll('.', '\\.')}:4:5: function "good": unknown runtime "cobol"`))
})

t.test('examples/kindling.yaml is a valid project file', async (t) => {
  const project = await loadProject('examples/kindling.yaml')
  t.same(Object.keys(project.functions).sort(), ['hello', 'uptime'])
  t.match(project.functions['hello'], { runtime: 'node', code: /export default/, prewarm: 1 })
  t.match(project.functions['uptime'], { runtime: 'node', archive: /^[A-Za-z0-9+/=]+$/, entrypoint: 'index.js', env: { TZ: 'UTC' } })
  t.same(project.runtimes, { node: { poolSize: 2 } })
})
