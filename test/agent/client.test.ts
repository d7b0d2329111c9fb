import { randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import t from 'tap'
import { buildAgentServer } from '../../agent/server.js'
import { AgentClient, agentRef } from '../../backends/kubernetes/agents.js'
import { EventLog } from '../../common/events.js'
import { LoadGuard, type GuardedInstance } from '../../loadguard/guard.js'
import { busyPod } from '../fixtures/busy-pod.js'
import { waitFor } from '../fixtures/wait.js'

// The controller's side of the node agents against a real agent server over a real cgroup (root): the guard's reader
// batches a pass into one sample request per agent, throttles through the agent, and an agent that does not answer
// is KDL_ERR_AGENT_UNAVAILABLE — logged once, the sample skipped, the guard's pass goes on.

const TOKEN = 'client-test-token-0123456789'

t.test('the agent-backed reader, setCpu through the agent, and an agent that does not answer', async (t) => {
  const { driver, uid, cid, ref, child } = await busyPod(t, 'kindling-agent-client-test', '', { cpu: 0.5, memoryBytes: 128 * 2 ** 20, pidsLimit: 64 })

  const agent = buildAgentServer({ token: TOKEN, node: 'node-a', log: pino({ level: 'silent' }) })
  let url = await agent.listen('127.0.0.1', 0)
  let agentUp = true
  t.teardown(() => agentUp ? agent.close() : undefined)
  const warnings: string[] = []
  const log = { debug() {}, info() {}, error() {}, warn(_o: object, msg: string) { warnings.push(msg) } }
  const requests: string[] = []
  const client = new AgentClient({
    namespace: 'kindling', selector: 'x=y', token: TOKEN, timeoutMs: 1000, log,
    addressOf: (node) => { requests.push(node); return node === 'node-a' ? url : undefined },
  })
  t.teardown(() => client.close())

  const podRef = agentRef({ metadata: { uid }, spec: { nodeName: 'node-a', containers: [] }, status: { containerStatuses: [{ containerID: `containerd://${cid}`, name: 'r', image: 'i', imageID: '', ready: true, restartCount: 0 }] } })
  const elsewhere = agentRef({ metadata: { uid: randomUUID() }, spec: { nodeName: 'node-b', containers: [] } })
  const gone = agentRef({ metadata: { uid: randomUUID() }, spec: { nodeName: 'node-a', containers: [] } })
  if (podRef === undefined || elsewhere === undefined || gone === undefined) throw new Error('no refs')
  const reader = client.reader()

  await reader.prefetch([podRef, gone, elsewhere])
  t.same(requests.filter((n) => n === 'node-a').length, 1, 'one request for both pods of node-a')
  const s1 = await reader.stats(podRef)
  t.ok(s1.cpuUsageNs > 0, 'stats from the agent')
  t.match(await reader.limits(podRef), { cpuCores: 0.5, memoryBytes: 128 * 2 ** 20, pids: 64 })
  t.ok(reader.demand(podRef).has(child.pid as number), 'the busy child\'s demand')
  await t.rejects(reader.stats(gone), { code: 'KDL_ERR_AGENT_POD_NOT_FOUND' }, 'a pod the agent does not find')
  await t.rejects(reader.stats(elsewhere), { code: 'KDL_ERR_AGENT_UNAVAILABLE' }, 'a node without an agent')
  t.same(reader.demand(elsewhere), new Map(), 'demand of an unreadable pod: empty')
  const s2 = await waitFor(async () => { await reader.prefetch([podRef]); const s = await reader.stats(podRef); return s.cpuUsageNs > s1.cpuUsageNs && s }, 'a later pass sees more CPU')
  t.ok(s2.cpuUsageNs > s1.cpuUsageNs)

  await client.setCpu('node-a', uid, 0.125, `containerd://${cid}`)
  const quotaFile = driver.version === 1 ? join(ref.paths['cpu'] as string, 'cpu.cfs_quota_us') : join(ref.paths['unified'] as string, 'cpu.max')
  t.match((await readFile(quotaFile, 'utf8')).trim(), /^12500\b/, 'setCpu through the agent writes the quota')
  await t.rejects(client.setCpu('node-a', randomUUID(), 0.1), { code: 'KDL_ERR_AGENT_POD_NOT_FOUND' })
  await t.rejects(client.setCpu('node-b', uid, 0.1), { code: 'KDL_ERR_AGENT_UNAVAILABLE' })

  // The guard over this reader: a pass with the agent gone skips the sample and does not throw.
  const inst: GuardedInstance = { id: 'kdl-1', fn: 'hog', version: 1, state: 'busy', quarantined: false, handle: { cgroup: podRef } }
  const guard = new LoadGuard({
    pools: { instances: () => [inst], setQuarantined() {}, isQuarantined: () => false, destroy: async () => {} },
    backend: { name: 'kubernetes' }, reader, events: new EventLog(), registry: new Registry(), log: pino({ level: 'silent' }),
  })
  await guard.tick()
  await guard.tick()
  t.equal(guard.state('hog').instances.length, 1, 'sampled while the agent answers')
  await agent.close()
  agentUp = false
  const warned = warnings.length
  await guard.tick()
  await guard.tick()
  t.ok(warnings.slice(warned).some((w) => /node agent unavailable/.test(w)), 'an agent that does not answer is logged')
  t.equal(warnings.slice(warned).filter((w) => /node agent unavailable/.test(w)).length, 1, 'once per outage')
  await t.rejects(reader.stats(podRef), { code: 'KDL_ERR_AGENT_UNAVAILABLE' }, 'its samples: KDL_ERR_AGENT_UNAVAILABLE')
  // Back on another port: the next pass reads again.
  const again = buildAgentServer({ token: TOKEN, node: 'node-a', log: pino({ level: 'silent' }) })
  url = await again.listen('127.0.0.1', 0)
  t.teardown(() => again.close())
  await reader.prefetch([podRef])
  t.ok((await reader.stats(podRef)).cpuUsageNs > 0, 'read again once the agent is back')
  await guard.stop()
})
