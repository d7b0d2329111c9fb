/** What the CLI writes to: `process.stdout` / `process.stderr` in the bin, string sinks in tests. */
export interface OutputStream {
  write(chunk: string | Uint8Array): unknown
  isTTY?: boolean
}

/** Everything a command needs; built once by `runCli` from its `io` argument. */
export interface CliContext {
  /** Base URL of the platform, without a trailing slash. */
  url: string
  /** Sent as `Authorization: Bearer <token>` to `/v1` when set. */
  token: string | undefined
  stdout: OutputStream
  stderr: OutputStream
  /** The environment `kindling up` hands to the embedded platform. */
  env: Record<string, string | undefined>
}

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd()
  return [line(headers), ...rows.map(line)].join('\n') + '\n'
}

export function formatJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n'
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** A cell for a scalar; `-` for missing values, compact JSON for anything else. */
export function cell(value: unknown): string {
  if (value === undefined || value === null || value === '') return '-'
  if (typeof value === 'string') return value
  if (typeof value === 'number' || typeof value === 'boolean') return String(value)
  return JSON.stringify(value)
}

/** The first of `keys` that `obj` holds (not undefined / null). */
export function pick(obj: Record<string, unknown>, ...keys: string[]): unknown {
  for (const k of keys) {
    const v = obj[k]
    if (v !== undefined && v !== null) return v
  }
  return undefined
}

/**
 * A list out of the common envelope shapes: a bare array, or an object holding one array under `key`
 * (or `items`). Undefined when the shape is unknown, so callers can fall back to JSON.
 */
export function listOf(data: unknown, key: string): unknown[] | undefined {
  if (Array.isArray(data)) return data
  if (isRecord(data)) {
    const v = data[key] ?? data['items']
    if (Array.isArray(v)) return v
  }
  return undefined
}
