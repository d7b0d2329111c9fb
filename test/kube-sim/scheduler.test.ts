import t from 'tap'
import { kindsOf } from '../../kube-sim/controllers/shared.js'
import { Scheduler, fitError } from '../../kube-sim/scheduler.js'
import { effectiveTaints, matchesNodeSelectorAndAffinity, requirementMatches, tolerates, untoleratedTaint } from '../../kube-sim/scheduling/node-fit.js'
import { bytesOf, cpuMilli, podRequests } from '../../kube-sim/scheduling/quantity.js'
import { MemoryStore } from '../../kube-sim/store.js'
import type { KubeObject } from '../../kube-sim/types.js'
import { waitFor } from '../fixtures/wait.js'

// The scheduler's filters (issue 10), as the real kube-scheduler words and orders them.

const taint = { key: 'kindling.io/node-role', value: 'runtime', effect: 'NoSchedule' }

t.test('tolerations: Equal needs the value, Exists any value, an empty key with Exists everything, the effect must match when set', async (t) => {
  t.ok(tolerates({ key: 'kindling.io/node-role', operator: 'Equal', value: 'runtime', effect: 'NoSchedule' }, taint))
  t.ok(tolerates({ key: 'kindling.io/node-role', value: 'runtime' }, taint), 'operator defaults to Equal, effect to any')
  t.notOk(tolerates({ key: 'kindling.io/node-role', operator: 'Equal', value: 'quarantine' }, taint))
  t.ok(tolerates({ key: 'kindling.io/node-role', operator: 'Exists' }, taint))
  t.notOk(tolerates({ key: 'kindling.io/node-role', operator: 'Exists', effect: 'NoExecute' }, taint), 'another effect')
  t.ok(tolerates({ operator: 'Exists' }, taint), 'empty key + Exists tolerates every taint')
  t.notOk(tolerates({ key: '', operator: 'Equal', value: 'runtime' }, taint), 'empty key needs Exists')
  t.notOk(tolerates({ key: 'other', operator: 'Exists' }, taint))
  t.equal(untoleratedTaint({ tolerations: [] }, [{ key: 'soft', effect: 'PreferNoSchedule' }]), undefined, 'PreferNoSchedule does not filter')
  t.same(untoleratedTaint({ tolerations: [] }, [{ key: 'hard', effect: 'NoExecute' }]), { key: 'hard', effect: 'NoExecute' })
})

