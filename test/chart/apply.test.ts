import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { KUBECTL, startSim } from '../fixtures/kube.js'
import { parseAllDocuments } from 'yaml'
import { CHART, CUSTOM, exec, helm } from './chart.js'

// Issue 13: the real kubectl v1.34 accepts every rendered object — its own client-side checks, then the stand-in API
// server's validation (kubernetes-models' schemas, names, selectors) — as a server-side dry run, so nothing runs.
// (A client-side dry run needs a server too: kubectl reads discovery and OpenAPI even then.) The full install on
// kube-sim, with pods running, is the end-to-end test's. And the Secret's generated tokens survive an upgrade: the
// chart looks the installed Secret up (helm's --dry-run=server renders with lookup, as install and upgrade do).

async function kubectl(kubeconfig: string, ...args: string[]): Promise<{ code: number; out: string }> {
  const r = await exec(KUBECTL, ['--kubeconfig', kubeconfig, ...args])
  return { code: r.code, out: r.stdout + r.stderr }
}

t.test('kubectl apply --dry-run=server of the rendered chart on kube-sim: every object accepted, none stored', async (t) => {
  const sim = await startSim(t, { management: 1, runtime: 1, quarantine: 1 })
  t.equal((await kubectl(sim.kubeconfigPath, 'create', 'namespace', 'kindling')).code, 0)
  for (const [what, extra] of [['the defaults', []], ['values-custom.yaml', ['-f', CUSTOM]]] as const) {
    const r = await helm('template', 'kindling', CHART, '-n', 'kindling', ...extra)
    t.equal(r.code, 0, r.stderr)
    const objects = r.stdout.split(/^kind: /m).length - 1
    const file = join(sim.dataDir, `rendered-${extra.length}.yaml`)
    await writeFile(file, r.stdout)
    const applied = await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'apply', '--dry-run=server', '-f', file)
    t.equal(applied.code, 0, `${what}: ${applied.out}`)
    const created = applied.out.split('\n').filter((l) => / created \(server dry run\)$/.test(l))
    t.equal(created.length, objects, `${what}: all ${objects} objects accepted`)
  }
  const stored = await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'get', 'deployments,daemonsets,configmaps,secrets,services', '-o', 'name')
  t.equal(stored.code, 0, stored.out)
  t.notMatch(stored.out, /kindling-/, 'a dry run stores nothing')
  // The check bites: a manifest kubectl or the server refuses fails the apply.
  const bad = join(sim.dataDir, 'bad.yaml')
  await writeFile(bad, (await helm('template', 'kindling', CHART, '-n', 'kindling', '--show-only', 'templates/router.yaml')).stdout.replace('containerPort: 8080', 'containerPort: 80800'))
  const refused = await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'apply', '--dry-run=server', '-f', bad)
  t.not(refused.code, 0, 'a port out of range is refused')
  t.match(refused.out, /containerPort/)
})

t.test('an upgrade keeps the generated tokens: the Secret is looked up; a token set in the values wins', async (t) => {
  const sim = await startSim(t, { management: 1, runtime: 1, quarantine: 1 })
  t.equal((await kubectl(sim.kubeconfigPath, 'create', 'namespace', 'kindling')).code, 0)
  const kept = { KINDLING_API_TOKEN: 'installed-api-token-0123456789ab', KINDLING_AGENT_TOKEN: 'installed-agent-token-0123456789', KINDLING_EXECUTOR_TOKEN: 'installed-executor-token-012345' }
  const created = await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'create', 'secret', 'generic', 'kindling-secret', ...Object.entries(kept).map(([k, v]) => `--from-literal=${k}=${v}`))
  t.equal(created.code, 0, created.out)
  // What an install leaves: the release's own Secret (helm adopts only objects marked as the release's).
  t.equal((await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'label', 'secret', 'kindling-secret', 'app.kubernetes.io/managed-by=Helm')).code, 0)
  t.equal((await kubectl(sim.kubeconfigPath, '-n', 'kindling', 'annotate', 'secret', 'kindling-secret', 'meta.helm.sh/release-name=kindling', 'meta.helm.sh/release-namespace=kindling')).code, 0)
  const secretOf = async (...extra: string[]): Promise<Record<string, string>> => {
    const r = await helm('template', 'kindling', CHART, '-n', 'kindling', '--kubeconfig', sim.kubeconfigPath, '--show-only', 'templates/secret.yaml', ...extra)
    t.equal(r.code, 0, r.stderr)
    const data = (parseAllDocuments(r.stdout)[0]!.toJS() as { data: Record<string, string> }).data
    return Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]))
  }
  const upgraded = await secretOf('--dry-run=server')
  t.same({ KINDLING_API_TOKEN: upgraded.KINDLING_API_TOKEN, KINDLING_AGENT_TOKEN: upgraded.KINDLING_AGENT_TOKEN, KINDLING_EXECUTOR_TOKEN: upgraded.KINDLING_EXECUTOR_TOKEN }, kept, 'the installed tokens are kept')
  const set = await secretOf('--dry-run=server', '--set', 'apiToken=a-new-token-set-in-values-0123')
  t.equal(set.KINDLING_API_TOKEN, 'a-new-token-set-in-values-0123', 'a token set in the values replaces the installed one')
  t.equal(set.KINDLING_AGENT_TOKEN, kept.KINDLING_AGENT_TOKEN, 'and the others stay')
  const offline = await secretOf()
  t.not(offline.KINDLING_API_TOKEN, kept.KINDLING_API_TOKEN, 'without the cluster (plain helm template) a new token is generated')
  t.match(offline.KINDLING_API_TOKEN, /^[A-Za-z0-9]{32}$/)
})
