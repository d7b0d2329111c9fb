import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { runCli } from '../../cli/main.js'
import { writeCodeDir } from '../fixtures/code.js'
import { TestRegistry } from '../../bench/npm-registry.js'
import { startPlatform } from '../fixtures/platform.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))

function sink(): { write(s: string): boolean; text(): string } {
  let buf = ''
  return { write: (s: string) => { buf += s; return true }, text: () => buf }
}

t.test('kindling fn deploy of a directory with dependencies shows the build live; kindling builds list|log', async (t) => {
  const registry = await TestRegistry.start()
  t.teardown(() => registry.close())
  await registry.publishDir(join(REPO, 'node_modules', 'ms'))
  const p = await startPlatform(t, { KINDLING_BUILD_REGISTRY: registry.url })
  const cli = async (...argv: string[]): Promise<{ code: number; out: string; err: string }> => {
    const out = sink()
    const err = sink()
    const code = await runCli(argv, { stdout: out, stderr: err, env: { KINDLING_URL: p.url } })
    return { code, out: out.text(), err: err.text() }
  }
  const dir = await mkdtemp(join(tmpdir(), 'kdl-cli-fn-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeCodeDir(dir, {
    'package.json': JSON.stringify({ name: 'greeter', type: 'module', dependencies: { ms: '^2.1.0' } }),
    'index.js': "import ms from 'ms'\nexport default () => 'in ' + ms(3_600_000)\n",
    // A local install the developer made: left out, the platform builds its own.
    'node_modules/ms/package.json': JSON.stringify({ name: 'ms', version: '0.0.1', main: 'index.js' }),
    'node_modules/ms/index.js': "module.exports = () => 'the local copy'\n",
  })
  const dep = await cli('fn', 'deploy', 'greeter', '--runtime', 'node', '--code', dir)
  t.equal(dep.code, 0, dep.err)
  t.match(dep.out, /^deployed greeter version 1$/m)
  t.match(dep.err, /node_modules left out/)
  const id = /building dependencies: build (b-[0-9a-z]+) \(npm install --omit=dev\)/.exec(dep.err)?.[1]
  t.ok(id !== undefined, 'the build is announced with its id')
  t.match(dep.err, /  \| .*added 1 package/, "npm's output, live")
  t.equal((await cli('fn', 'invoke', 'greeter')).out.trim(), 'in 1h', 'the built ms, not the local copy')

  const again = await cli('fn', 'deploy', 'greeter', '--runtime', 'node', '--code', dir)
  t.equal(again.code, 0, again.err)
  t.match(again.err, new RegExp(`dependencies: build ${id} reused \\(nothing installed\\)`))

  const list = await cli('builds', 'list')
  t.match(list.out, new RegExp(`${id}\\s+succeeded\\s+greeter\\s+\\d+ ms\\s+npm install --omit=dev`))
  const log = await cli('builds', 'log', id!)
  t.equal(log.code, 0)
  t.match(log.out, /kindling build: done in \d+ ms/)

  await writeCodeDir(dir, { 'package.json': JSON.stringify({ name: 'greeter', type: 'module', dependencies: { ms: '^2.1.0', 'kdl-missing': '^1.0.0' } }) })
  const bad = await cli('fn', 'deploy', 'greeter', '--runtime', 'node', '--code', dir)
  t.equal(bad.code, 1)
  t.match(bad.err, /  \| .*404/, 'the failing log, as it came')
  t.match(bad.err, /error KDL_ERR_BUILD_FAILED: build b-[0-9a-z]+ failed: npm install failed/)
  t.match(bad.err, /the whole log: kindling builds log b-/)
  t.equal((await cli('fn', 'invoke', 'greeter')).out.trim(), 'in 1h', 'the previous version keeps serving')
  const missing = await cli('builds', 'log', 'b-nosuchbuild')
  t.equal(missing.code, 1)
  t.match(missing.err, /KDL_ERR_BUILD_NOT_FOUND/)
})
