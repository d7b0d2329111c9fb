import type { InstanceOutput, OutputLimits } from '../common/backend.js'

/**
 * Bounds one instance's output inside the platform (the docker backend, whose attach stream the platform reads
 * itself): lines cut at `maxLine`, at most `burst` lines at once and `linesPerSec` a second, the rest counted
 * and reported as one `dropped` output per stream before the next line that passes, or a second after the
 * drops began. The process backend does the same in its spawner (backends/process/spawner/spawner.mjs, plain
 * JavaScript run from the source tree), so that a flood never crosses into the platform there at all.
 */
export class OutputLimiter {
  readonly #id: string
  readonly #limits: OutputLimits
  readonly #emit: (output: InstanceOutput) => void
  #tokens: number
  #last = Date.now()
  readonly #dropped = { stdout: 0, stderr: 0 }
  #timer: NodeJS.Timeout | undefined

  constructor(id: string, limits: OutputLimits, emit: (output: InstanceOutput) => void) {
    this.#id = id
    this.#limits = limits
    this.#emit = emit
    this.#tokens = Math.max(1, limits.burst)
  }

  /** A writable-like sink of one stream's raw text: splits it into lines and passes on those within the bounds. */
  splitter(stream: 'stdout' | 'stderr'): { write(chunk: string): void; end(): void } {
    const max = this.#limits.maxLine
    let pending = ''
    let skipping = false
    return {
      write: (chunk) => {
        let at = 0
        for (;;) {
          const nl = chunk.indexOf('\n', at)
          const piece = nl === -1 ? chunk.slice(at) : chunk.slice(at, nl)
          if (!skipping) {
            pending += piece
            if (pending.length > max) {
              this.#line(stream, pending.slice(0, max), true)
              pending = ''
              skipping = true
            }
          }
          if (nl === -1) return
          if (!skipping) this.#line(stream, pending.endsWith('\r') ? pending.slice(0, -1) : pending, false)
          pending = ''
          skipping = false
          at = nl + 1
        }
      },
      end: () => {
        if (pending !== '' && !skipping) this.#line(stream, pending, false)
        pending = ''
      },
    }
  }

  /** Reports what is still counted (the instance is gone). */
  close(): void {
    clearTimeout(this.#timer)
    this.#flush()
  }

  #line(stream: 'stdout' | 'stderr', line: string, truncated: boolean): void {
    const now = Date.now()
    const { linesPerSec, burst } = this.#limits
    this.#tokens = Math.min(Math.max(1, burst), this.#tokens + (now - this.#last) * linesPerSec / 1000)
    this.#last = now
    if (this.#tokens < 1) {
      this.#dropped[stream]++
      this.#timer ??= setTimeout(() => { this.#timer = undefined; this.#flush() }, 1000).unref()
      return
    }
    this.#tokens -= 1
    if (this.#dropped.stdout > 0 || this.#dropped.stderr > 0) {
      clearTimeout(this.#timer)
      this.#timer = undefined
      this.#flush()
    }
    this.#emit({ id: this.#id, stream, line, truncated })
  }

  #flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      const n = this.#dropped[stream]
      if (n > 0) {
        this.#dropped[stream] = 0
        this.#emit({ id: this.#id, stream, dropped: n })
      }
    }
  }
}
