/**
 * What a canary judges (issue 15): per version of a watched function, the calls, errors and latencies
 * since its window began. The router records every call of a watched function here; a function nobody
 * watches costs the router one `Map.get` per call.
 */

export interface VersionWindow {
  calls: number
  errors: number
  /** Latencies of the window's calls, ms: all of them, or a uniform sample of `maxSamples` (reservoir). */
  latenciesMs: Float64Array
}

interface Window {
  calls: number
  errors: number
  latencies: Float64Array
  /** Latencies held (≤ latencies.length). */
  held: number
}

export class VersionSamples {
  readonly #watched = new Map<string, Map<number, Window>>()
  readonly #maxSamples: number

  constructor(maxSamples = 20_000) {
    this.#maxSamples = maxSamples
  }

  /** Starts recording the function's calls (a new window for every version). */
  watch(name: string): void {
    this.#watched.set(name, new Map())
  }

  unwatch(name: string): void {
    this.#watched.delete(name)
  }

  isWatched(name: string): boolean {
    return this.#watched.has(name)
  }

  /** One call's end: `ok` false for a platform error or a 5xx answer. */
  record(name: string, version: number, ok: boolean, ms: number): void {
    const byVersion = this.#watched.get(name)
    if (byVersion === undefined) return
    let w = byVersion.get(version)
    if (w === undefined) {
      w = { calls: 0, errors: 0, latencies: new Float64Array(256), held: 0 }
      byVersion.set(version, w)
    }
    w.calls++
    if (!ok) w.errors++
    if (w.held < this.#maxSamples) {
      if (w.held === w.latencies.length) {
        const grown = new Float64Array(Math.min(this.#maxSamples, w.latencies.length * 2))
        grown.set(w.latencies)
        w.latencies = grown
      }
      w.latencies[w.held++] = ms
    } else {
      // Algorithm R: every call of the window has the same chance to be in the sample.
      const j = Math.floor(Math.random() * w.calls)
      if (j < w.held) w.latencies[j] = ms
    }
  }

  /** The version's window so far (a copy). */
  read(name: string, version: number): VersionWindow {
    const w = this.#watched.get(name)?.get(version)
    if (w === undefined) return { calls: 0, errors: 0, latenciesMs: new Float64Array(0) }
    return { calls: w.calls, errors: w.errors, latenciesMs: w.latencies.slice(0, w.held) }
  }

  /** Starts a new window for every version of a watched function. */
  reset(name: string): void {
    if (this.#watched.has(name)) this.#watched.set(name, new Map())
  }
}
