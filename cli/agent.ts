import type { Command } from 'commander'
import { intOption, type Runner } from './args.js'
import { nextSignal } from './up.js'

interface AgentOptions {
  port?: number
  host?: string
  cgroupRoot?: string
}

/** `kindling agent`: the node agent of a cluster (the chart's DaemonSet runs it with `args: ["agent"]`). */
export function registerAgentCommand(program: Command, run: Runner): void {
  program.command('agent')
    .description('run the node agent: samples and throttles the cgroups of the pods on this node for the controller\'s load guard (KINDLING_AGENT_PORT, KINDLING_AGENT_TOKEN)')
    .option('--port <port>', 'port (default KINDLING_AGENT_PORT, 8082)', intOption)
    .option('--host <host>', 'address (default KINDLING_HOST)')
    .option('--cgroup-root <dir>', 'the cgroup filesystems (default KINDLING_AGENT_CGROUP_ROOT, /sys/fs/cgroup)')
    .action((opts: AgentOptions) => run(async (ctx) => {
      const { startAgent } = await import('../embedded/agent.js')
      const { signal, cancel } = nextSignal()
      let agent: Awaited<ReturnType<typeof startAgent>>
      try {
        agent = await startAgent(ctx.env, {
          ...(opts.port === undefined ? {} : { KINDLING_AGENT_PORT: opts.port }),
          ...(opts.host === undefined ? {} : { KINDLING_HOST: opts.host }),
          ...(opts.cgroupRoot === undefined ? {} : { KINDLING_AGENT_CGROUP_ROOT: opts.cgroupRoot }),
        })
      } catch (err) {
        cancel()
        throw err
      }
      ctx.stdout.write(`kindling agent on ${agent.url}\n`)
      const sig = await signal
      ctx.stderr.write(`kindling: ${sig} received, stopping the agent\n`)
      await agent.stop()
      return 0
    }))
}
