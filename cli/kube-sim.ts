import { InvalidArgumentError, type Command } from 'commander'
import { intOption, type Runner } from './args.js'
import { nextSignal } from './up.js'

const ROLES = ['management', 'runtime', 'quarantine'] as const
type Role = typeof ROLES[number]

/** `--nodes management=1,runtime=2,quarantine=1`: how many nodes of each role (a role left out has none). */
export function nodesOption(value: string): Record<Role, number> {
  const out: Record<Role, number> = { management: 0, runtime: 0, quarantine: 0 }
  for (const part of value.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    const m = /^([a-z]+)=(\d{1,2})$/.exec(part)
    if (m === null || !(ROLES as readonly string[]).includes(m[1]!)) {
      throw new InvalidArgumentError(`"${part}" is not ROLE=N with ROLE one of ${ROLES.join(', ')}`)
    }
    out[m[1] as Role] = Number(m[2])
  }
  if (out.runtime === 0) throw new InvalidArgumentError('at least one runtime node is needed (runtime=N)')
  return out
}

interface KubeSimOptions {
  nodes: Record<Role, number>
  port?: number
  host?: string
  dataDir?: string
  kubeconfig?: string
  nodeCpu?: number
  nodeMemory?: number
}

export function registerKubeSimCommand(program: Command, run: Runner): void {
  program.command('kube-sim')
    .description('run a local Kubernetes stand-in (API server, scheduler, controllers, kubelets running pods as local processes) for the kubernetes backend and kubectl')
    .option('--nodes <roles>', 'nodes per role', nodesOption, { management: 1, runtime: 2, quarantine: 1 })
    .option('--port <port>', 'API server port (default: any free port)', intOption)
    .option('--host <host>', 'API server address (default 127.0.0.1)')
    .option('--data-dir <dir>', 'pods\' volumes and logs (default ./.kindling-sim)')
    .option('--kubeconfig <file>', 'where to write the kubeconfig (default <data-dir>/kubeconfig)')
    .option('--node-cpu <cores>', 'allocatable CPU of each node (default 4)', intOption)
    .option('--node-memory <MiB>', 'allocatable memory of each node, MiB (default 8192)', intOption)
    .action((opts: KubeSimOptions) => run(async (ctx) => {
      const { startKubeSim } = await import('../embedded/kube-sim.js')
      const { signal, cancel } = nextSignal()
      let sim: Awaited<ReturnType<typeof startKubeSim>>
      try {
        sim = await startKubeSim({
          nodes: opts.nodes, port: opts.port, host: opts.host, dataDir: opts.dataDir, kubeconfig: opts.kubeconfig,
          nodeCpu: opts.nodeCpu, nodeMemoryMi: opts.nodeMemory, env: ctx.env,
        })
      } catch (err) {
        cancel()
        throw err
      }
      ctx.stdout.write(`kube-sim API server on ${sim.url} (nodes: ${sim.nodes.join(', ')})\n`)
      ctx.stdout.write(`kubeconfig written to ${sim.kubeconfigPath}\n`)
      ctx.stdout.write(`  kubectl --kubeconfig ${sim.kubeconfigPath} get nodes\n`)
      ctx.stdout.write(`  kindling up --backend kubernetes --kubeconfig ${sim.kubeconfigPath}\n`)
      const sig = await signal
      ctx.stderr.write(`kindling: ${sig} received, stopping the stand-in\n`)
      await sim.stop()
      return 0
    }))
}
