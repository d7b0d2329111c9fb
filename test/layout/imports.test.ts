import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, normalize, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// The direction of dependencies in docs/ARCHITECTURE.md, checked: every relative import of the platform's
// source, read from the files themselves, must run along an arrow of this table (folder → what it may import).
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const MAY_IMPORT: Record<string, readonly string[]> = {
  common: [],
  protocol: ['common'],
  cgroups: ['common'],
  codestore: ['common'],
  builder: ['common', 'codestore'],
  store: ['common'],
  backends: ['common', 'cgroups', 'protocol'],
  poolmgr: ['common', 'protocol'],
  loadguard: ['common', 'cgroups'],
  executor: ['common', 'protocol', 'poolmgr'],
  router: ['common', 'executor'],
  releases: ['common', 'codestore', 'executor'],
  // Issue 11: what several replicas share through Redis (redis-conn and its errors live in store/).
  cluster: ['common', 'codestore', 'store'],
  async: ['common', 'store'],
  triggers: ['common', 'store'],
  // Issue 12: the workflow engine sees the platform through common's interfaces only (a store, an invoke).
  workflows: ['common'],
  // Issue 10: the cluster stand-in (API server, controllers, scheduler, kubelets) is a program of its own beside the
  // platform: it sees the platform's leaf and its cgroup drivers only (the kubelet's containers run in cgroups).
  'kube-sim': ['common', 'cgroups'],
  agent: ['common', 'cgroups', 'loadguard'],
  api: ['common', 'codestore', 'builder', 'executor', 'poolmgr', 'releases', 'async', 'triggers', 'workflows'],
  embedded: ['common', 'protocol', 'cgroups', 'codestore', 'builder', 'store', 'backends', 'poolmgr', 'loadguard', 'executor', 'releases', 'router', 'api', 'cluster', 'async', 'triggers', 'workflows', 'kube-sim', 'agent'],
  cli: ['common', 'embedded'],
  runtimes: [],
  // The dashboard (issue 14) runs in the browser and reads the platform over /v1 only.
  ui: [],
}
/** Files of `executor/` the router may import: the data plane asks the control plane through its client only. */
const ROUTER_SEES_OF_EXECUTOR = ['executor/client.ts']

async function sources(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(join(ROOT, dir), { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) { if (e.name !== 'node_modules') out.push(...await sources(p)) }
    else if (/\.(ts|tsx|mjs|js)$/.test(e.name) && !e.name.endsWith('.d.ts')) out.push(p)
  }
  return out
}

/** Relative module specifiers of a file's static and dynamic imports and re-exports. */
function importsOf(text: string): string[] {
  const out: string[] = []
  for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g)) out.push(m[1] as string)
  return out
}

/** The source file a specifier names (`./x.js` is `./x.ts` in the tree). */
function sourceOf(from: string, spec: string): string {
  const p = normalize(join(dirname(from), spec))
  return p.endsWith('.js') && !p.startsWith('runtimes/') ? `${p.slice(0, -3)}.ts` : p
}

t.test('every import of the platform runs along the documented direction', async (t) => {
  const wrong: string[] = []
  let arrows = 0
  for (const folder of Object.keys(MAY_IMPORT)) {
    for (const file of await sources(folder)) {
      for (const spec of importsOf(await readFile(join(ROOT, file), 'utf8'))) {
        const target = sourceOf(file, spec)
        const into = target.split('/')[0] as string
        if (into === folder) continue
        arrows++
        if (relative(ROOT, join(ROOT, target)).startsWith('..')) wrong.push(`${file} imports ${spec}, outside the repository`)
        else if (!(MAY_IMPORT[folder] ?? []).includes(into)) wrong.push(`${file} → ${target}: ${folder}/ may import ${MAY_IMPORT[folder]!.join(', ') || 'nothing of the platform'}`)
        else if (folder === 'router' && into === 'executor' && !ROUTER_SEES_OF_EXECUTOR.includes(target)) wrong.push(`${file} → ${target}: the router sees the executor through ${ROUTER_SEES_OF_EXECUTOR.join(', ')} only`)
      }
    }
  }
  t.ok(arrows > 50, `${arrows} imports across folders were read`)
  t.same(wrong, [], 'no import runs against the table')
})

t.test('every folder of platform source is in the table', async (t) => {
  const notPlatform = new Set(['test', 'bench', 'docs', 'scripts', 'bin', 'examples', 'dist', 'node_modules'])
  const unlisted: string[] = []
  for (const e of await readdir(ROOT, { withFileTypes: true })) {
    if (!e.isDirectory() || e.name.startsWith('.') || notPlatform.has(e.name) || e.name in MAY_IMPORT) continue
    if ((await sources(e.name)).length > 0) unlisted.push(e.name)
  }
  t.same(unlisted, [], 'a new folder gets its place in the direction of dependencies (here and in ARCHITECTURE.md)')
})

t.test('the checker sees an arrow against the direction', async (t) => {
  // The same reading on a file that is not in the tree: poolmgr importing the router would be caught.
  const specs = importsOf("import { x } from '../router/app.js'\nexport { y } from './z.js'\nconst m = await import('../executor/executor.js')")
  t.same(specs, ['../router/app.js', './z.js', '../executor/executor.js'])
  const target = sourceOf('poolmgr/pool-manager.ts', '../router/app.js')
  t.equal(target, 'router/app.ts')
  t.notOk(MAY_IMPORT['poolmgr']!.includes(target.split('/')[0] as string))
})
