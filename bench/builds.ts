import { join } from 'node:path'
import { create as createTar } from 'tar'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { REPO_ROOT } from '../embedded/main.js'
import { TestRegistry } from './npm-registry.js'
import { startPlatform } from './platform.js'
import { summarize, type Latency } from './stats.js'

export type FirstKind = 'prewarmed' | 'specialized' | 'cold'

export interface BuildsResult {
  /** Builds run: distinct inputs each (package.json differs), one package from the loopback registry. */
  builds: number
  /** The build record's durationMs (the build instance from start to end). */
  buildMs: Latency
  /** Client wall time of a `?wait=true` deploy that builds (build + assemble + trial load). */
  coldDeployMs: Latency
  /** The same deploy whose dependencies are already built (reused: no install). */
  reusedDeployMs: Latency
  /** First-call latency of functions that import `ms`, and of the same function without the import, per kind. */
  firstCall: Record<FirstKind, { withDependency: Latency; without: Latency; mismatches: number }>
}

const withDep = (n: string): string => `import ms from 'ms'\nexport default () => '${n} ' + ms(60000)\n`
const without = (n: string): string => `export default () => '${n} ' + String(60000)\n`

async function archive(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-bench-code-'))
  try {
    for (const [f, body] of Object.entries(files)) await writeFile(join(dir, f), body)
    const chunks: Buffer[] = []
    for await (const c of createTar({ gzip: true, cwd: dir, portable: true }, Object.keys(files).sort())) chunks.push(c as Buffer)
    return Buffer.concat(chunks).toString('base64')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * Build time cold vs reused, and the first call of a function with a dependency, prewarmed vs specialized vs
 * cold, beside the same function without it (issue 9). The registry is on loopback (the project's own copy
 * of `ms`), so the figures are the platform's, not the network's.
 */
export async function measureBuilds(opts: { dataDir: string; functions: number; progress: (m: string) => void; track: (close: () => Promise<void>) => () => void }): Promise<BuildsResult> {
  const registry = await TestRegistry.start()
  await registry.publishDir(join(REPO_ROOT, 'node_modules', 'ms'))
  const p = await startPlatform({ dataDir: opts.dataDir, backend: 'process', poolSize: 2, overrides: { KINDLING_BUILD_REGISTRY: registry.url } })
  const untrack = opts.track(async () => { await p.close(); await registry.close() })
  try {
    const buildMs: number[] = []
    const cold: number[] = []
    const reused: number[] = []
    for (let i = 0; i < opts.functions; i++) {
      opts.progress(`build ${i + 1}/${opts.functions}`)
      const pkg = JSON.stringify({ type: 'module', description: `bench ${i} ${Date.now()}`, dependencies: { ms: '^2.1.0' } })
      let t0 = performance.now()
      const a = await p.api('PUT', `/v1/functions/bld-${i}?wait=true`, { runtime: 'node', archive: await archive({ 'package.json': pkg, 'index.js': withDep(`a${i}`) }) })
      cold.push(performance.now() - t0)
      if (a.status >= 300) throw new Error(`build deploy answered ${a.status}: ${JSON.stringify(a.json)}`)
      buildMs.push(Number((a.json['build'] as Record<string, unknown>)['durationMs']))
      const code = await archive({ 'package.json': pkg, 'index.js': withDep(`b${i}`) })
      t0 = performance.now()
      const b = await p.api('PUT', `/v1/functions/bld-${i}-again?wait=true`, { runtime: 'node', archive: code })
      reused.push(performance.now() - t0)
      if ((b.json['build'] as Record<string, unknown> | undefined)?.['reused'] !== true) throw new Error('the second deploy did not reuse the build')
      await p.remove(`bld-${i}`)
      await p.remove(`bld-${i}-again`)
    }
    const shared = JSON.stringify({ type: 'module', description: 'bench first calls', dependencies: { ms: '^2.1.0' } })
    const firstCall = {} as BuildsResult['firstCall']
    for (const kind of ['prewarmed', 'specialized', 'cold'] as const) {
      await p.setPoolSize(kind === 'cold' ? 0 : 2)
      await p.settle()
      const dep: number[] = []
      const plain: number[] = []
      let mismatches = 0
      for (let i = 0; i < opts.functions; i++) {
        opts.progress(`first call ${kind} ${i + 1}/${opts.functions}`)
        for (const [name, files, into] of [
          [`fd-${kind}-${i}`, { 'package.json': shared, 'index.js': withDep(`${kind}${i}`) }, dep],
          [`fp-${kind}-${i}`, { 'index.mjs': without(`${kind}${i}`) }, plain],
        ] as const) {
          const r = await p.api('PUT', `/v1/functions/${name}?wait=true`, {
            runtime: 'node', mode: 'persistent', prewarm: kind === 'prewarmed' ? 1 : 0,
            archive: await archive(files), entrypoint: 'index.js' in files ? 'index.js' : 'index.mjs',
          })
          if (r.status >= 300) throw new Error(`deploy ${name} answered ${r.status}: ${JSON.stringify(r.json)}`)
          await p.settle()
          const c = await p.call(name)
          if (c.status === 200) into.push(c.ms)
          if (c.start !== kind) mismatches++
          await p.remove(name)
        }
      }
      firstCall[kind] = { withDependency: summarize(dep), without: summarize(plain), mismatches }
    }
    return { builds: opts.functions, buildMs: summarize(buildMs), coldDeployMs: summarize(cold), reusedDeployMs: summarize(reused), firstCall }
  } finally {
    untrack()
    await p.close()
    await registry.close()
  }
}
