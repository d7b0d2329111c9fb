import { EventEmitter } from 'node:events'
import { appendFileSync, closeSync, openSync, readFileSync } from 'node:fs'

/** Lines kept in memory for the tail an error carries. */
const TAIL_LINES = 40

/**
 * One build's log: every line the build prints, appended to `<builds>/logs/<id>.log` as it comes (so a log
 * survives the platform and can be read while the build runs), bounded in size — past `maxBytes` the lines
 * are counted, not written, and one line at the end says how many were dropped.
 */
export class BuildLog {
  readonly path: string
  readonly #maxBytes: number
  readonly #tail: string[] = []
  readonly #emitter = new EventEmitter()
  #fd: number | undefined
  #bytes = 0
  #dropped = 0
  #done = false

  constructor(path: string, maxBytes: number) {
    this.path = path
    this.#maxBytes = maxBytes
    this.#fd = openSync(path, 'a', 0o644)
    this.#emitter.setMaxListeners(0)
  }

  get done(): boolean {
    return this.#done
  }

  line(text: string): void {
    if (this.#done) return
    const line = text.endsWith('\n') ? text : `${text}\n`
    this.#tail.push(line.slice(0, -1))
    if (this.#tail.length > TAIL_LINES) this.#tail.shift()
    if (this.#bytes + line.length > this.#maxBytes) { this.#dropped++; return }
    this.#bytes += Buffer.byteLength(line)
    if (this.#fd !== undefined) appendFileSync(this.#fd, line)
    this.#emitter.emit('line', line)
  }

  /** The last lines printed (for the error of a failed build). */
  tail(): string[] {
    return [...this.#tail]
  }

  end(): void {
    if (this.#done) return
    if (this.#dropped > 0) {
      const marker = `[kindling: ${this.#dropped} more lines dropped: the log is bounded to ${this.#maxBytes} bytes]\n`
      if (this.#fd !== undefined) appendFileSync(this.#fd, marker)
      this.#emitter.emit('line', marker)
    }
    this.#done = true
    if (this.#fd !== undefined) closeSync(this.#fd)
    this.#fd = undefined
    this.#emitter.emit('end')
  }

  /** What is written so far, then every line until the build ends (or `signal` aborts). */
  async *follow(signal?: AbortSignal): AsyncGenerator<string> {
    const queue: string[] = []
    let wake: (() => void) | undefined
    let ended = this.#done
    const onLine = (line: string): void => { queue.push(line); wake?.() }
    const onEnd = (): void => { ended = true; wake?.() }
    // Subscribed and read in one tick (lines are appended synchronously): nothing twice, nothing missed.
    this.#emitter.on('line', onLine)
    this.#emitter.once('end', onEnd)
    signal?.addEventListener('abort', onEnd)
    let written = ''
    try { written = readFileSync(this.path, 'utf8') } catch { /* not written yet */ }
    try {
      if (written !== '') yield written
      for (;;) {
        const line = queue.shift()
        if (line !== undefined) { yield line; continue }
        if (ended || signal?.aborted === true) return
        await new Promise<void>((resolve) => { wake = resolve })
        wake = undefined
      }
    } finally {
      this.#emitter.off('line', onLine)
      this.#emitter.off('end', onEnd)
      signal?.removeEventListener('abort', onEnd)
    }
  }
}
