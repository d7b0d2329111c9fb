/**
 * A pod's status as the kubelet reports it (issue 10), from its containers' statuses: the phase by the kubelet's
 * own rule (getPhase: waiting → Pending; any running → Running; all stopped → Succeeded / Failed unless the
 * policy restarts them), and the conditions PodReadyToStartContainers, Initialized, ContainersReady, Ready with
 * their transition times kept while unchanged. PodScheduled (the scheduler's) and any foreign condition are kept.
 */
import type { KubeObject } from '../types.js'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any

export interface PodState {
  podIP: string | undefined
  hostIP: string
  startTime: string
  /** Statuses of the init containers that exist so far, in order. */
  init: Any[]
  /** Whether every init container has succeeded (true when there are none). */
  initialized: boolean
  /** An init container failed for good (restartPolicy Never). */
  initFailed: boolean
  containers: Any[]
  restartPolicy: string
  sandboxReady: boolean
}

export function phaseOf(state: PodState): 'Pending' | 'Running' | 'Succeeded' | 'Failed' {
  if (state.initFailed) return 'Failed'
  if (!state.initialized) return 'Pending'
  let waiting = 0
  let running = 0
  let stopped = 0
  let succeeded = 0
  for (const c of state.containers) {
    if (c.state?.running !== undefined) running++
    else if (c.state?.terminated !== undefined) {
      stopped++
      if (c.state.terminated.exitCode === 0) succeeded++
    } else if (c.lastState?.terminated !== undefined) stopped++
    else waiting++
  }
  if (waiting > 0) return 'Pending'
  if (running > 0) return 'Running'
  if (stopped > 0) {
    if (state.restartPolicy === 'Always') return 'Running'
    if (stopped === succeeded) return 'Succeeded'
    if (state.restartPolicy === 'Never') return 'Failed'
    return 'Running'
  }
  return 'Pending'
}

/** The status to write: the kubelet's part over what is stored (PodScheduled and foreign conditions kept). */
export function podStatus(stored: KubeObject, state: PodState, now: string): Any {
  const phase = phaseOf(state)
  const old: Any[] = stored.status?.conditions ?? []
  const containersReady = state.initialized && state.containers.length > 0 && state.containers.every((c) => c.ready === true)
  const mine: Array<{ type: string; ok: boolean; reason?: string }> = [
    { type: 'PodReadyToStartContainers', ok: state.sandboxReady },
    { type: 'Initialized', ok: state.initialized, ...(state.initialized ? {} : { reason: 'ContainersNotInitialized' }) },
    { type: 'ContainersReady', ok: containersReady, ...(containersReady ? {} : { reason: 'ContainersNotReady' }) },
    { type: 'Ready', ok: containersReady, ...(containersReady ? {} : { reason: 'ContainersNotReady' }) },
  ]
  const notReady = state.containers.filter((c) => c.ready !== true).map((c) => c.name as string)
  const conditions: Any[] = old.filter((c) => !mine.some((m) => m.type === c.type))
  for (const m of mine) {
    const prev = old.find((c) => c.type === m.type)
    const status = m.ok ? 'True' : 'False'
    const c: Any = { type: m.type, status, lastTransitionTime: prev?.status === status ? prev.lastTransitionTime ?? now : now }
    if (m.reason !== undefined) c.reason = m.reason
    if (!m.ok && (m.type === 'ContainersReady' || m.type === 'Ready')) c.message = `containers with unready status: [${notReady.join(' ')}]`
    if (!m.ok && m.type === 'Initialized') c.message = `containers with incomplete status: [${state.init.filter((x) => x.state?.terminated?.exitCode !== 0).map((x) => x.name as string).join(' ')}]`
    conditions.push(c)
  }
  const order = ['PodReadyToStartContainers', 'Initialized', 'Ready', 'ContainersReady', 'PodScheduled']
  conditions.sort((a, b) => rank(order, a.type) - rank(order, b.type))
  return {
    ...(stored.status ?? {}),
    phase,
    conditions,
    hostIP: state.hostIP,
    hostIPs: [{ ip: state.hostIP }],
    ...(state.podIP === undefined ? {} : { podIP: state.podIP, podIPs: [{ ip: state.podIP }] }),
    startTime: state.startTime,
    ...(state.init.length > 0 ? { initContainerStatuses: state.init } : {}),
    containerStatuses: state.containers,
    qosClass: stored.status?.qosClass ?? qosOf(stored),
  }
}

function rank(order: string[], type: string): number {
  const i = order.indexOf(type)
  return i < 0 ? order.length : i
}

/** Guaranteed (every container limits = requests for cpu and memory), BestEffort (none), else Burstable. */
export function qosOf(pod: KubeObject): string {
  const cs: Any[] = pod.spec?.containers ?? []
  let any = false
  let guaranteed = cs.length > 0
  for (const c of cs) {
    const req = c.resources?.requests ?? {}
    const lim = c.resources?.limits ?? {}
    if (Object.keys(req).length > 0 || Object.keys(lim).length > 0) any = true
    for (const r of ['cpu', 'memory']) if (lim[r] === undefined || (req[r] !== undefined && req[r] !== lim[r])) guaranteed = false
  }
  return !any ? 'BestEffort' : guaranteed ? 'Guaranteed' : 'Burstable'
}
