import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { KdlError } from '../../../common/errors.js'

/** An instance process started by the spawner: what the process backend needs of a ChildProcess. */
export class SpawnedProcess extends EventEmitter {
  readonly id: string
  pid = -1
  exitCode: number | null = null
  signalCode: NodeJS.Signals | null = null
  /**
   * Resolves once the process has exited, whenever one asks. Wait on this, not on the `exit` event: a process
   * killed the moment it appeared has its `spawned` and `exit` read in one IPC chunk, so the event is
   * emitted before the caller of `spawn()` has resumed and could listen (the chaos test's hang, issue 9).
   */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  #markExited: (exit: { code: number | null; signal: NodeJS.Signals | null }) => void = () => {}

  constructor(id: string) {
    super()
    this.id = id
    this.exited = new Promise((resolve) => { this.#markExited = resolve })
  }

  get running(): boolean {
    return this.exitCode === null && this.signalCode === null
  }

  /** Records the exit, resolves `exited`, then emits `exit` (for listeners attached in time). */
  ended(code: number | null, signal: NodeJS.Signals | null): void {
    this.exitCode = code
    this.signalCode = signal
    this.#markExited({ code, signal })
    this.emit('exit', code, signal)
  }
}

type FromSpawner =
  | { op: 'ready' }
  | { op: 'spawned'; id: string; pid: number }
  | { op: 'error'; id: string; message: string }
  | { op: 'fd-ready'; id: string }
  | { op: 'line'; id: string; stream: 'stdout' | 'stderr'; line: string; truncated?: boolean }
  | { op: 'dropped'; id: string; stream: 'stdout' | 'stderr'; count: number }
  | { op: 'exit'; id: string; code: number | null; signal: NodeJS.Signals | null }

export interface SpawnRequest {
  id: string
  command: string
  args: string[]
  env: Record<string, string>
  cwd: string
  /** An extra pipe at this fd (> 2): the first byte the process writes to it emits `fd-ready` (slirp4netns --ready-fd). */
  readyFd?: number
  /**
   * Bounds on the process's output: lines longer than `maxLine` characters are cut (default 8192); with `rate`,
   * at most `burst` lines at once and `rate` a second pass, the rest are counted (`dropped` events).
   */
  output?: { maxLine: number; rate?: number; burst?: number }
}

/**
 * Starts instance processes through a small helper process (backends/process/spawner/spawner.mjs), so that the
 * fork() of a new instance never blocks the platform's event loop (fork cost grows with the caller's RSS).
 * Lines of instance output arrive as `line` events on the SpawnedProcess (`line`, `stream`, `line`, `truncated`),
 * lines over its rate as `dropped` events (`stream`, `count`) — also the last ones, read after its exit.
 */
export class Spawner {
  readonly #child: ChildProcess
  readonly #procs = new Map<string, { proc: SpawnedProcess; started: (err?: Error) => void }>()
  /** Processes that exited lately: their last lines can arrive after the exit (a crash's stack trace). */
  readonly #ended = new Map<string, SpawnedProcess>()
  readonly #ready: Promise<void>
  #dead: Error | undefined

  constructor(opts: { node: string; script: string }) {
    // A bare environment: the platform's own (NODE_OPTIONS, NODE_EXTRA_CA_CERTS) would slow it and leak.
    this.#child = spawn(opts.node, [opts.script], { env: { PATH: '/usr/local/bin:/usr/bin:/bin' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    this.#child.on('message', (m: FromSpawner) => this.#onMessage(m))
    this.#ready = new Promise((resolve, reject) => {
      this.#child.once('message', () => resolve())
      this.#child.once('exit', (code, signal) => reject(new KdlError('KDL_ERR_BACKEND', `the spawner exited before it was ready (code ${code}, signal ${signal})`)))
      this.#child.once('error', (err) => reject(new KdlError('KDL_ERR_BACKEND', 'cannot start the spawner', { cause: err })))
    })
    this.#ready.catch(() => {})
    this.#child.once('exit', (code, signal) => {
      this.#dead = new KdlError('KDL_ERR_BACKEND', `the spawner exited (code ${code}, signal ${signal})`)
      // Its children are orphans now: report them gone so the pools replace them.
      for (const { proc, started } of this.#procs.values()) {
        started(this.#dead)
        if (proc.running) proc.ended(null, 'SIGKILL')
      }
      this.#procs.clear()
    })
  }

  ready(): Promise<void> {
    return this.#ready
  }

  /** Resolves once the process runs (its pid is known). */
  async spawn(req: SpawnRequest): Promise<SpawnedProcess> {
    await this.#ready
    if (this.#dead !== undefined) throw this.#dead
    const proc = new SpawnedProcess(req.id)
    const started = new Promise<void>((resolve, reject) => {
      this.#procs.set(req.id, { proc, started: (err) => (err === undefined ? resolve() : reject(err)) })
    })
    this.#child.send({ op: 'spawn', ...req })
    await started
    return proc
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return
    const exited = once(this.#child, 'exit')
    this.#child.disconnect()
    await exited
  }

  #onMessage(m: FromSpawner): void {
    if (m.op === 'ready') return
    const entry = this.#procs.get(m.id)
    if (entry === undefined) {
      const late = this.#ended.get(m.id)
      if (late !== undefined && m.op === 'line') late.emit('line', m.stream, m.line, m.truncated === true)
      else if (late !== undefined && m.op === 'dropped') late.emit('dropped', m.stream, m.count)
      return
    }
    const { proc } = entry
    switch (m.op) {
      case 'spawned':
        proc.pid = m.pid
        entry.started()
        return
      case 'error':
        entry.started(new KdlError('KDL_ERR_BACKEND', `cannot spawn instance ${m.id}: ${m.message}`))
        if (proc.pid > 0 && proc.running) proc.emit('error', new Error(m.message))
        return
      case 'fd-ready':
        proc.emit('fd-ready')
        return
      case 'line':
        proc.emit('line', m.stream, m.line, m.truncated === true)
        return
      case 'dropped':
        proc.emit('dropped', m.stream, m.count)
        return
      case 'exit':
        this.#procs.delete(m.id)
        this.#ended.set(m.id, proc)
        if (this.#ended.size > 256) this.#ended.delete(this.#ended.keys().next().value as string)
        proc.ended(m.code, m.signal)
    }
  }
}
