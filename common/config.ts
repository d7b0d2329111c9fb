import { Type, type Static } from '@sinclair/typebox'
import { Ajv } from 'ajv'
import { KdlError } from './errors.js'
import { RUNTIME_DEFAULTS } from './spec.js'

/**
 * Configuration of `kindling up` (and, later, of each component's main.ts).
 * Keys are the environment variable names; defaults live here; the Helm chart's `env:` uses the same names.
 */
export const ConfigSchema = Type.Object({
  /** Address the HTTP server binds. @default 127.0.0.1 */
  KINDLING_HOST: Type.String({ default: '127.0.0.1' }),
  /** Port of the one HTTP server (API, invocations, metrics). @default 8080 */
  KINDLING_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  /** Where the file store, code cache and instance sockets live. @default ./.kindling */
  KINDLING_DATA_DIR: Type.String({ minLength: 1, default: '.kindling' }),
  /** Container backend. @default process */
  KINDLING_BACKEND: Type.Union([Type.Literal('process'), Type.Literal('docker'), Type.Literal('kubernetes')], { default: 'process' }),
  /** Store of specs, versions, runtimes (and, on Redis, async jobs and triggers): `file` (one process) or `redis` (several replicas share it). @default file */
  KINDLING_STORE: Type.Union([Type.Literal('file'), Type.Literal('redis')], { default: 'file' }),
  /** Redis the `redis` store uses (`redis://[:password@]host:port[/db]`, `rediss://` for TLS). @default redis://127.0.0.1:6379 */
  KINDLING_REDIS_URL: Type.String({ pattern: '^rediss?://', default: 'redis://127.0.0.1:6379' }),
  /** Prefix of every key and channel the platform uses in Redis (several platforms may share one Redis). @default kindling: */
  KINDLING_REDIS_PREFIX: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', default: 'kindling:' }),
  // Async invocations (issue 11; KINDLING_STORE=redis).
  /** Largest async invocation body (Lambda's async limit); also the largest answer body a job keeps. @default 262144 */
  KINDLING_ASYNC_MAX_BODY_BYTES: Type.Integer({ minimum: 1024, maximum: 6 * 1024 * 1024, default: 262_144 }),
  /** Async jobs one replica runs at once. @default 8 */
  KINDLING_ASYNC_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 1024, default: 8 }),
  /** Back-off of a job's first retry, ms (at most; full jitter), doubling each retry up to 5 min. @default 1000 */
  KINDLING_ASYNC_RETRY_BASE_MS: Type.Integer({ minimum: 1, maximum: 300_000, default: 1000 }),
  /** A delivery unsettled for its call's longest run (queueTimeoutMs + timeoutMs + 1 s) plus this is taken over by another worker, ms. @default 5000 */
  KINDLING_ASYNC_RECLAIM_MARGIN_MS: Type.Integer({ minimum: 100, maximum: 600_000, default: 5000 }),
  // Workflows (issue 12; on either store).
  /** Largest input of a workflow run (the body of `POST /wf/:name`), bytes. @default 262144 */
  KINDLING_WORKFLOW_MAX_INPUT_BYTES: Type.Integer({ minimum: 1024, maximum: 6 * 1024 * 1024, default: 262_144 }),
  /** Largest input or output of one workflow step (a task's call and answer included), bytes. @default 262144 */
  KINDLING_WORKFLOW_MAX_PAYLOAD_BYTES: Type.Integer({ minimum: 1024, maximum: 6 * 1024 * 1024, default: 262_144 }),
  /** Steps one run may take (states entered, map items and branches included) before it fails with KDL_ERR_WF_STEP_LIMIT. @default 25000 */
  KINDLING_WORKFLOW_MAX_STEPS: Type.Integer({ minimum: 10, maximum: 1_000_000, default: 25_000 }),
  /** How long a sync start (`POST /wf/:name`) waits for the run's end before it answers 202 with the run id, ms. @default 30000 */
  KINDLING_WORKFLOW_SYNC_WAIT_MS: Type.Integer({ minimum: 0, maximum: 900_000, default: 30_000 }),
  /** When set, `/v1` requires `Authorization: Bearer <token>`. */
  KINDLING_API_TOKEN: Type.Optional(Type.String({ minLength: 1 })),
  /** pino level. @default info */
  KINDLING_LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }),
  /** Generic instances of the built-in `node` runtime kept warm until the runtime is configured otherwise. @default 2 */
  KINDLING_POOL_SIZE: Type.Integer({ minimum: 0, maximum: 256, default: RUNTIME_DEFAULTS.poolSize }),
  /** Largest invocation body, bytes. @default 6291456 (6 MiB) */
  KINDLING_MAX_BODY_BYTES: Type.Integer({ minimum: 1, default: 6 * 1024 * 1024 }),
  /** Largest deploy request (inline code or base64 archive), bytes. @default 52428800 (50 MiB) */
  KINDLING_MAX_DEPLOY_BYTES: Type.Integer({ minimum: 1, default: 50 * 1024 * 1024 }),
  /** Largest unpacked code archive, bytes. @default 268435456 (256 MiB) */
  KINDLING_MAX_UNPACKED_BYTES: Type.Integer({ minimum: 1, default: 256 * 1024 * 1024 }),
  /** Max processes/threads per instance (pids cgroup). @default 64 */
  KINDLING_PIDS_LIMIT: Type.Integer({ minimum: 8, default: 64 }),
  /** uid:gid instances run as when the platform runs as root. @default 65534:65534 */
  KINDLING_INSTANCE_USER: Type.String({ pattern: '^[0-9]+:[0-9]+$', default: '65534:65534' }),
  /** How long an instance may take to start and answer its health check, ms. @default 10000 */
  KINDLING_START_TIMEOUT_MS: Type.Integer({ minimum: 100, default: 10_000 }),
  /** Instance starts that may run at once (more wait; calls' starts before pool refills); 0: the backend's own (docker 2 × CPUs, process 8 × CPUs). @default 0 */
  KINDLING_MAX_STARTING: Type.Integer({ minimum: 0, maximum: 1024, default: 0 }),
  /** How long a function's module may take to load (top level and imports) before the load is refused with KDL_ERR_LOAD_TIMEOUT, ms. @default 5000 */
  KINDLING_LOAD_TIMEOUT_MS: Type.Integer({ minimum: 100, default: 5000 }),
  // Function logs (issue 14): what each instance prints, kept per function in memory.
  /** Lines a second one instance may print (stdout and stderr together, burst twice that); more are counted as dropped. @default 1000 */
  KINDLING_LOG_LINES_PER_SEC: Type.Integer({ minimum: 1, default: 1000 }),
  /** Longest log line kept, characters; a longer line is cut and marked `truncated`. @default 16384 */
  KINDLING_LOG_MAX_LINE: Type.Integer({ minimum: 80, maximum: 1_048_576, default: 16_384 }),
  /** Log entries kept per function (the oldest fall off). @default 2000 */
  KINDLING_LOG_RETAIN_LINES: Type.Integer({ minimum: 1, default: 2000 }),
  /** Log text kept per function, bytes (the oldest entries fall off). @default 1048576 */
  KINDLING_LOG_RETAIN_BYTES: Type.Integer({ minimum: 1024, default: 1024 * 1024 }),
  /** Versions kept per function (issue 15), besides those an alias, a running canary or a workflow run uses. @default 10 */
  KINDLING_KEEP_VERSIONS: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
  /** Memory instances may be charged together, MiB; 0: three quarters of the host's memory (issue 16). @default 0 */
  KINDLING_MEMORY_BUDGET_MB: Type.Integer({ minimum: 0, default: 0 }),
  /** What an idle pooled instance is charged, as a share of its memory limit (a serving one: its limit). @default 0.125 */
  KINDLING_IDLE_MEMORY_RATIO: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.125 }),
  /** Host memory kept available (MemAvailable): no instance starts below it; 0: 5 % of the host's memory, at most 2048. @default 0 */
  KINDLING_MEMORY_FLOOR_MB: Type.Integer({ minimum: 0, default: 0 }),
  /** Docker engine socket (docker backend). @default /var/run/docker.sock */
  KINDLING_DOCKER_SOCKET: Type.String({ minLength: 1, default: '/var/run/docker.sock' }),
  // The kubernetes backend (issue 10).
  /** Kubeconfig of the cluster (its current context); unset: $KUBECONFIG, else in-cluster service account, else ~/.kube/config. */
  KINDLING_KUBECONFIG: Type.Optional(Type.String({ minLength: 1 })),
  /** Namespace of the runtime pods (created when missing). @default kindling */
  KINDLING_KUBE_NAMESPACE: Type.String({ pattern: '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$', default: 'kindling' }),
  /** Image of the node runtime's pods. @default kindling/runtime-node:<platform version> */
  KINDLING_KUBE_RUNTIME_IMAGE: Type.Optional(Type.String({ minLength: 1 })),
  /** `key=value` of the runtime nodes: their label (the pods' nodeSelector) and their `NoSchedule` taint (tolerated). @default kindling.io/node-role=runtime */
  KINDLING_KUBE_RUNTIME_NODES: Type.String({ pattern: '^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$', default: 'kindling.io/node-role=runtime' }),
  /** `key=value` of the quarantine nodes (load guard): label and taint, as for runtime nodes. @default kindling.io/node-role=quarantine */
  KINDLING_KUBE_QUARANTINE_NODES: Type.String({ pattern: '^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$', default: 'kindling.io/node-role=quarantine' }),
  /** Where the code server pods fetch function code from listens (`host:port`). @default 127.0.0.1:0 (the stand-in; in a cluster: 0.0.0.0:8890) */
  KINDLING_KUBE_CODE_LISTEN: Type.String({ pattern: '^[^\\s:]+:[0-9]{1,5}$', default: '127.0.0.1:0' }),
  /** The address pods reach the code server at (its pod IP, a Service name); unset: the listen address (a wildcard one needs this). */
  KINDLING_KUBE_CODE_HOST: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9.:_-]+$' })),
  // Kindling as a cluster (issue 13): each component its own workload.
  /** What this process runs: `all` (the whole platform, one process), `controller` (API, executor, pools, load guard; leader-elected with KINDLING_LEADER_LEASE), `router` (function URLs; its executor is the controller's, at KINDLING_EXECUTOR_URL). @default all */
  KINDLING_ROLE: Type.Union([Type.Literal('all'), Type.Literal('controller'), Type.Literal('router')], { default: 'all' }),
  /** The controller's executor a router asks for instances (`http://host:port`; role router). */
  KINDLING_EXECUTOR_URL: Type.Optional(Type.String({ pattern: '^https?://[^\\s/]+/?$' })),
  /** Port of the controller's executor endpoint for routers (role controller), on KINDLING_HOST. @default 8081 */
  KINDLING_EXECUTOR_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8081 }),
  /** Bearer token between routers and the controller's executor; unset: none (the chart's NetworkPolicy and Secret set one). */
  KINDLING_EXECUTOR_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  /** The platform's identity (labels of its pods, its cgroups); unset: derived from the data directory. Every controller replica of one install must share it. */
  KINDLING_PLATFORM_ID: Type.Optional(Type.String({ pattern: '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$' })),
  /** Name of the coordination.k8s.io Lease the controllers elect their leader with, in KINDLING_KUBE_NAMESPACE (role controller); unset: no election (one controller). */
  KINDLING_LEADER_LEASE: Type.Optional(Type.String({ pattern: '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$' })),
  /** Lease duration of the leader election: a leader that has not renewed this long is replaced. @default 15000 */
  KINDLING_LEADER_LEASE_MS: Type.Integer({ minimum: 2000, maximum: 600_000, default: 15_000 }),
  /** Port of `kindling agent` (the node agent), on KINDLING_HOST; also the port the controller reaches agents on. @default 8082 */
  KINDLING_AGENT_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8082 }),
  /** Bearer token between the controller and the node agents (everything but GET /healthz); unset: none. */
  KINDLING_AGENT_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  /** Label selector of the agent pods in KINDLING_KUBE_NAMESPACE (backend kubernetes): set, the load guard samples and throttles pods through them. */
  KINDLING_AGENT_SELECTOR: Type.Optional(Type.String({ minLength: 1 })),
  /** The node an agent runs on (the chart: spec.nodeName); reported by its /healthz and samples. */
  KINDLING_NODE_NAME: Type.Optional(Type.String({ minLength: 1 })),
  /** The agent pod's address (the chart: status.podIP); reported by its /healthz. */
  KINDLING_POD_IP: Type.Optional(Type.String({ minLength: 1 })),
  /** Where the agent finds the node's cgroup filesystems (tests: a fabricated tree). @default /sys/fs/cgroup */
  KINDLING_AGENT_CGROUP_ROOT: Type.String({ minLength: 1, default: '/sys/fs/cgroup' }),
  /** Grow generic pools when they see cold starts, shrink them when calm (OpenWhisk's reactive rule). @default true */
  KINDLING_POOL_ADAPTIVE: Type.Boolean({ default: true }),
  /** Upper bound of an adaptive generic pool. @default 8 */
  KINDLING_POOL_MAX_SIZE: Type.Integer({ minimum: 0, maximum: 256, default: 8 }),
  /** Window of the adaptive rule, ms. @default 5000 */
  KINDLING_POOL_ADAPT_INTERVAL_MS: Type.Integer({ minimum: 10, default: 5000 }),
  /** CPUs quarantined instances are confined to (cpuset list, e.g. "1" or "2-3"); empty: the host's last CPU when it has several. @default "" */
  KINDLING_QUARANTINE_CPUS: Type.String({ pattern: '^([0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)?$', default: '' }),
  /** Path of the `node` binary instances run (process backend) or copied into the runtime image (docker). @default the platform's own */
  KINDLING_NODE_BIN: Type.Optional(Type.String({ minLength: 1 })),
  // Builds (issue 9): dependencies installed with npm in a sandboxed build instance.
  /** Registry builds install from (the only host a build reaches). @default what `npm config get registry` says on the platform's host */
  KINDLING_BUILD_REGISTRY: Type.Optional(Type.String({ pattern: '^https?://' })),
  /** npm's package directory on the host (holding bin/npm-cli.js). @default the npm beside the node binary, else the one on PATH */
  KINDLING_NPM_DIR: Type.Optional(Type.String({ minLength: 1 })),
  /** Memory limit of one build (npm and the install scripts it runs), MiB. @default 1024 */
  KINDLING_BUILD_MEMORY_MB: Type.Integer({ minimum: 64, default: 1024 }),
  /** CPU quota of one build, cores. @default 1 */
  KINDLING_BUILD_CPU: Type.Number({ exclusiveMinimum: 0, default: 1 }),
  /** Max processes/threads of one build. @default 512 */
  KINDLING_BUILD_PIDS_LIMIT: Type.Integer({ minimum: 16, default: 512 }),
  /** Wall-clock limit of one build, ms. @default 300000 */
  KINDLING_BUILD_TIMEOUT_MS: Type.Integer({ minimum: 1000, default: 300_000 }),
  /** Builds that run at once (more wait, state queued). @default 2 */
  KINDLING_BUILD_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 64, default: 2 }),
  // Load guard (issue 5; loadguard/README.md). Ratios are of each instance's own quota / limit.
  /** Run the load guard (cgroup sampling, throttle / quarantine / kill of noisy functions). @default true */
  KINDLING_LOADGUARD_ENABLED: Type.Boolean({ default: true }),
  /** Sampling interval of the load guard, ms. @default 1000 */
  KINDLING_LOADGUARD_INTERVAL_MS: Type.Integer({ minimum: 10, default: 1000 }),
  /** An idle prewarmed instance is read every this many passes of the load guard (1: every pass). @default 10 */
  KINDLING_LOADGUARD_IDLE_EVERY: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
  /** Consecutive samples outside the normal range before an instance is throttled. @default 5 */
  KINDLING_LOADGUARD_SUSTAIN_SAMPLES: Type.Integer({ minimum: 1, default: 5 }),
  /** Further consecutive outside samples of a throttled instance before its function is quarantined. @default 10 */
  KINDLING_LOADGUARD_QUARANTINE_SAMPLES: Type.Integer({ minimum: 1, default: 10 }),
  /** Further consecutive outside samples of a throttled instance of a quarantined function before it is killed. @default 30 */
  KINDLING_LOADGUARD_KILL_SAMPLES: Type.Integer({ minimum: 1, default: 30 }),
  /** Fraction of the pids limit that counts as at the limit (hard limit). @default 0.9 */
  KINDLING_LOADGUARD_PIDS_RATIO: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.9 }),
  /** Consecutive samples at the pids limit before the instance is killed. @default 5 */
  KINDLING_LOADGUARD_PIDS_KILL_SAMPLES: Type.Integer({ minimum: 1, default: 5 }),
  /** Time without any outside sample before a function's throttles and quarantine are lifted, ms. @default 60000 */
  KINDLING_LOADGUARD_COOLDOWN_MS: Type.Integer({ minimum: 0, default: 60_000 }),
  /** Samples a function's learned range needs before it is used (the ceilings apply meanwhile). @default 30 */
  KINDLING_LOADGUARD_MIN_SAMPLES: Type.Integer({ minimum: 1, default: 30 }),
  /** CPU (fraction of the quota) below which a sample is never outside the range. @default 0.5 */
  KINDLING_LOADGUARD_CPU_FLOOR: Type.Number({ minimum: 0, maximum: 1, default: 0.5 }),
  /** CPU (fraction of the quota) at or above which a sample is always outside the range. @default 0.9 */
  KINDLING_LOADGUARD_CPU_CEILING: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.9 }),
  /** Memory (fraction of the limit) below which a sample is never outside the range. @default 0.8 */
  KINDLING_LOADGUARD_MEMORY_FLOOR: Type.Number({ minimum: 0, maximum: 1, default: 0.8 }),
  /** Memory (fraction of the limit) at or above which a sample is always outside the range. @default 0.95 */
  KINDLING_LOADGUARD_MEMORY_CEILING: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.95 }),
  /** A throttle lowers the CPU quota to this fraction of the original (at least the function's learned mean). @default 0.25 */
  KINDLING_LOADGUARD_THROTTLE_CPU: Type.Number({ minimum: 0.01, maximum: 1, default: 0.25 }),
})
export type Config = Readonly<Static<typeof ConfigSchema>>

const ajv = new Ajv({ useDefaults: true, coerceTypes: true, allErrors: true, strict: false })
const check = ajv.compile(ConfigSchema)

/** Reads `KINDLING_*` from an environment; a bad value stops start-up with a message naming the variable. */
export function loadConfig(env: Record<string, string | undefined>, overrides: Partial<Record<keyof Config, string | number>> = {}): Config {
  const raw: Record<string, unknown> = {}
  for (const key of Object.keys(ConfigSchema.properties)) {
    const v = overrides[key as keyof Config] ?? env[key]
    if (v !== undefined && v !== '') raw[key] = v
  }
  if (!check(raw)) {
    const msg = (check.errors ?? []).map((e) => `${e.instancePath.slice(1) || 'config'} ${e.message ?? 'is invalid'}`).join('; ')
    throw new KdlError('KDL_ERR_BAD_REQUEST', `invalid configuration: ${msg}`)
  }
  return Object.freeze(raw as Static<typeof ConfigSchema>)
}
