import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { parseAllDocuments } from 'yaml'

// What the chart's tests share (issue 13): the real helm v4 of .kube-tools/bin (scripts/ensure-kube-tools.sh), the
// chart, the values files beside this one, and the rendered objects parsed.

export const HELM = join(process.cwd(), '.kube-tools', 'bin', 'helm')
export const CHART = join(process.cwd(), 'charts', 'kindling')
export const CUSTOM = join(process.cwd(), 'test', 'chart', 'values-custom.yaml')
export const valuesFile = (name: string): string => join(process.cwd(), 'test', 'chart', `values-${name}.yaml`)

export interface Run { code: number; stdout: string; stderr: string }

/** A program with these args; never throws (the exit code is the answer). */
export function exec(bin: string, args: readonly string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(bin, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

/** helm with these args; never throws. */
export const helm = (...args: string[]): Promise<Run> => exec(HELM, args)

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Obj = Record<string, any> & { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> } }

/** `helm template <release> charts/kindling -n <ns> [-f file]... [--set ...]`, parsed; throws on a failed render. */
export async function render(opts: { release?: string; namespace?: string; files?: readonly string[]; set?: readonly string[]; setString?: readonly string[] } = {}): Promise<Obj[]> {
  const args = ['template', opts.release ?? 'kindling', CHART, '-n', opts.namespace ?? 'kindling']
  for (const f of opts.files ?? []) args.push('-f', f)
  for (const s of opts.set ?? []) args.push('--set', s)
  for (const s of opts.setString ?? []) args.push('--set-string', s)
  const r = await helm(...args)
  if (r.code !== 0) throw new Error(`helm ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  const out: Obj[] = []
  for (const doc of parseAllDocuments(r.stdout)) {
    if (doc.errors.length > 0) throw new Error(`the rendered YAML does not parse: ${doc.errors[0]!.message}`)
    const v = doc.toJS() as Obj | null
    if (v !== null) out.push(v)
  }
  return out
}

/** The one object of this kind and name; throws naming what is there when it is missing. */
export function one(objs: readonly Obj[], kind: string, name: string): Obj {
  const found = objs.filter((o) => o.kind === kind && o.metadata.name === name)
  if (found.length !== 1) throw new Error(`${found.length} ${kind} ${name} rendered (there are: ${objs.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')})`)
  return found[0]!
}

/** The workloads' pod templates by component (controller, router, agent, redis). */
export function workloads(objs: readonly Obj[]): Map<string, Obj> {
  const out = new Map<string, Obj>()
  for (const o of objs) if (o.kind === 'Deployment' || o.kind === 'DaemonSet') out.set(o.metadata.labels?.['app.kubernetes.io/component'] ?? '?', o)
  return out
}
