import { KdlError } from './errors.js'
import type { AliasTarget, FunctionRecord } from './types.js'

/**
 * Aliases (issue 15): names that route a function's calls to one version or to several by weight.
 * `/fn/name@alias` calls through an alias, `/fn/name@7` calls version 7, and the bare name is `latest`.
 */

export const LATEST = 'latest'
/** An alias starts with a letter, so it is never read as a version number. */
export const ALIAS_PATTERN = '^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$'
const aliasRe = new RegExp(ALIAS_PATTERN)
/** Versions an alias may split its calls between. */
export const MAX_WEIGHTED_VERSIONS = 10

/** The aliases of a stored function; a record older than issue 15 has only `latest`, on its own version. */
export function aliasesOf(head: FunctionRecord): Record<string, AliasTarget> {
  return head.aliases ?? { [LATEST]: { version: head.version } }
}

/** The highest version number given to the function so far. */
export function lastVersionOf(head: FunctionRecord): number {
  return Math.max(head.lastVersion ?? 0, head.version)
}

/** An alias's versions with a weight above zero, as `[version, weight]`, highest weight first. */
export function targetsOf(target: AliasTarget): Array<[number, number]> {
  if ('version' in target) return [[target.version, 1]]
  return Object.entries(target.weights)
    .map(([v, w]): [number, number] => [Number(v), w])
    .filter(([, w]) => w > 0)
    .sort((a, b) => b[1] - a[1] || a[0] - b[0])
}

/** An alias's versions with their share of its calls (0–1), highest first. */
export function sharesOf(target: AliasTarget): Array<[number, number]> {
  const pairs = targetsOf(target)
  const total = pairs.reduce((n, [, w]) => n + w, 0)
  return pairs.map(([v, w]) => [v, w / total])
}

/** Versions an alias routes to (weight above zero). */
export function versionsOf(target: AliasTarget): number[] {
  return targetsOf(target).map(([v]) => v)
}

/**
 * Versions that calls may be routed to now: every alias's, and both sides of a running canary. Their
 * instances and prewarm pools are kept; any other version's go.
 */
export function liveVersions(head: FunctionRecord): Set<number> {
  const live = new Set<number>()
  for (const t of Object.values(aliasesOf(head))) for (const v of versionsOf(t)) live.add(v)
  const c = head.canary
  if (c?.state === 'running') { live.add(c.baseline); live.add(c.to) }
  return live
}

/** Splits an invocation's name segment `name[@qualifier]`; the qualifier is an alias or a version number. */
export function splitQualifier(segment: string): { name: string; qualifier: string } {
  const at = segment.indexOf('@')
  return at < 0 ? { name: segment, qualifier: LATEST } : { name: segment.slice(0, at), qualifier: segment.slice(at + 1) }
}

/** A qualifier that is a version number (`7`), or undefined when it is an alias. */
export function versionQualifier(qualifier: string): number | undefined {
  return /^[1-9][0-9]{0,8}$/.test(qualifier) ? Number(qualifier) : undefined
}

export function assertAlias(alias: string): void {
  if (!aliasRe.test(alias)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `alias "${alias.slice(0, 80)}" is not a valid name: a letter, then lowercase letters, digits and dashes (at most 63), not ending in a dash`)
  }
}

/**
 * Validates `PUT /v1/functions/:name/aliases/:alias`: `{version: N}` or `{weights: {"N": w, ...}}` with
 * integer weights ≥ 0 and a positive total. Versions are checked against `exists` (the function's kept versions).
 */
export function parseAliasBody(raw: unknown, exists: (version: number) => boolean): AliasTarget {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('the body must be an object: {"version": N} or {"weights": {"N": weight, ...}}')
  const body = raw as Record<string, unknown>
  const keys = Object.keys(body)
  if (keys.length !== 1 || (keys[0] !== 'version' && keys[0] !== 'weights')) throw bad('the body must have exactly one of "version" or "weights"')
  const known = (v: number, field: string): void => {
    if (!exists(v)) throw new KdlError('KDL_ERR_VERSION_NOT_FOUND', `${field}: version ${v} does not exist (pruned or never deployed)`)
  }
  if (keys[0] === 'version') {
    const v = body.version
    if (!Number.isInteger(v) || (v as number) < 1) throw bad('version: must be an integer ≥ 1')
    known(v as number, 'version')
    return { version: v as number }
  }
  const weights = body.weights
  if (typeof weights !== 'object' || weights === null || Array.isArray(weights)) throw bad('weights: must be an object of version → weight')
  const entries = Object.entries(weights as Record<string, unknown>)
  if (entries.length === 0 || entries.length > MAX_WEIGHTED_VERSIONS) throw bad(`weights: between 1 and ${MAX_WEIGHTED_VERSIONS} versions`)
  const out: Record<string, number> = {}
  let total = 0
  for (const [v, w] of entries) {
    if (versionQualifier(v) === undefined) throw bad(`weights: "${v.slice(0, 20)}" is not a version number`)
    if (!Number.isInteger(w) || (w as number) < 0 || (w as number) > 1_000_000) throw bad(`weights.${v}: must be an integer between 0 and 1000000`)
    known(Number(v), `weights.${v}`)
    out[String(Number(v))] = w as number
    total += w as number
  }
  if (total <= 0) throw bad('weights: the total must be above zero')
  // One version with all the weight is that version.
  const live = Object.entries(out).filter(([, w]) => w > 0)
  if (live.length === 1) return { version: Number(live[0]?.[0]) }
  return { weights: out }
}

function bad(message: string): KdlError {
  return new KdlError('KDL_ERR_BAD_SPEC', message)
}
