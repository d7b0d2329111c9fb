import { constants as osConstants } from 'node:os'
import type { Readable } from 'node:stream'
import type Dockerode from 'dockerode'
import { KILLED_DETAILS, killedFromOutside, type ExitReason, type InstanceExit } from '../../common/backend.js'
import { KdlError } from '../../common/errors.js'
import { LABEL, backendError, containerName, noop, statusOf, tailLogs, type BackendLog, type Live } from './docker-common.js'

const REMEMBERED = 1024
/** Bound on how long exitReason() waits for the engine to report a death it has not reported yet. */
const EXIT_WAIT_MS = 2_000

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, n]) => [n, name]))

interface DockerEvent {
  Type?: string
  Action?: string
  time?: number
  Actor?: { ID?: string; Attributes?: Record<string, string> }
}

export interface DockerEventsOptions {
  /** The backend's dockerode client. */
  docker: Dockerode
  log: BackendLog
  /** Backend name in log lines. */
  backend: string
  /** The backend's instances (starting or running) by instance id; events of any other container are ignored. */
  live: ReadonlyMap<string, Live>
  /** True once the backend is closing: the stream is then neither opened nor resubscribed. */
  closing: () => boolean
  /** Removes an instance that exited on its own (the backend's `stop()`). */
  reap: (id: string) => Promise<void>
}

/**
 * The engine's reports of instance deaths: one `GET /events` stream (die and oom of labelled containers), resubscribed
 * with `since` and back-off when it ends; a death during start fails the start, a later one reaches the exit
 * listeners and reaps the instance. Remembers the exit reason of the last 1024 instances.
 */
export class DockerEvents {
  readonly #docker: Dockerode
  readonly #log: BackendLog
  readonly #backend: string
  readonly #live: ReadonlyMap<string, Live>
  readonly #closing: () => boolean
  readonly #reap: (id: string) => Promise<void>
  readonly #reasons = new Map<string, ExitReason>()
  readonly #oom = new Set<string>()
  readonly #listeners: Array<(exit: InstanceExit) => void> = []
  #stream: Readable | undefined
  #ready: Promise<void> | undefined

  constructor(opts: DockerEventsOptions) {
    this.#docker = opts.docker
    this.#log = opts.log
    this.#backend = opts.backend
    this.#live = opts.live
    this.#closing = opts.closing
    this.#reap = opts.reap
  }

