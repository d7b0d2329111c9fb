import { writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number }
  hitCount?: number
  children?: number[]
}

interface Profile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples?: number[]
  timeDeltas?: number[]
}

export interface SelfTime {
  fn: string
  where: string
  /** platform:<dir>, a package name, node internals, native, llhttp (wasm), gc, idle, program. */
  category: string
  /** Share of all samples, %. */
  pct: number
  ms: number
  /** In the platform's own code (not node_modules, not node internals). */
  own: boolean
}

function post<T>(session: Session, method: string, params?: Record<string, unknown>): Promise<T> {
  return new Promise((resolve, reject) => {
    session.post(method, params ?? {}, (err, res) => (err !== null ? reject(err) : resolve(res as T)))
  })
}

/**
 * Samples this process (the router, the executor, the pool manager: the whole platform) while `during`
 * runs, writes the `.cpuprofile` to `file` (load it in Chrome DevTools) and sums self time by function.
 */
export async function profileDuring(file: string, repoRoot: string, during: () => Promise<void>): Promise<SelfTime[]> {
  const session = new Session()
  session.connect()
  try {
    await post(session, 'Profiler.enable')
    await post(session, 'Profiler.setSamplingInterval', { interval: 100 })
    await post(session, 'Profiler.start')
    await during()
    const { profile } = await post<{ profile: Profile }>(session, 'Profiler.stop')
    await writeFile(file, JSON.stringify(profile))
    return selfTimes(profile, repoRoot)
  } finally {
    session.disconnect()
  }
}

function selfTimes(profile: Profile, repoRoot: string): SelfTime[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const selfUs = new Map<number, number>()
  const samples = profile.samples ?? []
  const deltas = profile.timeDeltas ?? []
  for (let i = 0; i < samples.length; i++) {
    // timeDeltas[i] is the time before sample i; attribute the following interval to sample i.
    const dt = deltas[i + 1] ?? 0
    const id = samples[i] as number
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt)
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0)
  const agg = new Map<string, SelfTime>()
  for (const [id, us] of selfUs) {
    const n = byId.get(id)
    if (n === undefined) continue
    const cf = n.callFrame
    const url = cf.url.replace(/^file:\/\//, '')
    const shortUrl = url.startsWith(repoRoot) ? url.slice(repoRoot.length + 1) : url
    const where = url === '' ? '' : `${shortUrl}:${cf.lineNumber + 1}`
    const fn = cf.functionName === '' ? (url === '' ? '(native)' : '(anonymous)') : cf.functionName
    const key = `${fn}@${where}`
    const own = url.startsWith(repoRoot) && !url.includes('/node_modules/')
    const cur = agg.get(key) ?? { fn, where, category: categoryOf(fn, url, shortUrl, own), pct: 0, ms: 0, own }
    cur.ms += us / 1000
    agg.set(key, cur)
  }
  const out = [...agg.values()]
  for (const s of out) s.pct = total === 0 ? 0 : (s.ms * 1000 / total) * 100
  return out.sort((a, b) => b.ms - a.ms)
}

function categoryOf(fn: string, url: string, shortUrl: string, own: boolean): string {
  if (fn === '(idle)') return 'idle'
  if (fn === '(garbage collector)') return 'gc'
  if (fn === '(program)') return 'program'
  if (url.startsWith('wasm://')) return 'llhttp (undici, wasm)'
  if (url === '') return 'native (bindings)'
  if (url.startsWith('node:')) return 'node internals'
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
  if (pkg !== null) return pkg[1] as string
  if (own) return `platform:${shortUrl.replace(/^dist\//, '').split('/')[0] ?? ''}`
  return 'other'
}

/** Self time by category, as % of the time the process was not idle. */
export function byCategory(top: SelfTime[]): Array<{ category: string; pct: number }> {
  const busy = top.filter((s) => s.category !== 'idle')
  const total = busy.reduce((a, s) => a + s.ms, 0)
  const sums = new Map<string, number>()
  for (const s of busy) sums.set(s.category, (sums.get(s.category) ?? 0) + s.ms)
  return [...sums].map(([category, ms]) => ({ category, pct: total === 0 ? 0 : (ms / total) * 100 })).sort((a, b) => b.pct - a.pct)
}
