import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { KubeConfig } from '@kubernetes/client-node'
import { pino } from 'pino'
import t from 'tap'
import { LeaderElector, microTime } from '../../backends/kubernetes/leader.js'
import { KUBECTL, startSim } from '../fixtures/kube.js'
import { waitFor } from '../fixtures/wait.js'

// Issue 13: the controllers elect their leader on a coordination.k8s.io Lease, against the stand-in's real API.

const run = promisify(execFile)
const quiet = pino({ level: process.env['KINDLING_TEST_LOG'] ?? 'silent' })

t.test('microTime has the API server\'s six fractional digits', async (t) => {
  t.equal(microTime(new Date('2026-12-04T05:06:07.089Z')), '2026-12-04T05:06:07.089000Z')
})

t.test('one of two candidates leads; a clean stop hands over at once; a leader that cannot renew steps down', async (t) => {
  const sim = await startSim(t, { management: 1, runtime: 0, quarantine: 0 })
  const kc = new KubeConfig()
  kc.loadFromFile(sim.kubeconfigPath)
  await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, 'create', 'namespace', 'kindling'])
  const lost: string[] = []
  const make = (identity: string): LeaderElector => new LeaderElector({
    kubeConfig: kc, namespace: 'kindling', name: 'kindling-controller', identity, leaseMs: 3000, log: quiet, onLost: () => lost.push(identity),
  })
  const a = make('ctl-a')
  const b = make('ctl-b')
  t.teardown(async () => { await a.stop(); await b.stop() })
  await a.acquire()
  t.ok(a.isLeader)
  let bLeads = false
  const bWaits = b.acquire().then(() => { bLeads = true })
  const holder = async (): Promise<string> => (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, '-n', 'kindling', 'get', 'lease', 'kindling-controller', '-o', 'jsonpath={.spec.holderIdentity}'])).stdout
  t.equal(await holder(), 'ctl-a', 'kubectl sees the leader')
  // Several renewals pass while b stands by (each one changes renewTime, so b never sees it lapse).
  const renewed = async (): Promise<string> => (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, '-n', 'kindling', 'get', 'lease', 'kindling-controller', '-o', 'jsonpath={.spec.renewTime}'])).stdout
  const first = await renewed()
  t.match(first, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'renewTime in MicroTime form')
  await waitFor(async () => (await renewed()) !== first, 'the leader renews')
  await waitFor(async () => (await renewed()) !== first && (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, '-n', 'kindling', 'get', 'lease', 'kindling-controller', '-o', 'jsonpath={.spec.leaseDurationSeconds}'])).stdout === '3', 'lease duration written')
  t.notOk(bLeads, 'the standby does not lead while the leader renews')
  t.equal(await holder(), 'ctl-a')

  // A clean stop empties the holder: b takes over within a retry period, not a lease duration.
  const stoppedAt = performance.now()
  await a.stop()
  await bWaits
  t.ok(b.isLeader)
  t.ok(performance.now() - stoppedAt < 3000, 'taken over before the lease would have expired')
  t.equal(await holder(), 'ctl-b')
  const transitions = (await run(KUBECTL, ['--kubeconfig', sim.kubeconfigPath, '-n', 'kindling', 'get', 'lease', 'kindling-controller', '-o', 'jsonpath={.spec.leaseTransitions}'])).stdout
  t.equal(transitions, '1', 'one transition recorded')

  // The API away longer than the renew deadline (2/3 of the lease): the leader stops leading by itself.
  sim.api.pause()
  await waitFor(() => lost.includes('ctl-b'), 'the leader steps down when it cannot renew', 10_000)
  t.notOk(b.isLeader)
  sim.api.resume()

  // A new candidate waits out the whole lease it sees unchanged (the stepped-down leader never released it), then leads.
  const c = make('ctl-c')
  t.teardown(() => c.stop())
  const t0 = performance.now()
  await c.acquire()
  t.ok(performance.now() - t0 >= 2500, 'the new candidate waited for the unrenewed lease to lapse on its own clock')
  t.equal(await holder(), 'ctl-c')
})
