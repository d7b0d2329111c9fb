import { randomBytes } from 'node:crypto'
import { createServer } from 'node:http'
import { hostname } from 'node:os'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { LeaderElector } from '../backends/kubernetes/leader.js'
import type { Config } from '../common/config.js'
import { errorBody, KdlError } from '../common/errors.js'
import { Metrics } from '../common/metrics.js'
import { VersionSamples } from '../common/version-samples.js'
import { RemoteExecutorClient } from '../executor/remote-client.js'
import { buildRouter } from '../router/app.js'
import { CallStats } from '../router/call-stats.js'
import { loadKubeConfig } from './kubernetes.js'

/**
 * The two cluster roles' own wiring (issue 13): a router (function URLs, its executor the controller's over the
 * network) and the controller's leader election. `startEmbedded` calls these for KINDLING_ROLE router/controller.
 */

/** This process's name in a cluster: its pod's (the kubelet sets HOSTNAME to it), else the host's. */
function podName(): string {
  return (process.env['HOSTNAME'] ?? hostname()).replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100)
}

/** A cluster router: the router's app alone, its instances from the controller at KINDLING_EXECUTOR_URL. */
export async function startRouterRole(config: Config, log: Logger, shutdownGraceMs: number): Promise<{ url: string; port: number; close(): Promise<void> }> {
  if (config.KINDLING_EXECUTOR_URL === undefined) throw new KdlError('KDL_ERR_BAD_REQUEST', 'KINDLING_ROLE=router needs KINDLING_EXECUTOR_URL (the controller\'s executor, http://host:8081)')
  const executor = new RemoteExecutorClient({
    url: config.KINDLING_EXECUTOR_URL.replace(/\/$/, ''), token: config.KINDLING_EXECUTOR_TOKEN, log: log.child({ component: 'executor-client' }),
    routerId: `${podName()}-${randomBytes(3).toString('hex')}`,
  })
  const metrics = new Metrics(new Registry())
  const { app, table } = buildRouter({
    executor, metrics, log, callStats: new CallStats(), samples: new VersionSamples(),
    // Ready once it has reached a controller, and still while it is away: the warm path needs none (issue 13).
    notReady: () => (executor.reachedController ? undefined : `not connected to the controller at ${config.KINDLING_EXECUTOR_URL} yet`),
    readiness: () => ({ controller: executor.connected ? 'connected' : 'away' }),
  }, { maxBodyBytes: config.KINDLING_MAX_BODY_BYTES, maxApiBodyBytes: config.KINDLING_MAX_DEPLOY_BYTES })
  // Not awaited: the router listens (and answers /healthz) while the controller is still coming up.
  void executor.start(false)
  try {
    await app.listen({ host: config.KINDLING_HOST, port: config.KINDLING_PORT })
  } catch (err) {
    await executor.close()
    throw new KdlError('KDL_ERR_INTERNAL', `cannot listen on ${config.KINDLING_HOST}:${config.KINDLING_PORT}: ${(err as Error).message}`, { cause: err })
  }
  const a = app.server.address()
  const port = typeof a === 'object' && a !== null ? a.port : config.KINDLING_PORT
  const host = config.KINDLING_HOST.includes(':') ? `[${config.KINDLING_HOST}]` : config.KINDLING_HOST
  log.info({ port, executor: config.KINDLING_EXECUTOR_URL, router: executor.routerId }, 'kindling router is up')
  let closing: Promise<void> | undefined
  return {
    url: `http://${host}:${port}`,
    port,
    close: () => {
      closing ??= (async () => {
        const closed = app.close()
        await table.whenIdle(shutdownGraceMs)
        app.server.closeAllConnections()
        await closed
        // The instances it held go back to the controller as the slots are released (table.close), then the stream ends.
        await executor.close()
      })()
      return closing
    },
  }
}

/**
 * Waits to lead (KINDLING_LEADER_LEASE): meanwhile KINDLING_PORT answers `/healthz` 200 (alive) and everything else
 * `503 KDL_ERR_CONTROLLER_UNAVAILABLE`, so the standby is live but never Ready and its Services send it nothing.
 * `lost` resolves if leadership is lost later: the process must then stop (it restarts as a candidate).
 */
export async function electLeader(config: Config, log: Logger): Promise<{ elector: LeaderElector; lost: Promise<string> }> {
  const name = config.KINDLING_LEADER_LEASE
  if (name === undefined) throw new KdlError('KDL_ERR_INTERNAL', 'no leader lease configured')
  let onLost: (why: string) => void = () => {}
  const lost = new Promise<string>((resolve) => { onLost = resolve })
  const elector = new LeaderElector({
    kubeConfig: loadKubeConfig(config), namespace: config.KINDLING_KUBE_NAMESPACE, name,
    identity: `${podName()}-${randomBytes(3).toString('hex')}`,
    leaseMs: config.KINDLING_LEADER_LEASE_MS, log: log.child({ component: 'leader' }),
    onLost: () => onLost('leadership lost'),
  })
  const standby = createServer((req, res) => {
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}')
      return
    }
    const body = JSON.stringify({ ...errorBody(new KdlError('KDL_ERR_CONTROLLER_UNAVAILABLE', 'this controller is a standby: another one leads')), status: 'standby' })
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' }).end(body)
  })
  await new Promise<void>((resolve, reject) => {
    standby.once('error', reject)
    standby.listen(config.KINDLING_PORT, config.KINDLING_HOST, () => resolve())
  })
  try {
    await elector.acquire()
  } finally {
    const closed = new Promise<void>((resolve) => standby.close(() => resolve()))
    standby.closeAllConnections()
    await closed
  }
  return { elector, lost }
}
