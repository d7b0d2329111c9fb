// Helpers of the load guard's e2e tests: bounded waits on platform events and instances (no sleeps as
// synchronisation), and a caller that keeps invoking a function until told to stop.
import { readFile } from 'node:fs/promises'
import { setTimeout as delay } from 'node:timers/promises'
import type { PlatformEvent } from '../../common/events.js'
import type { Instance } from '../../poolmgr/instance.js'
import type { TestPlatform } from '../fixtures/platform.js'

/** Guard settings that act within a second: 100 ms samples, three-sample steps, no release during a test. */
export const FAST_GUARD = {
  KINDLING_LOADGUARD_INTERVAL_MS: 100,
  KINDLING_LOADGUARD_SUSTAIN_SAMPLES: 3,
  KINDLING_LOADGUARD_QUARANTINE_SAMPLES: 3,
  KINDLING_LOADGUARD_KILL_SAMPLES: 100_000,
  KINDLING_LOADGUARD_PIDS_KILL_SAMPLES: 3,
  KINDLING_LOADGUARD_COOLDOWN_MS: 3_600_000,
} as const

/** Polls `read` until it yields a value (bounded); the error names what was awaited. */
export async function waitFor<T>(read: () => Promise<T | undefined> | T | undefined, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await read()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await delay(20)
  }
}

export async function events(p: TestPlatform, fn?: string): Promise<PlatformEvent[]> {
  const res = await p.api('GET', `/v1/events${fn === undefined ? '' : `?function=${fn}`}`)
  return res.json['events'] as PlatformEvent[]
}

/** The first event of `type` for `fn`, polling GET /v1/events. */
export function waitForEvent(p: TestPlatform, type: string, fn: string, timeoutMs?: number): Promise<PlatformEvent> {
  return waitFor(async () => (await events(p, fn)).find((e) => e.type === type), `${type} of ${fn}`, timeoutMs)
}

export function instanceById(p: TestPlatform, id: string | undefined): Instance | undefined {
  for (const inst of p.pools.instances()) if (inst.id === id) return inst
  return undefined
}

export async function cgroupFile(inst: Instance, controller: string, file: string): Promise<string> {
  const dir = inst.handle.cgroup?.paths[controller]
  if (dir === undefined) throw new Error(`instance ${inst.id} has no ${controller} cgroup`)
  return (await readFile(`${dir}/${file}`, 'utf8')).trim()
}

/** Calls `fn` back to back on `clients` connections until `stop()`; resolves with every answer's status. */
export function keepCalling(p: TestPlatform, fn: string, opts: { path?: string; clients?: number } = {}): { stop: () => Promise<number[]> } {
  let stopped = false
  const statuses: number[] = []
  const loops = Array.from({ length: opts.clients ?? 1 }, async () => {
    while (!stopped) statuses.push((await p.invoke(fn, { path: opts.path ?? '' })).status)
  })
  return {
    stop: async () => {
      stopped = true
      await Promise.all(loops)
      return statuses
    },
  }
}
