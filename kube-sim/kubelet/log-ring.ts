/**
 * A container's output as `kubectl logs` reads it (issue 10): stdout and stderr interleaved as they came, the
 * last `maxBytes` kept (whole chunks dropped from the front), each chunk with its arrival time for
 * `--timestamps`. Followers see chunks as they arrive.
 */
interface Chunk {
  at: number
  data: Buffer
}

export interface LogReadOptions {
  /** Prefix each line with its RFC 3339 arrival time. */
  timestamps?: boolean
  /** Only the last n lines. */
  tailLines?: number
  /** Only chunks that arrived at or after this time (ms since the epoch). */
  sinceMs?: number
}

export class LogRing {
  readonly #max: number
  readonly #chunks: Chunk[] = []
  readonly #followers = new Set<(data: Buffer) => void>()
  #bytes = 0

  constructor(maxBytes = 1024 * 1024) {
    this.#max = maxBytes
  }

  write(data: Buffer): void {
    this.#chunks.push({ at: Date.now(), data })
    this.#bytes += data.length
    while (this.#bytes > this.#max && this.#chunks.length > 1) this.#bytes -= (this.#chunks.shift() as Chunk).data.length
    for (const f of this.#followers) f(data)
  }

  read(opts: LogReadOptions = {}): string {
    const chunks = this.#chunks.filter((c) => opts.sinceMs === undefined || c.at >= opts.sinceMs)
    let lines: string[]
    if (opts.timestamps === true) {
      lines = []
      for (const c of chunks) {
        const stamp = new Date(c.at).toISOString().replace('Z', '000000Z')
        for (const l of c.data.toString('utf8').split(/(?<=\n)/)) if (l !== '') lines.push(`${stamp} ${l}`)
      }
    } else {
      lines = Buffer.concat(chunks.map((c) => c.data)).toString('utf8').split(/(?<=\n)/).filter((l) => l !== '')
    }
    if (opts.tailLines !== undefined) lines = lines.slice(Math.max(0, lines.length - opts.tailLines))
    return lines.join('')
  }

  /** Calls `onData` with every later chunk; returns the stop. */
  follow(onData: (data: Buffer) => void): () => void {
    this.#followers.add(onData)
    return () => this.#followers.delete(onData)
  }

  get bytes(): number {
    return this.#bytes
  }
}
