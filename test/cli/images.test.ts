import t from 'tap'
import { runCli } from '../../cli/main.js'

function sink(): { write(s: string): boolean; text(): string } {
  let buf = ''
  return { write: (s: string) => { buf += s; return true }, text: () => buf }
}

t.test('kindling images build makes the runtime image on the real engine, then finds it up to date', async (t) => {
  const out = sink()
  const err = sink()
  const first = await runCli(['images', 'build'], { stdout: out, stderr: err, env: {} })
  t.equal(first, 0, err.text())
  t.match(out.text(), /kindling\/runtime-node:[0-9a-f]{12}/)
  const again = sink()
  t.equal(await runCli(['images', 'build'], { stdout: again, stderr: sink(), env: {} }), 0)
  t.match(again.text(), /is up to date/)
})
