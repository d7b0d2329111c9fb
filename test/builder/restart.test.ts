import { once } from 'node:events'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { archiveOf } from '../fixtures/code.js'
import { TestRegistry } from '../../bench/npm-registry.js'
import { processesMentioning, startUp } from '../fixtures/platform.js'

async function json(url: string, method = 'GET', body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await request(url, { method: method as 'GET', headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? null : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, json: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

t.test('a platform killed during a build leaves no half-written build, no orphan, and the previous version serving', async (t) => {
  const registry = await TestRegistry.start()
  t.teardown(() => registry.close())
  await registry.publish({ name: 'kdl-dep', version: '1.0.0', main: 'index.js' }, { 'index.js': "module.exports = 'from kdl-dep'\n" })
  const dataDir = await mkdtemp(join(tmpdir(), 'kdl-build-restart-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))

  const first = await startUp(dataDir, { KINDLING_BUILD_REGISTRY: registry.url })
  t.teardown(() => { if (first.child.exitCode === null) first.child.kill('SIGKILL') })
  t.equal((await json(`${first.url}/v1/functions/f`, 'PUT', { runtime: 'node', code: "export default () => 'v1'" })).status, 201)
  const pkg = { dependencies: { 'kdl-dep': '1.0.0' }, scripts: { postinstall: "node -e \"console.log('installing for ever'); setInterval(() => {}, 1000)\"" } }
  const put = await json(`${first.url}/v1/functions/f`, 'PUT', {
    runtime: 'node', archive: await archiveOf({ 'package.json': JSON.stringify(pkg), 'index.js': "import d from 'kdl-dep'\nexport default () => d\n" }),
  })
  t.equal(put.status, 202)
  const id = String((put.json['build'] as Record<string, unknown>)['id'])

  // Follow the log until the install script runs: the build is then in the middle of writing node_modules.
  const log = await request(`${first.url}/v1/builds/${id}/log`)
  let seen = ''
  for await (const chunk of log.body) {
    seen += String(chunk)
    if (seen.includes('installing for ever')) break
  }
  log.body.destroy()
  t.match(seen, /installing for ever/)
  t.ok((await processesMentioning(id)).length > 0, 'the build runs')

  first.child.kill('SIGKILL')
  await once(first.child, 'exit')

  const second = await startUp(dataDir, { KINDLING_BUILD_REGISTRY: registry.url })
  t.teardown(async () => {
    if (second.child.exitCode === null) {
      second.child.kill('SIGTERM')
      await once(second.child, 'exit')
    }
  })
  t.same(await processesMentioning(id), [], 'the orphaned build was reaped at start-up')
  const record = await json(`${second.url}/v1/builds/${id}`)
  t.match(record.json, { state: 'failed', error: { code: 'KDL_ERR_BUILD_FAILED', reason: 'interrupted' } })
  t.same(await readdir(join(dataDir, 'builds', 'out')), [], 'no build output, whole or half')
  t.same(await readdir(join(dataDir, 'builds', 'work')), [], 'nothing left of the build directory')
  const call = await request(`${second.url}/fn/f`)
  t.equal(await call.body.text(), 'v1', 'the previous version serves')

  // Deploying again builds from scratch (the install script now finishes).
  const again = await json(`${second.url}/v1/functions/f?wait=true`, 'PUT', {
    runtime: 'node', archive: await archiveOf({ 'package.json': JSON.stringify({ dependencies: { 'kdl-dep': '1.0.0' } }), 'index.js': "import d from 'kdl-dep'\nexport default () => d\n" }),
  })
  t.equal(again.status, 200, JSON.stringify(again.json))
  t.equal(await (await request(`${second.url}/fn/f`)).body.text(), 'from kdl-dep')
})
