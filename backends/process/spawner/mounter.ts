import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { KdlError } from '../../../common/errors.js'

/** mount(2) and setns(2) numbers of the architectures the mounter knows; elsewhere there is no mounter. */
const SYSCALLS: Partial<Record<NodeJS.Architecture, [mount: number, setns: number]>> = { x64: [165, 308], arm64: [40, 268] }

/**
 * Binds code into instances' mount namespaces through one long-lived root helper (backends/process/spawner/mounter.pl):
 * a load then costs a line each way on a pipe, not a process spawn (issue 8: the specialized path).
 */
export class NsMounter {
  readonly #child: ChildProcess
  readonly #waiting = new Map<string, (err?: Error) => void>()
  readonly #ready: Promise<void>
  #seq = 0
  #dead: Error | undefined

  /** undefined on an architecture whose syscall numbers it does not know. */
  static create(opts: { perl: string; script: string }): NsMounter | undefined {
    const nr = SYSCALLS[process.arch]
    return nr === undefined ? undefined : new NsMounter(opts.perl, opts.script, nr)
  }

  constructor(perl: string, script: string, nr: [number, number]) {
    this.#child = spawn(perl, [script, String(nr[0]), String(nr[1])], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'inherit'] })
    let ready: () => void = () => {}
    this.#ready = new Promise((resolve, reject) => {
      ready = resolve
      this.#child.once('error', (err) => reject(new KdlError('KDL_ERR_BACKEND', 'cannot start the mounter', { cause: err })))
      this.#child.once('exit', (code, signal) => reject(new KdlError('KDL_ERR_BACKEND', `the mounter exited before it was ready (code ${code}, signal ${signal})`)))
    })
    this.#ready.catch(() => {})
    createInterface({ input: this.#child.stdout! }).on('line', (line) => {
      if (line === 'ready') { ready(); return }
      const [tag, status, message] = line.split('\t')
      const done = tag === undefined ? undefined : this.#waiting.get(tag)
      if (done === undefined || tag === undefined) return
      this.#waiting.delete(tag)
      done(status === 'ok' ? undefined : new KdlError('KDL_ERR_BACKEND', `cannot bind code into the instance: ${message ?? line}`))
    })
    this.#child.once('exit', (code, signal) => {
      this.#dead = new KdlError('KDL_ERR_BACKEND', `the mounter exited (code ${code}, signal ${signal})`)
      for (const done of this.#waiting.values()) done(this.#dead)
      this.#waiting.clear()
    })
  }

  ready(): Promise<void> {
    return this.#ready
  }

  /**
   * Binds `src` (a path inside the namespace) read-only onto `dst` in the mount namespace of `pid`; with
   * `loUp`, also sets `lo` up in its network namespace.
   */
  async bind(pid: number, src: string, dst: string, loUp = false): Promise<void> {
    await this.#ready
    if (this.#dead !== undefined) throw this.#dead
    for (const s of [src, dst]) if (/[\t\n]/.test(s)) throw new KdlError('KDL_ERR_BACKEND', `path ${JSON.stringify(s)} cannot be sent to the mounter`)
    const tag = String(++this.#seq)
    const done = new Promise<void>((resolve, reject) => this.#waiting.set(tag, (err) => (err === undefined ? resolve() : reject(err))))
    this.#child.stdin!.write(`${tag}\t${pid}\t${src}\t${dst}\t${loUp ? 1 : 0}\n`)
    await done
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return
    const exited = new Promise((r) => this.#child.once('exit', r))
    this.#child.stdin!.end()
    await exited
  }
}
