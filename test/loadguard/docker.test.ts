import { readFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import Docker from 'dockerode'
import t from 'tap'
import { startPlatform } from '../fixtures/platform.js'
import { FAST_GUARD, cgroupFile, instanceById, keepCalling, waitFor, waitForEvent } from './fixtures/helpers.js'

const HOG = 'export default (e) => { const end = Date.now() + Number(e.query.ms ?? 4000); while (Date.now() < end) {} return "spun" }'

// The test command starts a Docker engine (scripts/ensure-docker.sh); a missing engine fails this test rather than skipping it.
t.test('on the docker backend a function that spins the CPU is throttled (docker update lowers its cgroup quota), then quarantined under /kindling-quarantine', async (t) => {
  const p = await startPlatform(t, { ...FAST_GUARD, KINDLING_BACKEND: 'docker' })
  t.equal((await p.deploy('hog', { runtime: 'node', mode: 'ephemeral', timeoutMs: 30_000, code: HOG })).status, 201)
  const caller = keepCalling(p, 'hog')
  t.teardown(() => caller.stop())

  const throttle = await waitForEvent(p, 'loadguard-throttle', 'hog', 60_000)
  const inst = instanceById(p, throttle.instance)
  t.ok(inst, 'the throttled container is still running its call')
  if (inst === undefined) return
  t.match(inst.handle.cgroup?.paths['cpu'], /\/docker\/[0-9a-f]{64}$/, 'a docker container cgroup')
  t.equal(await cgroupFile(inst, 'cpu', 'cpu.cfs_quota_us'), '25000', 'cpu.cfs_quota_us lowered from 100000 to a quarter')
  const info = await new Docker({ socketPath: p.config.KINDLING_DOCKER_SOCKET }).getContainer(inst.handle.cgroup?.paths['cpu']?.split('/').at(-1) ?? '').inspect()
  t.equal(info.HostConfig.NanoCpus, 0.25e9, 'the engine records the lowered limit')
  t.match(throttle.data, { reason: 'cpu', originalQuotaCores: 1, throttledToCores: 0.25 })

  await waitForEvent(p, 'loadguard-quarantine', 'hog', 60_000)
  const next = await waitFor(() => [...p.pools.instances()].find((i) => i.fn === 'hog' && i.quarantined), 'a quarantined hog container', 60_000)
  const cpuDir = next.handle.cgroup?.paths['cpu'] ?? ''
  t.match(cpuDir, /\/kindling-quarantine\/[0-9a-f]{64}$/, 'its next container runs under the quarantine cgroup parent')
  t.equal((await readFile(`${dirname(cpuDir)}/cpu.shares`, 'utf8')).trim(), '64', 'whose CPU share is small')
  t.ok((await caller.stop()).every((s) => s === 200), 'every call of the hog answered')
})
