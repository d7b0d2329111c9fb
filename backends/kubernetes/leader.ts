import { CoordinationV1Api, type KubeConfig, type V1Lease } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { statusOf } from './kube-common.js'

/**
 * Leader election on a coordination.k8s.io/v1 Lease (issue 13), as client-go's leaderelection does it: the holder
 * renews `renewTime` every `retryPeriod`; a candidate takes the Lease over only when it has seen the same holder
 * record unchanged for a whole `leaseDuration` on its own clock (never by comparing the remote timestamp with its
 * clock — the machines' clocks need not agree), and every write is guarded by the object's resourceVersion, so of
 * two candidates exactly one wins. A leader that cannot renew within `renewDeadline` stops leading (`onLost`):
 * the process exits and comes back as a candidate. Released on a clean stop, so the next leader need not wait.
 */
export interface LeaderElectorOptions {
  kubeConfig: KubeConfig
  namespace: string
  name: string
  /** This candidate's identity (its pod name and a random suffix). */
  identity: string
  leaseMs: number
  log: Logger
  /** Leadership lost (not renewed in time, or taken): the caller must stop acting as leader at once. */
  onLost: () => void
}

export class LeaderElector {
  readonly #o: LeaderElectorOptions
  readonly #api: CoordinationV1Api
  #leader = false
  #stopped = false
  #timer: NodeJS.Timeout | undefined
  /** The other holder's record as last seen, and when (local monotonic ms). */
  #observed: { record: string; at: number } | undefined
  #lastRenew = 0

  constructor(opts: LeaderElectorOptions) {
    this.#o = opts
    this.#api = opts.kubeConfig.makeApiClient(CoordinationV1Api)
  }

  get identity(): string {
    return this.#o.identity
  }

  get isLeader(): boolean {
    return this.#leader
  }

  get retryMs(): number {
    return Math.max(200, Math.floor(this.#o.leaseMs / 5))
  }

  /** Resolves once this candidate leads (then keeps renewing); rejects when stopped first. */
  async acquire(): Promise<void> {
    let logged = false
    while (!this.#stopped) {
      if (await this.#tryAcquireOrRenew()) {
        this.#leader = true
        this.#lastRenew = performance.now()
        this.#o.log.info({ lease: this.#o.name, identity: this.#o.identity }, 'elected leader')
        this.#schedule()
        return
      }
      if (!logged) {
        this.#o.log.info({ lease: this.#o.name, identity: this.#o.identity }, 'standing by: another controller leads')
        logged = true
      }
      await new Promise((r) => setTimeout(r, this.retryMs).unref())
    }
    throw new Error('leader election stopped')
  }

  /** Stops renewing; a leader gives the Lease up (empty holder), so a standby takes over within one retry period. */
  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    if (!this.#leader) return
    this.#leader = false
    try {
      const lease = await this.#api.readNamespacedLease({ name: this.#o.name, namespace: this.#o.namespace })
      if (lease.spec?.holderIdentity !== this.#o.identity) return
      lease.spec = { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(new Date()) as unknown as Date }
      await this.#api.replaceNamespacedLease({ name: this.#o.name, namespace: this.#o.namespace, body: lease })
      this.#o.log.info({ lease: this.#o.name }, 'leadership released')
    } catch (err) {
      this.#o.log.warn({ err }, 'cannot release the leader lease (the next leader waits for it to expire)')
    }
  }

  #schedule(): void {
    this.#timer = setTimeout(() => void this.#renew(), this.retryMs)
    this.#timer.unref()
  }

  async #renew(): Promise<void> {
    if (this.#stopped) return
    const ok = await this.#tryAcquireOrRenew()
    const now = performance.now()
    if (ok) this.#lastRenew = now
    // client-go's renewDeadline: two thirds of the lease, so a leader steps down before anyone may take over.
    if (!ok && now - this.#lastRenew > (this.#o.leaseMs * 2) / 3) {
      this.#leader = false
      this.#stopped = true
      this.#o.log.error({ lease: this.#o.name, identity: this.#o.identity }, 'leadership lost: the lease was not renewed in time')
      this.#o.onLost()
      return
    }
    this.#schedule()
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const { name, namespace, identity } = this.#o
    const now = new Date()
    const seconds = Math.max(1, Math.ceil(this.#o.leaseMs / 1000))
    let lease: V1Lease
    try {
      lease = await this.#api.readNamespacedLease({ name, namespace })
    } catch (err) {
      if (statusOf(err) !== 404) {
        this.#o.log.warn({ err: (err as Error).message }, 'cannot read the leader lease')
        return false
      }
      try {
        await this.#api.createNamespacedLease({
          namespace,
          body: { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace }, spec: {
            holderIdentity: identity, leaseDurationSeconds: seconds, acquireTime: microTime(now) as unknown as Date, renewTime: microTime(now) as unknown as Date, leaseTransitions: 0,
          } },
        })
        return true
      } catch (e) {
        if (statusOf(e) !== 409) this.#o.log.warn({ err: (e as Error).message }, 'cannot create the leader lease')
        return false
      }
    }
    const spec = lease.spec ?? {}
    const holder = spec.holderIdentity ?? ''
    if (holder !== '' && holder !== identity) {
      const record = `${holder}|${String(spec.renewTime)}|${spec.leaseDurationSeconds ?? seconds}`
      const t = performance.now()
      if (this.#observed?.record !== record) this.#observed = { record, at: t }
      const duration = (spec.leaseDurationSeconds ?? seconds) * 1000
      if (t - this.#observed.at < duration) return false
    }
    const taking = holder !== identity
    lease.spec = {
      ...spec,
      holderIdentity: identity,
      leaseDurationSeconds: seconds,
      renewTime: microTime(now) as unknown as Date,
      ...(taking ? { acquireTime: microTime(now) as unknown as Date, leaseTransitions: (spec.leaseTransitions ?? 0) + (holder === '' && spec.leaseTransitions === undefined ? 0 : 1) } : {}),
    }
    try {
      await this.#api.replaceNamespacedLease({ name, namespace, body: lease })
      if (taking && holder !== '') this.#o.log.warn({ lease: name, from: holder }, 'took the leader lease over from a holder that stopped renewing')
      return true
    } catch (err) {
      if (statusOf(err) !== 409) this.#o.log.warn({ err: (err as Error).message }, 'cannot renew the leader lease')
      return false
    }
  }
}

/** RFC 3339 with microseconds, as the API server's MicroTime wants it (`toISOString` has milliseconds only). */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
}
