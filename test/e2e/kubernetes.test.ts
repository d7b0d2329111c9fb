import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { KUBECTL, startSim, type TestCluster } from '../fixtures/kube.js'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

// The kubernetes backend through the whole platform (issue 10), on a cluster stand-in of the test's own, read back
// with the real kubectl as an operator would.

const run = promisify(execFile)
const CODE = 'export default () => ({ pid: process.pid })'

interface PodRow { name: string; node: string; ip: string; labels: Record<string, string> }

async function kubectlPods(sim: TestCluster, selector: string): Promise<PodRow[]> {
  const { stdout } = await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'get', 'pods', '-n', 'kindling', '-o', 'json', '-l', selector])
  const items = (JSON.parse(stdout) as { items: Array<{ metadata: { name: string; labels?: Record<string, string>; deletionTimestamp?: string }; spec: { nodeName?: string }; status: { podIP?: string } }> }).items
  return items.filter((p) => p.metadata.deletionTimestamp === undefined)
    .map((p) => ({ name: p.metadata.name, node: p.spec.nodeName ?? '', ip: p.status.podIP ?? '', labels: p.metadata.labels ?? {} }))
}

/** `kubectl get pods -o wide` as printed: NAME → NODE. */
async function wide(sim: TestCluster, selector: string): Promise<Map<string, string>> {
  const { stdout } = await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'get', 'pods', '-n', 'kindling', '-o', 'wide', '-l', selector])
  const [header, ...rows] = stdout.trim().split('\n')
  const cols = header!.split(/\s+/)
  const at = (name: string): number => cols.indexOf(name)
  return new Map(rows.map((r) => r.split(/\s+/)).map((c) => [c[at('NAME')]!, c[at('NODE')]!]))
}

async function onKube(t: Test): Promise<{ sim: TestCluster; p: TestPlatform }> {
  const sim = await startSim(t)
  const p = await startPlatform(t, { KINDLING_BACKEND: 'kubernetes', KINDLING_KUBECONFIG: sim.kubeconfigPath, KINDLING_POOL_SIZE: 2 })
  return { sim, p }
}

t.test('pool and function pods land only on runtime nodes, nothing on management nodes (kubectl get pods -o wide)', async (t) => {
  const { sim, p } = await onKube(t)
  t.equal((await p.deploy('placed', { runtime: 'node', code: CODE, prewarm: 2 })).status, 201)
  t.equal((await p.invoke('placed')).status, 200)
  await waitFor(async () => (await kubectlPods(sim, 'kindling.io/managed=true')).length === 2, 'the pool Deployment refilled to 2')
  const nodes = await wide(sim, 'kindling.io/managed')
  t.ok(nodes.size >= 4, `pool and function pods are listed (${nodes.size})`)
  for (const [pod, node] of nodes) t.match(node, /^kindling-runtime-\d+$/, `${pod} runs on a runtime node`)
  const mgmt = await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'get', 'pods', '-A', '-o', 'wide', '--field-selector', 'spec.nodeName=kindling-management-0', '--no-headers'])
  t.equal(mgmt.stdout.trim(), '', 'no pod at all on the management node')
  const claimed = await kubectlPods(sim, 'kindling.io/function=placed')
  t.ok(claimed.length >= 2, 'the function\'s instances are claimed pods, labelled with it')
  for (const c of claimed) {
    t.equal(c.labels['kindling.io/managed'], 'false', `${c.name} left the pool's selector`)
    t.equal(c.labels['kindling.io/version'], '1', `${c.name} carries the function's version`)
  }
})

t.test('an API-server outage of 5 s under load loses no warm call, and no pool is doubled or lost after it', async (t) => {
  const { sim, p } = await onKube(t)
  t.equal((await p.deploy('steady', { runtime: 'node', code: CODE, mode: 'persistent', prewarm: 2, maxInstances: 4 })).status, 201)
  for (let i = 0; i < 4; i++) t.equal((await p.invoke('steady')).status, 200)
  await waitFor(async () => (await kubectlPods(sim, 'kindling.io/managed=true')).length === 2, 'the pool full before the outage')
  const claimedBefore = (await kubectlPods(sim, 'kindling.io/function=steady')).length

  let stop = false
  const answers: number[] = []
  const failures: string[] = []
  const client = async (): Promise<void> => {
    while (!stop) {
      const res = await p.invoke('steady')
      answers.push(res.status)
      if (res.status !== 200) failures.push(`${res.status} ${res.text}`)
    }
  }
  const clients = [client(), client()]
  await waitFor(() => answers.length >= 20, 'calls flowing before the outage')
  sim.api.pause()
  const during = answers.length
  const pausedAt = Date.now()
  // The outage lasts 5 s by the clock, while the clients keep calling (no sleep stands in for a condition here:
  // the duration is the thing under test).
  await waitFor(() => Date.now() - pausedAt >= 5000 && answers.length > during + 50, 'five seconds of calls during the outage', 15_000, 50)
  const inOutage = answers.length - during
  sim.api.resume()
  await waitFor(() => answers.length > during + inOutage + 20, 'calls after the outage')
  stop = true
  await Promise.all(clients)
  t.same(failures, [], `every call answered 200 (${answers.length} calls, ${inOutage} during the outage)`)
  t.ok(inOutage > 50, 'calls were served while the API server was away')

  // Back: the Deployment keeps its size, the claimed pods come to be exactly the instances the tables hold (a pod
  // whose delete failed during the outage is deleted once the API answers), and nothing doubled.
  await waitFor(async () => (await kubectlPods(sim, 'kindling.io/managed=true')).length === 2, 'the pool at its size after the outage')
  const held = (): number => [...p.pools.instances()].filter((i) => i.fn === 'steady' && i.state !== 'dead').length
  const claimed = await waitFor(async () => {
    const pods = await kubectlPods(sim, 'kindling.io/function=steady')
    return pods.length === held() && pods
  }, 'the claimed pods to be the instances the platform holds', 15_000)
  t.ok(claimed.length <= 4, `no instance doubled (${claimedBefore} before, ${claimed.length} after, maxInstances 4)`)
  const after = await p.invoke('steady')
  t.equal(after.status, 200)
})

