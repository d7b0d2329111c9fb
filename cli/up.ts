import { Option, type Command } from 'commander'
import { intOption, type Runner } from './args.js'

interface UpOptions {
  backend?: string
  port?: number
  host?: string
  dataDir?: string
  store?: string
  redisUrl?: string
  kubeconfig?: string
  role?: string
}

interface Overrides {
  KINDLING_ROLE?: string
  KINDLING_STORE?: string
  KINDLING_REDIS_URL?: string
  KINDLING_BACKEND?: string
  KINDLING_PORT?: number
  KINDLING_HOST?: string
  KINDLING_DATA_DIR?: string
  KINDLING_KUBECONFIG?: string
}

const SIGNALS = ['SIGINT', 'SIGTERM'] as const

/** The next SIGINT / SIGTERM; `cancel()` gives the signals back to their default behaviour. */
export function nextSignal(): { signal: Promise<NodeJS.Signals>; cancel(): void } {
  let on: (sig: NodeJS.Signals) => void = () => {}
  const cancel = (): void => {
    for (const s of SIGNALS) process.off(s, on)
  }
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    on = (sig) => {
      cancel()
      resolve(sig)
    }
    for (const s of SIGNALS) process.on(s, on)
  })
  return { signal, cancel }
}

export function registerUpCommand(program: Command, run: Runner): void {
  program.command('up')
    .description('run the whole platform in this process (API, invocations, pools) on one port')
    .addOption(new Option('--backend <backend>', 'where instances run').choices(['process', 'docker', 'kubernetes']))
    .addOption(new Option('--role <role>', 'all: the whole platform; controller or router: one component of a cluster (KINDLING_ROLE; see the README\'s "Kindling as a cluster")').choices(['all', 'controller', 'router']))
    .option('--kubeconfig <file>', 'the cluster of --backend kubernetes (KINDLING_KUBECONFIG; e.g. the one `kindling kube-sim` writes)')
    .option('--port <port>', 'port to listen on (KINDLING_PORT, default 8080)', intOption)
    .option('--host <host>', 'address to bind (KINDLING_HOST, default 127.0.0.1)')
    .option('--data-dir <dir>', 'state, code cache and sockets (KINDLING_DATA_DIR, default ./.kindling)')
    .addOption(new Option('--store <store>', 'file (this process alone) or redis (replicas share it; KINDLING_STORE)').choices(['file', 'redis']))
    .option('--redis-url <url>', 'the Redis of --store redis (KINDLING_REDIS_URL, default redis://127.0.0.1:6379)')
    .action((opts: UpOptions) => run(async (ctx) => {
      const overrides: Overrides = {}
      if (opts.backend !== undefined) overrides.KINDLING_BACKEND = opts.backend
      if (opts.port !== undefined) overrides.KINDLING_PORT = opts.port
      if (opts.host !== undefined) overrides.KINDLING_HOST = opts.host
      if (opts.dataDir !== undefined) overrides.KINDLING_DATA_DIR = opts.dataDir
      if (opts.store !== undefined) overrides.KINDLING_STORE = opts.store
      if (opts.redisUrl !== undefined) overrides.KINDLING_REDIS_URL = opts.redisUrl
      if (opts.kubeconfig !== undefined) overrides.KINDLING_KUBECONFIG = opts.kubeconfig
      if (opts.role !== undefined) overrides.KINDLING_ROLE = opts.role
      // Loaded on demand so the client commands never pay for loading the platform.
      const { startPlatform } = await import('../embedded/main.js')
      // Last line of defence: every background path of the platform handles its own failures (a test run
      // fails on one that does not); should one still slip through, it is reported, not fatal to every
      // function this process serves.
      process.on('unhandledRejection', (err: unknown) => {
        ctx.stderr.write(`kindling: an unhandled background failure was ignored (a bug, please report it): ${(err as Error)?.stack ?? String(err)}\n`)
      })
      // Listen before starting: a signal during start-up still shuts the platform down cleanly.
      const { signal, cancel } = nextSignal()
      let platform: { url: string; lost?: Promise<string> | undefined; close(): Promise<void> }
      try {
        platform = await startPlatform({ env: ctx.env, overrides })
      } catch (err) {
        cancel()
        throw err
      }
      const backend = opts.backend ?? ctx.env['KINDLING_BACKEND'] ?? 'process'
      const store = opts.store ?? ctx.env['KINDLING_STORE'] ?? 'file'
      const role = opts.role ?? ctx.env['KINDLING_ROLE'] ?? 'all'
      ctx.stdout.write(`kindling listening on ${platform.url} (${role === 'router' ? 'router' : `backend ${backend}${store === 'redis' ? ', store redis' : ''}${role === 'controller' ? ', controller' : ''}`})\n`)
      // A controller that loses its leadership stops at once and exits non-zero: its pod restarts as a candidate.
      const ended = await Promise.race([signal.then((sig) => ({ sig })), (platform.lost ?? new Promise<never>(() => {})).then((why) => ({ lost: why }))])
      if ('lost' in ended) {
        cancel()
        ctx.stderr.write(`kindling: ${ended.lost}, stopping\n`)
        await platform.close()
        return 1
      }
      const sig = ended.sig
      ctx.stderr.write(`kindling: ${sig} received, stopping (press Ctrl-C again to force)\n`)
      const force = (): void => process.exit(130)
      for (const s of SIGNALS) process.once(s, force)
      try {
        await platform.close()
      } finally {
        for (const s of SIGNALS) process.off(s, force)
      }
      return 0
    }))
}
