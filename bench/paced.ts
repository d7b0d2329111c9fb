// Paced load for the load generator (load-gen.ts, a LoadRequest with `rate`): one request every 1/rate s
// whatever the answers do (open loop), over an undici Pool of at most `connections` connections. A
// request that finds every connection busy waits in the pool, and that wait is part of its latency.
// The generator's own lateness (its process was not scheduled in time) is reported apart, as `sendLag`.
import { Pool } from 'undici'
import { summarize } from './stats.js'
import type { LoadRequest, LoadResult } from './load.js'

/** A growable array of samples. */
class Samples {
  #values = new Float64Array(1 << 14)
  #n = 0

  add(v: number): void {
    if (this.#n === this.#values.length) {
      const grown = new Float64Array(this.#values.length * 2)
      grown.set(this.#values)
      this.#values = grown
    }
    this.#values[this.#n++] = v
  }

  clear(): void {
    this.#n = 0
  }

  get values(): Float64Array {
    return this.#values.subarray(0, this.#n)
  }
}

export async function runPaced(req: LoadRequest): Promise<LoadResult> {
  const rate = req.rate ?? 1
  const target = new URL(req.url)
  const path = `${target.pathname}${target.search}`
  const pool = new Pool(target.origin, {
    connections: req.connections,
    pipelining: 1,
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
    keepAliveTimeout: 600_000,
    ...(req.socketPath === undefined ? {} : { connect: { socketPath: req.socketPath } }),
  })
  const intervalMs = 1000 / rate
  const start = performance.now()
  let endAt = start + (req.warmupS + req.durationS) * 1000
  let measureFrom = start + req.warmupS * 1000
  const latency = new Samples()
  const lag = new Samples()
  let ok = 0
  let errors = 0
  let timeouts = 0
  let non2xx = 0
  let byStatus: Record<string, number> = {}
  let byHeader: Record<string, number> = {}
  const countHeader = req.countHeader?.toLowerCase()
  const onMessage = (msg: { type?: string }): void => {
    if (msg.type === 'mark') {
      measureFrom = performance.now()
      latency.clear()
      lag.clear()
      ok = errors = timeouts = non2xx = 0
      byStatus = {}
      byHeader = {}
    } else if (msg.type === 'stop') {
      endAt = Math.min(endAt, performance.now())
    }
  }
  process.on('message', onMessage)

  const inflight = new Set<Promise<void>>()
  const send = (due: number): void => {
    const sent = performance.now()
    const call = pool.request({ method: 'GET', path, headers: req.headers ?? {} }).then(async (res) => {
      await res.body.dump()
      const done = performance.now()
      if (done < measureFrom) return
      byStatus[String(res.statusCode)] = (byStatus[String(res.statusCode)] ?? 0) + 1
      if (res.statusCode < 200 || res.statusCode >= 300) {
        non2xx++
        return
      }
      ok++
      if (countHeader !== undefined) {
        const v = res.headers[countHeader]
        const key = typeof v === 'string' ? v : '-'
        byHeader[key] = (byHeader[key] ?? 0) + 1
      }
      latency.add(done - sent)
      lag.add(sent - due)
    }, (err: unknown) => {
      if (performance.now() < measureFrom) return
      errors++
      const code = (err as { code?: string }).code
      if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') timeouts++
    })
    inflight.add(call)
    void call.finally(() => inflight.delete(call))
  }

  // Behind schedule (this process was not run in time), every request that is due goes at once: the
  // offered load stays the rate, and the lateness shows in sendLag.
  await new Promise<void>((resolve) => {
    let i = 0
    const tick = (): void => {
      const now = performance.now()
      for (let due = start + i * intervalMs; due <= now && due < endAt; due = start + i * intervalMs) {
        send(due)
        i++
      }
      const next = start + i * intervalMs
      if (next >= endAt) resolve()
      else setTimeout(tick, Math.max(0, next - performance.now()))
    }
    tick()
  })
  const windowEnd = endAt
  await Promise.allSettled([...inflight])
  process.off('message', onMessage)
  await pool.close()
  const elapsed = (windowEnd - measureFrom) / 1000
  return {
    requests: ok,
    rps: elapsed > 0 ? ok / elapsed : Number.NaN,
    durationS: elapsed,
    errors,
    timeouts,
    non2xx,
    byStatus,
    latency: summarize(latency.values),
    sendLag: summarize(lag.values),
    ...(countHeader === undefined ? {} : { byHeader }),
  }
}
