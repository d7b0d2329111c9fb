import { randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { buildAgentServer } from '../../agent/server.js'
import { busyPod } from '../fixtures/busy-pod.js'
import { waitFor } from '../fixtures/wait.js'

// The node agent's server over a real cgroup, laid out as a kubelet's cgroupfs driver does
// (`<parent>/kubepods/burstable/pod<uid>/<container id>`), made with the cgroups driver (needs root).

const TOKEN = 'agent-test-token-0123456789'

t.test('sample, throttle, auth and unknown pods over a real cgroup', async (t) => {
  const { driver, top, uid, cid, ref, child } = await busyPod(t, 'kindling-agent-test', 'burstable', { cpu: 1, memoryBytes: 256 * 2 ** 20, pidsLimit: 64 })

  const agent = buildAgentServer({ token: TOKEN, node: 'node-a', log: pino({ level: 'silent' }) })
  const url = await agent.listen('127.0.0.1', 0)
  t.teardown(() => agent.close())
  const call = async (method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; json: any }> => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    })
    return { status: res.status, json: await res.json() }
  }

  const health = await call('GET', '/healthz', undefined, null)
  t.equal(health.status, 200, '/healthz needs no token')
  t.match(health.json, { ok: true, node: 'node-a', cgroup: { root: '/sys/fs/cgroup', version: driver.version } })
  t.equal((await call('POST', '/v1/sample', { pods: [{ uid }] }, null)).status, 401, 'a sample without the token: 401')
  const wrong = await call('PUT', `/v1/pods/${uid}/cpu`, { cores: 0.1 }, 'wrong-token-wrong-token')
  t.equal(wrong.status, 401, 'a throttle with a wrong token: 401')
  t.equal(wrong.json.code, 'KDL_ERR_UNAUTHORIZED')

  const first = await call('POST', '/v1/sample', { pods: [{ uid, containerId: `containerd://${cid}` }] })
  t.equal(first.status, 200)
  const s1 = first.json.pods[0]
  t.equal(s1.uid, uid)
  t.equal(s1.containerId, cid)
  t.match(s1.limits, { cpuCores: 1, memoryBytes: 256 * 2 ** 20, pids: 64 }, 'the container group\'s limits')
  t.ok(s1.demand.some(([pid]: [number, number]) => pid === child.pid), 'the busy child\'s demand is read')
  const s2 = await waitFor(async () => {
    const s = (await call('POST', '/v1/sample', { pods: [{ uid }] })).json.pods[0]
    return s.stats.cpuUsageNs > s1.stats.cpuUsageNs + 50e6 && s
  }, 'cpuUsageNs rising by 50 ms of CPU')
  t.ok(s2.stats.cpuUsageNs > s1.stats.cpuUsageNs, `cpuUsageNs rises: ${s1.stats.cpuUsageNs} → ${s2.stats.cpuUsageNs}`)
  t.equal(s2.containerId, cid, 'without a container id, the pod\'s one container is sampled')

  const quotaFile = driver.version === 1 ? join(ref.paths['cpu'] as string, 'cpu.cfs_quota_us') : join(ref.paths['unified'] as string, 'cpu.max')
  const quota = async (): Promise<string> => (await readFile(quotaFile, 'utf8')).trim()
  t.equal(await quota(), driver.version === 1 ? '100000' : '100000 100000', 'one core to start with')
  const put = await call('PUT', `/v1/pods/${uid}/cpu`, { cores: 0.25 })
  t.equal(put.status, 200)
  t.same(put.json, { uid, cores: 0.25, containers: [cid] })
  t.equal(await quota(), driver.version === 1 ? '25000' : '25000 100000', 'the quota file shows the lowered quota')
  const throttled = await waitFor(async () => {
    const s = (await call('POST', '/v1/sample', { pods: [{ uid }] })).json.pods[0]
    return s.stats.throttledPeriods > 0 && s
  }, 'throttled periods counted')
  t.ok(throttled.stats.throttledPeriods > 0, 'the kernel throttles it')
  t.equal((await call('PUT', `/v1/pods/${uid}/cpu`, { cores: 0 })).status, 200)
  t.equal(await quota(), driver.version === 1 ? '-1' : 'max 100000', '0 cores: no quota')
  t.equal((await call('PUT', `/v1/pods/${uid}/cpu`, { cores: -1 })).json.code, 'KDL_ERR_BAD_REQUEST', 'negative cores: 400')

  const unknown = randomUUID()
  const mixed = await call('POST', '/v1/sample', { pods: [{ uid: unknown }, { uid }] })
  t.equal(mixed.status, 200, 'a batch answers for every pod')
  t.match(mixed.json.pods[0], { uid: unknown, error: { code: 'KDL_ERR_AGENT_POD_NOT_FOUND' } })
  t.equal(mixed.json.pods[1].uid, uid)
  t.match((await call('POST', '/v1/sample', { pods: [{ uid, containerId: 'f'.repeat(64) }] })).json.pods[0], { error: { code: 'KDL_ERR_AGENT_POD_NOT_FOUND' } }, 'an unknown container: not found')
  const missing = await call('PUT', `/v1/pods/${unknown}/cpu`, { cores: 0.5 })
  t.equal(missing.status, 404)
  t.equal(missing.json.code, 'KDL_ERR_AGENT_POD_NOT_FOUND')
  t.equal((await call('POST', '/v1/sample', { pods: 'x' })).status, 400, 'a bad body: 400')

  child.kill('SIGKILL')
  await driver.destroy(driver.refFor(top, 'kubepods'))
  t.match((await call('POST', '/v1/sample', { pods: [{ uid }] })).json.pods[0], { error: { code: 'KDL_ERR_AGENT_POD_NOT_FOUND' } }, 'gone with its cgroup')
})
