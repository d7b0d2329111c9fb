import { availableParallelism } from 'node:os'
import t from 'tap'
import { runCli } from '../../cli/main.js'
import { startPlatform } from '../fixtures/platform.js'

function sink(): { write(s: string): boolean; text(): string } {
  let buf = ''
  return { write: (s: string) => { buf += s; return true }, text: () => buf }
}

/** The CLI run in-process against `url`: exit code, stdout, stderr. */
function cliOn(url: string): (...argv: string[]) => Promise<{ code: number; out: string; err: string }> {
  return async (...argv) => {
    const out = sink()
    const err = sink()
    const code = await runCli(argv, { stdout: out, stderr: err, env: { KINDLING_URL: url } })
    return { code, out: out.text(), err: err.text() }
  }
}

t.test('the CLI drives a real platform: deploy, invoke, list, pools, events, delete', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOn(p.url)
  const dep = await cli('fn', 'deploy', 'hello', '--runtime', 'node', '--code', 'examples/hello.js', '--mode', 'persistent')
  t.equal(dep.code, 0, dep.err)
  t.match(dep.out, /deployed hello version 1/)
  const inv = await cli('fn', 'invoke', 'hello', '--path', '?name=cli')
  t.equal(inv.code, 0, inv.err)
  t.equal(inv.out.trim(), 'hello, cli')
  t.match((await cli('fn', 'list')).out, /hello\s+node\s+1\s+persistent/)
  const pools = await cli('pools')
  t.match(pools.out, /generic:node\s+1/, 'the generic pool with its target')
  t.match(pools.out, new RegExp(`instance starts: \\d+ running, \\d+ waiting \\(at most ${8 * availableParallelism()} at once\\)`), 'the start gate: the process backend\'s default, 8 per CPU')
  t.match(pools.out, /hello\s+1\s+1\s+0/, 'the function with its one instance')
  t.match((await cli('events')).out, /deployed\s+hello\s+version 1 deployed version=1/)
  await p.deploy('other', { runtime: 'node', code: 'export default () => 1' })
  t.notMatch((await cli('events', '--fn', 'hello')).out, /other/, 'the server filters by function')
  t.equal((await cli('fn', 'delete', 'hello')).code, 0)
  const gone = await cli('fn', 'get', 'hello')
  t.equal(gone.code, 1)
  t.match(gone.err, /error KDL_ERR_FN_NOT_FOUND: function "hello" is not deployed/)
})

t.test('the CLI drives workflows on a real platform: apply a YAML file, run, runs, show, cancel', async (t) => {
  const p = await startPlatform(t)
  const cli = cliOn(p.url)
  t.equal((await cli('fn', 'deploy', 'hello', '--runtime', 'node', '--code', 'examples/hello.js')).code, 0)
  const applied = await cli('wf', 'apply', '-f', 'examples/workflows/greet.yaml')
  t.equal(applied.code, 0, applied.err)
  t.match(applied.out, /workflow greet created \(version 1\)/)
  t.match((await cli('wf', 'apply', '-f', 'examples/workflows/greet.yaml')).out, /unchanged \(version 1\)/)
  const ran = await cli('wf', 'run', 'greet', '-d', '{"names":["ada","bob","cy"]}')
  t.equal(ran.code, 0, ran.err)
  t.same(JSON.parse(ran.out), { greetings: ['hello, ada\n', 'hello, bob\n', 'hello, cy\n'], crowd: true })
  const runs = await cli('wf', 'runs', 'greet')
  t.match(runs.out, /^ID\s+STATUS\s+VERSION/)
  const id = /^(\S+)\s+succeeded/m.exec(runs.out)?.[1]
  t.ok(id, 'the run is listed as succeeded')
  const show = await cli('wf', 'show', String(id))
  t.equal(show.code, 0, show.err)
  t.match(show.out, /Greet\s+map\s+succeeded/)
  t.match(show.out, /Greet\[2\]\/task\s+task\s+succeeded\s+1/, 'the map item, its one attempt')
  t.match(show.out, /Many\s+pass\s+succeeded/)
  const bad = await cli('wf', 'run', 'greet', '-d', '{"names":"not a list"}')
  t.equal(bad.code, 1)
  t.match(bad.err, /failed: KDL_ERR_WF_EXPRESSION_FAILED/)
  t.equal((await cli('wf', 'cancel', String(id))).code, 1, 'a finished run cannot be cancelled')
})