t.test('a pod deleted behind the platform\'s back leaves its tables, and the next call is served', async (t) => {
  const { sim, p } = await onKube(t)
  t.equal((await p.deploy('victim', { runtime: 'node', code: CODE, mode: 'persistent', prewarm: 1 })).status, 201)
  const first = await p.invoke('victim')
  t.equal(first.status, 200)
  const held = (): string[] => [...p.pools.instances()].filter((i) => i.fn === 'victim' && i.state !== 'dead').map((i) => i.id)
  // The serving instance and the refilled prewarmed one, each a claimed pod.
  await waitFor(async () => held().length === 2 && (await kubectlPods(sim, 'kindling.io/function=victim')).length === 2, 'two instances, two claimed pods')
  const before = held()
  const pods = await kubectlPods(sim, 'kindling.io/function=victim')
  t.same(pods.map((x) => x.labels['kindling.io/instance']).sort(), [...before].sort(), 'one claimed pod per instance, labelled with it')
  await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'delete', 'pods', '-n', 'kindling', '-l', 'kindling.io/function=victim', '--wait=false'])
  await waitFor(() => before.every((id) => !held().includes(id)), 'the deleted pods\' instances gone from the tables')
  const next = await p.invoke('victim')
  t.equal(next.status, 200, next.text)
  t.not((next.json() as { pid: number }).pid, (first.json() as { pid: number }).pid, 'served by a new pod')
})

t.test('a node removed takes its pods with it, and the pools refill on the nodes left', async (t) => {
  const { sim, p } = await onKube(t)
  t.equal((await p.deploy('spread', { runtime: 'node', code: CODE, prewarm: 2 })).status, 201)
  await waitFor(async () => (await kubectlPods(sim, 'kindling.io/managed=true')).length === 2, 'the pool full')
  const all = await kubectlPods(sim, 'kindling.io/managed')
  const victimNode = all.find((x) => x.labels['kindling.io/managed'] === 'true')!.node
  const lost = all.filter((x) => x.node === victimNode).map((x) => x.name)
  t.ok(lost.length > 0, `pods ran on ${victimNode}`)
  await sim.removeNode(victimNode)
  await waitFor(async () => {
    const now = await kubectlPods(sim, 'kindling.io/managed')
    return now.every((x) => x.node !== victimNode) && now.filter((x) => x.labels['kindling.io/managed'] === 'true').length === 2
  }, 'the pool back at 2, on the other runtime node', 30_000)
  await waitFor(async () => (await p.api('GET', '/v1/pools')).json['pools'] !== undefined
    && ((await p.api('GET', '/v1/pools')).json['pools'] as Array<{ pool: string; idle: number }>).some((x) => x.pool.startsWith('fn:spread@') && x.idle === 2), 'the prewarm pool refilled', 30_000)
  for (const [pod, node] of await wide(sim, 'kindling.io/managed')) t.not(node, victimNode, `${pod} is not on the removed node`)
  t.equal((await p.invoke('spread')).status, 200)
})

t.test('a quarantined function\'s pods are replaced on the quarantine node: idle ones at once, serving ones once their call ends', async (t) => {
  const { sim, p } = await onKube(t)
  t.equal((await p.deploy('noisy', { runtime: 'node', code: CODE, mode: 'persistent', prewarm: 1 })).status, 201)
  const before = await p.invoke('noisy')
  t.equal(before.status, 200)
  await waitFor(async () => (await kubectlPods(sim, 'kindling.io/function=noisy')).length === 2, 'a serving and a prewarmed pod')
  for (const x of await kubectlPods(sim, 'kindling.io/function=noisy')) t.match(x.node, /^kindling-runtime-\d+$/, `${x.name} starts on a runtime node`)

  // What the load guard does when it quarantines a function (on kubernetes it cannot sample the pods' cgroups:
  // that is the node agent's, issue 13).
  p.pools.setQuarantined('noisy', true)
  const onQuarantine = async (): Promise<boolean> => {
    const pods = await kubectlPods(sim, 'kindling.io/function=noisy')
    return pods.length > 0 && pods.every((x) => x.node === 'kindling-quarantine-0')
  }
  // The serving pod goes once a call on it ends; the next calls are served by quarantined ones.
  await waitFor(async () => (await p.invoke('noisy')).status === 200 && await onQuarantine(), 'every pod of the function on the quarantine node', 30_000, 100)
  const after = await p.invoke('noisy')
  t.equal(after.status, 200)
  t.not((after.json() as { pid: number }).pid, (before.json() as { pid: number }).pid, 'served by a replacement')
  for (const [pod, node] of await wide(sim, 'kindling.io/function=noisy')) t.equal(node, 'kindling-quarantine-0', `${pod} is on the quarantine node (kubectl -o wide)`)
  for (const [pod, node] of await wide(sim, 'kindling.io/managed=true')) t.match(node, /^kindling-runtime-\d+$/, `pool pod ${pod} stays on a runtime node`)
})
