import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { startSim } from '../fixtures/kube.js'
import { waitFor } from '../fixtures/wait.js'

const CODE = 'export default () => ({ pid: process.pid })'

async function idleOf(p: TestPlatform, fn: string): Promise<number | undefined> {
  const res = await p.api('GET', '/v1/pools')
  return (res.json['pools'] as Array<{ pool: string; idle: number }>).find((x) => x.pool.startsWith(`fn:${fn}@`))?.idle
}

function instancesOf(p: TestPlatform, fn: string): string[] {
  return [...p.pools.instances()].filter((i) => i.fn === fn && i.state !== 'dead').map((i) => i.id).sort()
}

t.test('the platform id is derived from the data directory and recorded in it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-id-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const { platformIdentity } = await import('../../common/platform-id.js')
  const a = await platformIdentity(dir)
  t.match(a.id, /^[0-9a-f]{12}$/)
  t.same(JSON.parse(await readFile(join(dir, 'platform.json'), 'utf8')), a, 'recorded in platform.json')
  t.same(await platformIdentity(dir), a, 'the same directory keeps its id')
  const other = await mkdtemp(join(tmpdir(), 'kdl-id-'))
  t.teardown(() => rm(other, { recursive: true, force: true }))
  t.not((await platformIdentity(other)).id, a.id, 'another directory gets another id')
})

for (const backend of BACKENDS) {
  t.test(`two platforms on one host leave each other alone (${backend} backend)`, async (t) => {
    // On kubernetes: two platforms on one cluster, in one namespace, told apart by their platform id.
    const cluster: Record<string, string> = backend === 'kubernetes' ? { KINDLING_KUBECONFIG: (await startSim(t)).kubeconfigPath } : {}
    const a = await startPlatform(t, { KINDLING_BACKEND: backend, ...cluster })
    t.equal((await a.deploy('keep', { runtime: 'node', code: CODE, mode: 'persistent', prewarm: 2 })).status, 201)
    await waitFor(async () => (await idleOf(a, 'keep')) === 2, 'the first platform\'s prewarm pool to be full')
    const before = instancesOf(a, 'keep')
    t.equal(before.length, 2)

    // A second platform with its own data directory starts (and reaps its own orphans), serves, and stops.
    const b = await startPlatform(t, { KINDLING_BACKEND: backend, ...cluster })
    t.equal((await b.deploy('other', { runtime: 'node', code: CODE, mode: 'persistent', prewarm: 1 })).status, 201)
    t.equal((await b.invoke('other')).status, 200)
    t.same(instancesOf(a, 'keep'), before, 'the second platform\'s start-up reaped none of the first one\'s instances')
    await b.close()

    t.same(instancesOf(a, 'keep'), before, 'nor did its shutdown')
    t.equal(await idleOf(a, 'keep'), 2, 'the first platform\'s pool is still full')
    const res = await a.invoke('keep')
    t.equal(res.status, 200)
    t.equal(res.headers['x-kindling-start'], 'prewarmed', 'and its next call is served by a prewarmed instance')
  })
}
