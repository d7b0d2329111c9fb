import { KdlError } from '../common/errors.js'

/** Who waits for a start: a call (cold path) or a pool refill in the background. Calls go first. */
export type StartPriority = 'call' | 'background'

interface Waiter {
  resolve: () => void
  reject: (err: unknown) => void
}

/**
 * Bounds how many instance starts run at once. A host brings instances up at a fixed rate however many
 * are asked for together (measured here: docker ~2.3/s from 2 parallel starts on, processes ~9/s from 4);
 * past that, every start in a herd is late by the whole herd — after a burst of kills, twenty containers
 * started together each took ~8 s and the slowest missed the start timeout, which started more. Behind the
 * gate a start takes what one start takes, calls' starts overtake refills, and the start timeout measures
 * the start, not the queue in front of it.
 */
export class StartGate {
  readonly limit: number
  /**
   * Starts refills may run at once: the rest of the limit is kept for calls (issue 16), so a call that needs
   * an instance never waits behind a herd of refills — at start-up, when every prewarm pool refills, or after
   * a burst.
   */
  readonly backgroundLimit: number
  #running = 0
  #runningBackground = 0
  readonly #waiting: Record<StartPriority, Waiter[]> = { call: [], background: [] }
  #closed = false

  /** `reservedForCalls`: turns refills never take (default a quarter of the limit, at least one, unless the limit is 1). */
  constructor(limit: number, reservedForCalls = limit > 1 ? Math.max(1, Math.floor(limit / 4)) : 0) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`a start gate needs a limit of at least 1, not ${limit}`)
    this.limit = limit
    this.backgroundLimit = Math.max(1, limit - reservedForCalls)
  }

  /** Starts running now, starts waiting for their turn, and the limit. */
  stats(): { running: number; waiting: number; limit: number } {
    return { running: this.#running, waiting: this.#waiting.call.length + this.#waiting.background.length, limit: this.limit }
  }

  /** Runs `start` once fewer than `limit` starts run; waiting calls' starts go before waiting refills. */
  async run<T>(priority: StartPriority, start: () => Promise<T>): Promise<T> {
    if (this.#closed) throw stopping()
    const background = priority === 'background'
    if (this.#running < this.limit && (!background || this.#runningBackground < this.backgroundLimit)) {
      this.#running++
      if (background) this.#runningBackground++
    } else {
      await new Promise<void>((resolve, reject) => this.#waiting[priority].push({ resolve, reject }))
    }
    try {
      return await start()
    } finally {
      if (background) this.#runningBackground--
      this.#running--
      this.#next()
    }
  }

  /** Waiting starts fail with KDL_ERR_SHUTTING_DOWN; running ones finish. */
  close(): void {
    this.#closed = true
    for (const w of [...this.#waiting.call.splice(0), ...this.#waiting.background.splice(0)]) w.reject(stopping())
  }

  /** A start ended: free turns go to waiting calls first, then to waiting refills within their share. */
  #next(): void {
    while (this.#running < this.limit) {
      let w = this.#waiting.call.shift()
      if (w !== undefined) {
        this.#running++
      } else if (this.#runningBackground < this.backgroundLimit && (w = this.#waiting.background.shift()) !== undefined) {
        this.#running++
        this.#runningBackground++
      } else {
        return
      }
      w.resolve()
    }
  }
}

function stopping(): KdlError {
  return new KdlError('KDL_ERR_SHUTTING_DOWN', 'the platform is stopping')
}
