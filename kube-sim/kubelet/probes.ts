/**
 * Container probes as the kubelet runs them (issue 10): httpGet (2xx/3xx is success) on the pod IP, tcpSocket
 * (a connection is success), exec (exit 0, in the container's environment); the first after
 * `initialDelaySeconds`, then every `periodSeconds`; a result flips after `successThreshold` /
 * `failureThreshold` consecutive outcomes. gRPC probes are not run (always a failure, said in the message).
 */
import { request } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect } from 'node:net'

export interface Probe {
  httpGet?: { path?: string; port: number | string; host?: string; scheme?: string; httpHeaders?: Array<{ name: string; value: string }> }
  tcpSocket?: { port: number | string; host?: string }
  exec?: { command?: string[] }
  grpc?: unknown
  initialDelaySeconds?: number
  periodSeconds?: number
  timeoutSeconds?: number
  successThreshold?: number
  failureThreshold?: number
  terminationGracePeriodSeconds?: number
}

export interface ProbeTarget {
  ip: string
  /** The container's named ports. */
  ports: ReadonlyArray<{ name?: string; containerPort: number }>
  /** Runs a command in the container's context; resolves with its exit code. */
  exec(command: string[], timeoutMs: number): Promise<number>
}

export interface ProbeOutcome {
  ok: boolean
  message: string
}

function portOf(port: number | string, target: ProbeTarget): number {
  if (typeof port === 'number') return port
  const named = target.ports.find((p) => p.name === port)
  return named?.containerPort ?? Number(port)
}

export async function runProbe(probe: Probe, target: ProbeTarget): Promise<ProbeOutcome> {
  const timeoutMs = Math.max(1, probe.timeoutSeconds ?? 1) * 1000
  if (probe.httpGet !== undefined) return httpProbe(probe.httpGet, target, timeoutMs)
  if (probe.tcpSocket !== undefined) {
    const port = portOf(probe.tcpSocket.port, target)
    const host = probe.tcpSocket.host ?? target.ip
    return new Promise((resolve) => {
      const sock = connect({ host, port, timeout: timeoutMs })
      const done = (o: ProbeOutcome): void => { sock.destroy(); resolve(o) }
      sock.once('connect', () => done({ ok: true, message: '' }))
      sock.once('timeout', () => done({ ok: false, message: `dial tcp ${host}:${port}: i/o timeout` }))
      sock.once('error', (err) => done({ ok: false, message: `dial tcp ${host}:${port}: ${err.message}` }))
    })
  }
  if (probe.exec !== undefined) {
    const code = await target.exec(probe.exec.command ?? [], timeoutMs).catch(() => -1)
    return code === 0 ? { ok: true, message: '' } : { ok: false, message: `command ${JSON.stringify(probe.exec.command ?? [])} exited with ${code}` }
  }
  return { ok: false, message: 'the stand-in runs httpGet, tcpSocket and exec probes only' }
}

function httpProbe(get: NonNullable<Probe['httpGet']>, target: ProbeTarget, timeoutMs: number): Promise<ProbeOutcome> {
  const port = portOf(get.port, target)
  const host = get.host ?? target.ip
  const https = (get.scheme ?? 'HTTP').toUpperCase() === 'HTTPS'
  const headers: Record<string, string> = { 'user-agent': 'kube-probe/1.34', accept: '*/*' }
  for (const h of get.httpHeaders ?? []) headers[h.name.toLowerCase()] = h.value
  const url = `${https ? 'https' : 'http'}://${host}:${port}${get.path ?? '/'}`
  return new Promise((resolve) => {
    const req = (https ? httpsRequest : request)(url, { method: 'GET', headers, timeout: timeoutMs, agent: false, rejectUnauthorized: false }, (res) => {
      res.resume()
      const code = res.statusCode ?? 0
      resolve(code >= 200 && code < 400 ? { ok: true, message: '' } : { ok: false, message: `HTTP probe failed with statuscode: ${code}` })
    })
    req.once('timeout', () => {
      req.destroy()
      resolve({ ok: false, message: `Get "${url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)` })
    })
    req.once('error', (err) => resolve({ ok: false, message: `Get "${url}": ${err.message}` }))
    req.end()
  })
}

/**
 * One probe of one container, run on its schedule until stopped. `onResult` hears every flip of the result
 * (the first result counts as a flip), with the failing outcome's message.
 */
export class ProbeWorker {
  readonly #probe: Probe
  readonly #target: ProbeTarget
  readonly #onResult: (ok: boolean, message: string) => void
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  #result: boolean | undefined
  #successes = 0
  #failures = 0

  constructor(probe: Probe, target: ProbeTarget, onResult: (ok: boolean, message: string) => void) {
    this.#probe = probe
    this.#target = target
    this.#onResult = onResult
  }

  start(): void {
    this.#schedule(Math.max(0, this.#probe.initialDelaySeconds ?? 0) * 1000)
  }

  stop(): void {
    this.#stopped = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
  }

  #schedule(ms: number): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => void this.#tick(), ms)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    const outcome = await runProbe(this.#probe, this.#target)
    if (this.#stopped) return
    if (outcome.ok) {
      this.#successes++
      this.#failures = 0
      if (this.#result !== true && this.#successes >= Math.max(1, this.#probe.successThreshold ?? 1)) this.#flip(true, '')
    } else {
      this.#failures++
      this.#successes = 0
      if (this.#result !== false && this.#failures >= Math.max(1, this.#probe.failureThreshold ?? 3)) this.#flip(false, outcome.message)
    }
    this.#schedule(Math.max(1, this.#probe.periodSeconds ?? 10) * 1000)
  }

  #flip(ok: boolean, message: string): void {
    this.#result = ok
    this.#onResult(ok, message)
  }
}
