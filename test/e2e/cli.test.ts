import { availableParallelism } from 'node:os'
import t from 'tap'
import { runCli } from '../../cli/main.js'
import { startPlatform } from '../fixtures/platform.js'

function sink(): { write(s: string): boolean; text(): string } {
  let buf = ''
  return { write: (s: string) => { buf += s; return true }, text: () => buf }
}

t.test('the CLI drives a real platform: deploy, invoke, list, pools, events, delete', async (t) => {
  const p = await startPlatform(t)
  const cli = async (...argv: string[]): Promise<{ code: number; out: string; err: string }> => {
    const out = sink()
    const err = sink()
    const code = await runCli(argv, { stdout: out, stderr: err, env: { KINDLING_URL: p.url } })
    return { code, out: out.text(), err: err.text() }
  }
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
