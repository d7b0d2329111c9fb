import { readdir, readFile } from 'node:fs/promises'

/** VmRSS of a process in KiB, or undefined once it is gone. */
export async function rssKb(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)
    return m === null ? undefined : Number(m[1])
  } catch {
    return undefined
  }
}

/**
 * Proportional and private memory of a process in KiB (smaps_rollup): PSS splits shared pages (the node
 * binary's text, mapped by every instance) among their users; private is what one more instance costs.
 */
export async function pssKb(pid: number): Promise<{ pss: number; priv: number } | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8')
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0)
    return { pss: field('Pss'), priv: field('Private_Clean') + field('Private_Dirty') }
  } catch {
    return undefined
  }
}

/** The command name (`/proc/<pid>/comm`), or undefined once it is gone. */
export async function commOf(pid: number): Promise<string | undefined> {
  try {
    return (await readFile(`/proc/${pid}/comm`, 'utf8')).trim()
  } catch {
    return undefined
  }
}

/** Parent pid of every live process, from /proc/<pid>/stat. */
async function parents(): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8')
      // The command may contain spaces and parentheses: fields resume after the last ')'.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      out.set(Number(name), Number(rest[1]))
    } catch { /* exited meanwhile */ }
  }
  return out
}

/** Every descendant of `pid` (children, grandchildren, …), not including `pid`. */
export async function descendants(pid: number): Promise<number[]> {
  const ppid = await parents()
  const children = new Map<number, number[]>()
  for (const [p, parent] of ppid) {
    const list = children.get(parent)
    if (list === undefined) children.set(parent, [p])
    else list.push(p)
  }
  const out: number[] = []
  const stack = [...(children.get(pid) ?? [])]
  while (stack.length > 0) {
    const p = stack.pop() as number
    out.push(p)
    stack.push(...(children.get(p) ?? []))
  }
  return out
}

export interface TreeRss {
  /** RSS of the `node` processes of the tree (the runtime server), KiB. */
  nodeKb: number
  /** RSS of everything else in the tree (unshare, sh wrappers), KiB. */
  otherKb: number
  nodeProcesses: number
  /** PSS and private memory of the node processes, KiB. */
  nodePssKb: number
  nodePrivateKb: number
}

/** RSS of a process tree rooted at `pid` (the root included), split into node and wrapper processes. */
export async function treeRss(pid: number): Promise<TreeRss> {
  const out: TreeRss = { nodeKb: 0, otherKb: 0, nodeProcesses: 0, nodePssKb: 0, nodePrivateKb: 0 }
  for (const p of [pid, ...await descendants(pid)]) {
    const [comm, kb] = await Promise.all([commOf(p), rssKb(p)])
    if (kb === undefined) continue
    if (comm === 'node' || comm === 'MainThread') {
      out.nodeKb += kb
      out.nodeProcesses++
      const m = await pssKb(p)
      out.nodePssKb += m?.pss ?? 0
      out.nodePrivateKb += m?.priv ?? 0
    } else {
      out.otherKb += kb
    }
  }
  return out
}

async function cpuTimes(): Promise<{ busy: number; total: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0] ?? ''
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  return { busy: total - idle, total }
}

/** Share of all CPUs busy over `windowMs`, %. */
export async function cpuBusyPct(windowMs: number): Promise<number> {
  const a = await cpuTimes()
  await new Promise((r) => setTimeout(r, windowMs))
  const b = await cpuTimes()
  return b.total === a.total ? 0 : ((b.busy - a.busy) / (b.total - a.total)) * 100
}

/**
 * Waits (at most `maxMs`) for the machine to be quiet — other work (a test run next door) skews every
 * figure — and returns how busy it was in the last window, %.
 */
export async function waitQuiet(maxMs: number, thresholdPct = 15, windowMs = 250): Promise<number> {
  const deadline = Date.now() + maxMs
  for (;;) {
    const busy = await cpuBusyPct(windowMs)
    if (busy <= thresholdPct || Date.now() >= deadline) return busy
  }
}
