import { pino } from 'pino'
import { buildAgentServer, type AgentServer } from '../agent/server.js'
import { loadConfig, type Config } from '../common/config.js'

export interface RunningAgent {
  /** `http://host:port` it listens on. */
  url: string
  server: AgentServer
  config: Config
  stop(): Promise<void>
}

/**
 * `kindling agent` (issue 13): the node agent, composed from its environment — KINDLING_HOST:KINDLING_AGENT_PORT,
 * the bearer KINDLING_AGENT_TOKEN, KINDLING_NODE_NAME and KINDLING_POD_IP (reported), the cgroup root
 * KINDLING_AGENT_CGROUP_ROOT. It reads and throttles the pods' cgroups of its node for the controller's load guard.
 */
export async function startAgent(env: Record<string, string | undefined>, overrides: Partial<Record<keyof Config, string | number>> = {}): Promise<RunningAgent> {
  const config = loadConfig(env, overrides)
  const log = pino({ level: config.KINDLING_LOG_LEVEL }).child({ component: 'agent', node: config.KINDLING_NODE_NAME })
  const server = buildAgentServer({
    cgroupRoot: config.KINDLING_AGENT_CGROUP_ROOT, token: config.KINDLING_AGENT_TOKEN, node: config.KINDLING_NODE_NAME, podIP: config.KINDLING_POD_IP, log,
  })
  // The hierarchy is found once at start: a node without one fails here, not at the first sample.
  await server.locator.layout()
  const url = await server.listen(config.KINDLING_HOST, config.KINDLING_AGENT_PORT)
  log.info({ url, cgroupRoot: config.KINDLING_AGENT_CGROUP_ROOT, version: (await server.locator.layout()).version }, 'node agent listening')
  return { url, server, config, stop: () => server.close() }
}