  /** Opens the stream once (before the first container starts); a failed subscription is retried by the next call. */
  ensure(): Promise<void> {
    this.#ready ??= this.#open(undefined).catch((err: unknown) => {
      this.#ready = undefined
      throw backendError('cannot subscribe to docker events', err)
    })
    return this.#ready
  }

  /** Ends the stream (after the backend stopped its instances). */
  close(): void {
    this.#stream?.destroy()
    this.#stream = undefined
  }

  onExit(listener: (exit: InstanceExit) => void): void {
    this.#listeners.push(listener)
  }

  /** Drops the reason of an earlier instance of the same id (one is starting). */
  forget(id: string): void {
    this.#reasons.delete(id)
  }

  /** Records a stop by the platform; an exit the engine reported first (crash, OOM) keeps its reason. */
  stopped(id: string): void {
    if (!this.#reasons.has(id)) this.#remember(id, 'stopped')
  }

  async exitReason(id: string): Promise<ExitReason | undefined> {
    const known = this.#reasons.get(id)
    if (known !== undefined) return known
    const live = this.#live.get(id)
    if (live !== undefined) {
      // The call failed before the engine reported the death: wait for it, bounded.
      let timer: NodeJS.Timeout | undefined
      await Promise.race([live.died, new Promise((resolve) => { timer = setTimeout(resolve, EXIT_WAIT_MS) })])
      clearTimeout(timer)
      const now = this.#reasons.get(id)
      if (now !== undefined) return now
    }
    try {
      const info = await this.#docker.getContainer(live?.containerId ?? containerName(id)).inspect()
      if (info.State.Running) return undefined
      return reasonOf(info.State.OOMKilled || this.#oom.has(id), info.State.ExitCode)
    } catch (err) {
      if (statusOf(err) === 404) return undefined
      throw backendError(`cannot inspect instance ${id}`, err)
    }
  }

  async #open(since: number | undefined): Promise<void> {
    // The engine subscribes before it answers, so nothing after this resolves is missed.
    const stream = await this.#docker.getEvents({
      ...(since === undefined ? {} : { since }),
      filters: { label: [LABEL.instance], type: ['container'], event: ['die', 'oom'] },
    }) as Readable
    if (this.#closing()) { stream.destroy(); return }
    this.#stream = stream
    let buf = ''
    let last = Math.floor(Date.now() / 1000)
    stream.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8')
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim()
        buf = buf.slice(nl + 1)
        if (line === '') continue
        try {
          const ev = JSON.parse(line) as DockerEvent
          if (typeof ev.time === 'number') last = ev.time
          this.#onEvent(ev)
        } catch (err) {
          this.#log.warn({ err, line: line.slice(0, 500) }, 'unreadable docker event')
        }
      }
    })
    stream.on('error', noop)
    stream.once('close', () => {
      if (this.#closing() || this.#stream !== stream) return
      this.#stream = undefined
      this.#log.warn({ backend: this.#backend }, 'docker event stream ended; resubscribing')
      void this.#resubscribe(last)
    })
  }

  async #resubscribe(since: number): Promise<void> {
    for (let backoff = 100; !this.#closing(); backoff = Math.min(backoff * 2, 5_000)) {
      try {
        await this.#open(since)
        return
      } catch (err) {
        this.#log.warn({ err, backend: this.#backend }, 'cannot resubscribe to docker events')
        await new Promise((resolve) => setTimeout(resolve, backoff))
      }
    }
  }

  #onEvent(ev: DockerEvent): void {
    const attrs = ev.Actor?.Attributes ?? {}
    const id = attrs[LABEL.instance]
    if (id === undefined) return
    const live = this.#live.get(id)
    // Events of containers this backend did not start (or a previous container of the same id) are not ours.
    if (live === undefined || (live.containerId !== undefined && ev.Actor?.ID !== undefined && ev.Actor.ID !== live.containerId)) return
    if (ev.Action === 'oom') {
      this.#oom.add(id)
      if (this.#oom.size > REMEMBERED) this.#oom.delete(this.#oom.values().next().value as string)
      return
    }
    if (ev.Action !== 'die' || live.exited) return
    live.exited = true
    const code = attrs['exitCode'] === undefined ? null : Number(attrs['exitCode'])
    if (!live.started || live.stopping) {
      const killed = !this.#oom.has(id) && killedFromOutside(code, null)
      live.startFailed.abort(new KdlError('KDL_ERR_BACKEND', `instance ${id} exited during start (code ${code})`, killed ? { details: KILLED_DETAILS } : {}))
      live.markDied()
      return
    }
    this.#onUnexpectedExit(live, code).catch((err: unknown) => this.#log.error({ err, instance: id }, 'exit handling failed'))
  }

  async #onUnexpectedExit(live: Live, code: number | null): Promise<void> {
    const id = live.id
    let oom = this.#oom.has(id)
    if (!oom && live.containerId !== undefined) {
      try { oom = (await this.#docker.getContainer(live.containerId).inspect()).State.OOMKilled } catch { /* removed already */ }
    }
    const reason = reasonOf(oom, code)
    const signal = code !== null && code > 128 ? SIGNAL_NAMES.get(code - 128) ?? null : null
    this.#remember(id, reason)
    live.markDied()
    if (live.stopping) return
    for (const l of this.#listeners) {
      try { l({ id, reason, code, signal }) } catch (err) { this.#log.error({ err, instance: id }, 'exit listener threw') }
    }
    const output = live.containerId === undefined ? '' : await tailLogs(this.#docker, live.containerId)
    this.#log.warn({ instance: id, pool: live.pool, backend: this.#backend, code, signal, reason, output }, 'instance exited')
    await this.#reap(id).catch((err: unknown) => this.#log.warn({ err, instance: id }, 'cannot remove an exited instance'))
  }

  #remember(id: string, reason: ExitReason): void {
    this.#reasons.delete(id)
    this.#reasons.set(id, reason)
    if (this.#reasons.size > REMEMBERED) this.#reasons.delete(this.#reasons.keys().next().value as string)
  }
}

function reasonOf(oom: boolean, code: number | null): ExitReason {
  if (oom) return 'oom'
  return code === 0 ? 'exited' : 'crashed'
}
