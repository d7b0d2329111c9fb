import type { Dispatcher } from 'undici'
import type { InstanceExit, InstanceHandle } from '../common/backend.js'

export type InstanceState = 'generic' | 'loading' | 'loaded' | 'leased' | 'dead'

/** One runtime server the pool manager started, and what it holds now. */
export class Instance {
  readonly id: string
  readonly runtime: string
  readonly handle: InstanceHandle
  readonly dispatcher: Dispatcher
  readonly startedAt: number
  /** Milliseconds the backend took to start it (the `start` cold-start phase). */
  readonly startMs: number
  /** Memory limit it was started with, MiB (counts against the platform's memory budget). */
  readonly memoryMb: number
  state: InstanceState = 'generic'
  /** Function and version loaded, once specialised; an instance never serves another function. */
  fn: string | undefined
  version: number | undefined
  lastUsed: number
  /** Placed in the quarantine group by the load guard. */
  quarantined: boolean
  /** How it died, once the backend reported an exit the platform did not ask for. */
  exit: InstanceExit | undefined

  constructor(handle: InstanceHandle, dispatcher: Dispatcher, startMs: number, memoryMb: number, quarantined = false) {
    this.memoryMb = memoryMb
    this.id = handle.id
    this.runtime = handle.runtime
    this.handle = handle
    this.dispatcher = dispatcher
    this.startedAt = handle.startedAt
    this.startMs = startMs
    this.lastUsed = handle.startedAt
    this.quarantined = quarantined
  }
}
