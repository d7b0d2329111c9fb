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
  /** Mean PSS and private memory of the runtime server per instance, MiB (RSS counts node's shared text in full). */
  nodePssMb: number
  nodePrivateMb: number
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
  let pssKb = 0
  let privKb = 0
  for (const inst of [...p.embedded.pools.instances()]) {
    if (!pick(inst.state, inst.fn) || inst.handle.pid === undefined) continue
    const t = await treeRss(inst.handle.pid)
    if (t.nodeProcesses === 0) continue
    count++
    nodeKb += t.nodeKb
    otherKb += t.otherKb
    pssKb += t.nodePssKb
    privKb += t.nodePrivateKb
  }
  const per = (kb: number): number => (count === 0 ? Number.NaN : kb / count / 1024)
  return { what, instances: count, nodeMb: per(nodeKb), wrapperMb: per(otherKb), nodePssMb: per(pssKb), nodePrivateMb: per(privKb) }
}
