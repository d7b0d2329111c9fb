import { helloCode } from './bare.js'
import type { BenchPlatform } from './platform.js'
import { treeRss } from './proc.js'

export interface RssRow {
  what: 'generic' | 'loaded'
  instances: number
  /** Mean RSS of the runtime server (`node`) per instance, MiB. */
  nodeMb: number
  /** Mean RSS of the wrapper processes (unshare, sh) per instance, MiB. */
  wrapperMb: number
}

/**
 * RSS of idle instances, summed over the process tree of each instance's handle pid (on the process
 * backend that pid is the wrapper; the node server is a descendant): `n` generic ones (poolSize n),
 * then `n` loaded ones (prewarm n).
 */
export async function measureRss(p: BenchPlatform, n: number, poolSize: number): Promise<RssRow[]> {
  const rows: RssRow[] = []
  await p.setPoolSize(n)
  await p.settle()
  rows.push(await rssOf(p, 'generic', (state) => state === 'generic'))
  const name = 'bench-rss'
  await p.setPoolSize(0)
  await p.deploy(name, { code: helloCode(name), mode: 'persistent', prewarm: n })
  try {
    await p.settle()
    rows.push(await rssOf(p, 'loaded', (state, fn) => state === 'loaded' && fn === name))
  } finally {
    await p.remove(name)
    await p.setPoolSize(poolSize)
    await p.settle()
  }
  return rows
}

async function rssOf(p: BenchPlatform, what: RssRow['what'], pick: (state: string, fn: string | undefined) => boolean): Promise<RssRow> {
  let count = 0
  let nodeKb = 0
  let otherKb = 0
  for (const inst of [...p.embedded.pools.instances()]) {
    if (!pick(inst.state, inst.fn) || inst.handle.pid === undefined) continue
    const t = await treeRss(inst.handle.pid)
    if (t.nodeProcesses === 0) continue
    count++
    nodeKb += t.nodeKb
    otherKb += t.otherKb
  }
  return { what, instances: count, nodeMb: count === 0 ? Number.NaN : nodeKb / count / 1024, wrapperMb: count === 0 ? Number.NaN : otherKb / count / 1024 }
}
