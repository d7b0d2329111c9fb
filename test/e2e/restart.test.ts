import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { processesMentioning, startUp } from '../fixtures/platform.js'

async function call(url: string): Promise<{ status: number; text: string }> {
  const res = await request(url)
  return { status: res.statusCode, text: await res.body.text() }
}

t.test('a restarted platform still serves its functions and leaves no orphan process', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'kdl-restart-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))

  const first = await startUp(dataDir)
  const put = await request(`${first.url}/v1/functions/hi`, {
    method: 'PUT', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ runtime: 'node', code: 'export default () => "still here"', mode: 'persistent', prewarm: 1 }),
  })
  t.equal(put.statusCode, 201)
  await put.body.text()
  t.equal((await call(`${first.url}/fn/hi`)).text, 'still here')
  const instancesBefore = await processesMentioning(dataDir)
  t.ok(instancesBefore.length >= 1, 'instances run while the platform is up')

  // A crash, not a clean stop: nothing gets the chance to stop the instances.
  first.child.kill('SIGKILL')
  await once(first.child, 'exit')
  t.ok((await processesMentioning(dataDir)).length >= 1, 'the killed platform left its instances behind')

  const second = await startUp(dataDir)
  t.teardown(async () => {
    if (second.child.exitCode === null) {
      second.child.kill('SIGTERM')
      await once(second.child, 'exit')
    }
  })
  const left = (await processesMentioning(dataDir)).filter((pid) => instancesBefore.includes(pid))
  t.same(left, [], 'the orphans of the first run were reaped at start-up')
  const again = await call(`${second.url}/fn/hi`)
  t.equal(again.status, 200)
  t.equal(again.text, 'still here', 'the function deployed before the crash answers')

  second.child.kill('SIGTERM')
  const [code] = await once(second.child, 'exit') as [number | null]
  t.equal(code, 0, 'kindling up exits 0 on SIGTERM')
  const leftover = await processesMentioning(dataDir)
  const describe = await Promise.all(leftover.map(async (pid) => {
    const { readFile } = await import('node:fs/promises')
    const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
    return `${pid} [${stat.slice(stat.lastIndexOf(')') + 2).split(' ').slice(0, 2).join(' ')}] ${cmd.slice(0, 300)}`
  }))
  t.same(leftover, [], `a clean stop leaves no instance running ${describe.join(' | ')}`)
})
