/** Latency summary in milliseconds. */
export interface Latency {
  n: number
  mean: number
  p50: number
  p90: number
  p99: number
  max: number
}

/** Nearest-rank percentile of an ascending array (q in 0..1). */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i] as number
}

export function summarize(values: ArrayLike<number>): Latency {
  const sorted = Float64Array.from(values).sort()
  let sum = 0
  for (const v of sorted) sum += v
  return {
    n: sorted.length,
    mean: sorted.length === 0 ? Number.NaN : sum / sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.length === 0 ? Number.NaN : sorted[sorted.length - 1] as number,
  }
}

/** `a / b`, NaN when either is missing. */
export function ratio(a: number | undefined, b: number | undefined): number {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return Number.NaN
  return a / b
}

export function round(v: number, digits = 3): number {
  if (!Number.isFinite(v)) return v
  const f = 10 ** digits
  return Math.round(v * f) / f
}

/** A fixed-width text table; numbers are right-aligned. */
export function table(title: string, header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map((r) => r.map((c) => typeof c === 'number' ? fmt(c) : c))]
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number' || r[i] === '-' || /^[+-]?[\d.]+(x| ms| MB|%)?$/.test(String(r[i]))))
  const line = (r: string[]): string => r.map((c, i) => numeric[i] === true && r !== cells[0] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()
  const rule = widths.map((w) => '-'.repeat(w)).join('  ')
  return [`\n== ${title}`, line(cells[0] ?? []), rule, ...cells.slice(1).map(line)].join('\n')
}

/** A number for a table: 3 significant figures below 100, integers above. */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return '-'
  if (Number.isInteger(v)) return String(v)
  const a = Math.abs(v)
  if (a >= 100) return String(Math.round(v))
  if (a >= 10) return v.toFixed(1)
  if (a >= 1) return v.toFixed(2)
  return v.toFixed(3)
}

export function ms(v: number): string {
  return Number.isFinite(v) ? `${fmt(v)} ms` : '-'
}

export function times(v: number): string {
  return Number.isFinite(v) ? `${v.toFixed(2)}x` : '-'
}