t.test('node affinity operators: In, NotIn, Exists, DoesNotExist, Gt, Lt; terms ORed, expressions ANDed', async (t) => {
  const labels = { zone: 'a', cores: '8' }
  t.ok(requirementMatches({ key: 'zone', operator: 'In', values: ['a', 'b'] }, labels))
  t.notOk(requirementMatches({ key: 'zone', operator: 'NotIn', values: ['a'] }, labels))
  t.ok(requirementMatches({ key: 'absent', operator: 'NotIn', values: ['a'] }, labels), 'NotIn matches a missing label')
  t.ok(requirementMatches({ key: 'zone', operator: 'Exists' }, labels))
  t.ok(requirementMatches({ key: 'absent', operator: 'DoesNotExist' }, labels))
  t.ok(requirementMatches({ key: 'cores', operator: 'Gt', values: ['4'] }, labels))
  t.notOk(requirementMatches({ key: 'cores', operator: 'Lt', values: ['4'] }, labels))
  t.notOk(requirementMatches({ key: 'zone', operator: 'Gt', values: ['1'] }, labels), 'Gt on a non-integer never matches')
  const node: KubeObject = { apiVersion: 'v1', kind: 'Node', metadata: { name: 'n1', labels } }
  const affinity = (terms: unknown[]) => ({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms } } } })
  t.ok(matchesNodeSelectorAndAffinity(affinity([{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['b'] }] }, { matchExpressions: [{ key: 'cores', operator: 'Gt', values: ['2'] }] }]), node), 'second term matches')
  t.notOk(matchesNodeSelectorAndAffinity(affinity([{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }, { key: 'cores', operator: 'Lt', values: ['2'] }] }]), node), 'one expression fails the term')
  t.ok(matchesNodeSelectorAndAffinity(affinity([{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n1'] }] }]), node), 'matchFields on metadata.name')
  t.notOk(matchesNodeSelectorAndAffinity(affinity([{}]), node), 'an empty term matches nothing')
  t.notOk(matchesNodeSelectorAndAffinity({ nodeSelector: { zone: 'b' } }, node))
  t.same(effectiveTaints({ ...node, status: { conditions: [{ type: 'Ready', status: 'False' }] } }), [{ key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }])
})

t.test('quantities and requests: limits stand in for absent requests; init containers count by their largest', async (t) => {
  t.equal(cpuMilli('500m'), 500)
  t.equal(cpuMilli('2'), 2000)
  t.equal(cpuMilli('0.25'), 250)
  t.equal(bytesOf('128Mi'), 128 * 2 ** 20)
  t.equal(bytesOf('1G'), 1e9)
  t.equal(bytesOf('1e3'), 1000)
  t.same(podRequests({
    containers: [{ resources: { requests: { cpu: '100m' }, limits: { cpu: '1', memory: '256Mi' } } }, { resources: { requests: { memory: '64Mi' } } }],
    initContainers: [{ resources: { requests: { cpu: '2' } } }],
  }), { cpuMilli: 2000, memoryBytes: (256 + 64) * 2 ** 20 })
  t.same(podRequests({ containers: [{}] }, true), { cpuMilli: 100, memoryBytes: 200 * 2 ** 20 }, 'scoring defaults')
})

t.test('the FitError message sorts "<count> <reason>" strings as the real one does', async (t) => {
  t.equal(fitError(4, new Map([["node(s) didn't match Pod's node affinity/selector", 3], ['node(s) had untolerated taint {kindling.io/node-role: runtime}', 1]])),
    "0/4 nodes are available: 1 node(s) had untolerated taint {kindling.io/node-role: runtime}, 3 node(s) didn't match Pod's node affinity/selector.")
})

t.test('cordoned and NotReady nodes are filtered; the least allocated node wins', async (t) => {
  const store = new MemoryStore()
  const kinds = kindsOf(store)
  const scheduler = new Scheduler({ store, kinds })
  scheduler.start()
  t.teardown(() => scheduler.stop())
  const mk = (name: string, extra: { unschedulable?: boolean; ready?: boolean } = {}): void => {
    const n = store.create(kinds.node, { apiVersion: 'v1', kind: 'Node', metadata: { name }, spec: extra.unschedulable === true ? { unschedulable: true } : {} })
    store.update(kinds.node, { ...n, status: { allocatable: { cpu: '4', memory: '8Gi', pods: '110' }, conditions: [{ type: 'Ready', status: extra.ready === false ? 'False' : 'True' }] } }, { subresource: 'status' })
  }
  mk('cordoned', { unschedulable: true })
  mk('down', { ready: false })
  mk('busy')
  mk('idle')
  const pod = (name: string, cpu: string): KubeObject => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default' }, spec: { containers: [{ name: 'c', image: 'x', resources: { requests: { cpu } } }] } })
  store.create(kinds.pod, { ...pod('pinned', '2'), spec: { ...pod('pinned', '2').spec, nodeName: 'busy' } })
  store.create(kinds.pod, pod('next', '1'))
  t.equal(await waitFor(() => store.get(kinds.pod, 'default', 'next')?.spec?.nodeName, 'next bound'), 'idle', 'the least allocated node')
  store.create(kinds.pod, pod('huge', '5'))
  const huge = await waitFor(() => { const p = store.get(kinds.pod, 'default', 'huge'); return p?.status?.conditions?.length > 0 && p }, 'huge judged')
  t.equal(huge.status.conditions[0].message,
    '0/4 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable, 2 Insufficient cpu.')
  const events = store.list(kinds.event, { namespace: 'default' }).items
  t.ok(events.some((e) => e.reason === 'Scheduled' && e.message === 'Successfully assigned default/next to idle'))
  t.ok(events.some((e) => e.reason === 'FailedScheduling' && e.type === 'Warning'))
})
