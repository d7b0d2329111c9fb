// A fake pool manager, backend and cgroup reader for the load guard's unit tests: synthetic counters
// advanced on a fake clock, so each test states the load an instance shows in each interval.
import { pino } from 'pino'
import { Registry } from 'prom-client'
import type { CgroupRef } from '../../common/backend.js'
import { EventLog, type PlatformEvent } from '../../common/events.js'
import { LoadGuard, type GuardedInstance } from '../../loadguard/guard.js'
import type { GuardPolicy } from '../../loadguard/policy.js'
import type { GroupLimits } from '../../loadguard/reader.js'
import type { CgroupStats } from '../../poolmgr/cgroups/index.js'

export interface Load {
  /** CPU used over the interval, cores. */
  cpu: number
  /** CPU wanted (ran or waited runnable), cores. @default cpu */
  demand?: number
  memoryBytes?: number
  pids?: number
}

export interface FakeInstance extends GuardedInstance {
  state: string
  quarantined: boolean
}

const MiB = 1024 * 1024
export const LIMITS: GroupLimits = { cpuCores: 1, memoryBytes: 128 * MiB, pids: 64 }

/** Short steps so the tests read easily; the ratios are the production defaults. */
export const TEST_POLICY: Partial<GuardPolicy> = {
  intervalMs: 1000, sustainSamples: 3, quarantineSamples: 3, killSamples: 4, pidsKillSamples: 3, cooldownMs: 10_000, minSamples: 10,
}

export function fakePlatform(policy: Partial<GuardPolicy> = TEST_POLICY) {
  let now = 0
  let seq = 0
  const instances = new Map<string, FakeInstance>()
  const counters = new Map<string, CgroupStats>()
  const demandNs = new Map<string, number>()
  const quarantined = new Set<string>()
  const destroyed: string[] = []
  const setCpuCalls: Array<{ id: string; cores: number }> = []
  const events = new EventLog()
  const registry = new Registry()

  const idOf = (ref: CgroupRef): string => ref.paths['cpu'] ?? ''
  const guard = new LoadGuard({
    pools: {
      instances: () => instances.values(),
      setQuarantined: (fn, on) => { if (on) quarantined.add(fn); else quarantined.delete(fn) },
      isQuarantined: (fn) => quarantined.has(fn),
      destroy: async (inst) => {
        const i = instances.get(inst.id)
        if (i !== undefined) i.state = 'dead'
        instances.delete(inst.id)
        destroyed.push(inst.id)
      },
    },
    backend: { name: 'fake', setCpu: async (id, cores) => { setCpuCalls.push({ id, cores }) } },
    reader: {
      stats: async (ref) => {
        const c = counters.get(idOf(ref))
        if (c === undefined) throw new Error('ENOENT')
        return { ...c }
      },
      limits: async () => LIMITS,
      demand: (ref) => new Map([[1, demandNs.get(idOf(ref)) ?? 0]]),
    },
    events,
    registry,
    log: pino({ level: 'silent' }),
    policy,
    clock: { now: () => now },
  })

  return {
    guard, events, registry, destroyed, setCpuCalls, quarantined,
    /** A running instance of `fn` (version 1 unless told), its counters' baseline already read. */
    async add(fn: string, version = 1): Promise<FakeInstance> {
      const id = `i${++seq}`
      const inst: FakeInstance = { id, fn, version, state: 'loaded', quarantined: quarantined.has(fn), handle: { cgroup: { version: 1, paths: { cpu: id } } } }
      instances.set(id, inst)
      counters.set(id, { cpuUsageNs: 0, throttledPeriods: 0, throttledNs: 0, nrPeriods: 0, memoryBytes: 20 * MiB, memoryPeakBytes: 20 * MiB, oomKills: 0, pids: 11 })
      await guard.tick() // no time passes: the other instances' counters are re-read, nothing is judged
      return inst
    },
    remove(inst: FakeInstance): void {
      instances.delete(inst.id)
      counters.delete(inst.id)
    },
    /** One interval: each instance shows the load `load(inst)` gives it, then the guard samples. */
    async step(load: (inst: FakeInstance) => Load, ms = policy.intervalMs ?? 1000): Promise<void> {
      now += ms
      for (const inst of instances.values()) {
        const c = counters.get(inst.id)
        if (c === undefined) continue
        const l = load(inst)
        c.cpuUsageNs += Math.round(l.cpu * ms * 1e6)
        demandNs.set(inst.id, (demandNs.get(inst.id) ?? 0) + Math.round((l.demand ?? l.cpu) * ms * 1e6))
        c.nrPeriods += ms / 100
        if (l.memoryBytes !== undefined) c.memoryBytes = l.memoryBytes
        if (l.pids !== undefined) c.pids = l.pids
      }
      await guard.tick()
    },
    async steps(n: number, load: (inst: FakeInstance) => Load): Promise<void> {
      for (let i = 0; i < n; i++) await this.step(load)
    },
    guardEvents(): PlatformEvent[] {
      return events.list().filter((e) => e.type.startsWith('loadguard-'))
    },
  }
}
