import { Type, type Static } from '@sinclair/typebox'
import { Ajv } from 'ajv'
import { Cron } from 'croner'
import { ALIAS_PATTERN, splitQualifier, versionQualifier } from '../common/aliases.js'
import { KdlError } from '../common/errors.js'
import { NAME_PATTERN } from '../common/spec.js'

/** Largest `body` a trigger may carry (its JSON text), bytes: the async invocation limit, 256 KiB. */
export const TRIGGER_MAX_BODY_BYTES = 256 * 1024
/** Fire times `GET /v1/triggers/:name` lists ahead. */
export const NEXT_RUNS = 5
/** Headers a trigger may not set: the platform's own, and those of the transport. */
const RESERVED_HEADERS = /^(x-kindling-.*|host|content-length|transfer-encoding|connection|keep-alive|upgrade|te|trailer|expect)$/i

/** `name`, `name@alias` or `name@7`. */
export const TARGET_PATTERN = `^${NAME_PATTERN.slice(1, -1)}(@(${ALIAS_PATTERN.slice(1, -1)}|[1-9][0-9]{0,8}))?$`

export const TriggerBody = Type.Object({
  cron: Type.String({ minLength: 1, maxLength: 200, description: 'A cron expression as croner reads it: 5 fields (minute first) or 6 (seconds first); `@hourly`-style nicknames too.' }),
  function: Type.String({ pattern: TARGET_PATTERN, description: 'The function each tick calls: `name`, `name@alias` or `name@version`.' }),
  body: Type.Optional(Type.Unknown({ description: `Sent with each call (POST): a string as it is, any other JSON value as JSON. At most ${TRIGGER_MAX_BODY_BYTES} bytes. Without it the call is a GET.` })),
  timezone: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'IANA time zone the expression is read in (e.g. `Europe/Paris`). @default UTC' })),
  headers: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]{1,100}$' }), Type.String({ maxLength: 4096 }), { maxProperties: 50, description: 'Request headers of each call (not `x-kindling-*`, nor transport headers).' })),
  enabled: Type.Optional(Type.Boolean({ default: true, description: '`false` keeps the trigger without firing it.' })),
}, { additionalProperties: false })
export type TriggerBody = Static<typeof TriggerBody>

/** A trigger as stored (`<prefix>trigger:<name>`). */
export interface TriggerRecord {
  name: string
  cron: string
  function: string
  body?: unknown
  timezone: string
  headers: Record<string, string>
  enabled: boolean
  createdAt: string
  /** Every PUT sets it; it is also the trigger's revision (a replica holding an older one does not fire). */
  updatedAt: string
}

const ajv = new Ajv({ allErrors: true, strict: false })
const check = ajv.compile<TriggerBody>(TriggerBody)

/** The trigger's schedule, for computing only (croner's own timer is not used: see scheduler.ts). */
export function scheduleOf(r: Pick<TriggerRecord, 'cron' | 'timezone'>): Cron {
  return new Cron(r.cron, { paused: true, timezone: r.timezone, mode: '5-or-6-parts' })
}

/** The next `n` fire times after `from`. */
export function nextRuns(r: Pick<TriggerRecord, 'cron' | 'timezone'>, n: number, from = new Date()): Date[] {
  const c = scheduleOf(r)
  try { return c.nextRuns(n, from) } finally { c.stop() }
}

/**
 * Validates a `PUT /v1/triggers/:name` body: KDL_ERR_BAD_SPEC naming the field (a bad expression or time
 * zone with croner's own message), KDL_ERR_PAYLOAD_TOO_LARGE for a body over the limit.
 */
export function parseTriggerBody(name: string, body: unknown, current: TriggerRecord | undefined, now = new Date()): TriggerRecord {
  assertTriggerName(name)
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new KdlError('KDL_ERR_BAD_SPEC', 'trigger spec must be a JSON object')
  if (!check(body)) {
    const problems = (check.errors ?? []).map((e) => {
      if (e.keyword === 'additionalProperties') return `unknown field "${String(e.params['additionalProperty'])}"`
      const where = e.instancePath === '' ? 'spec' : e.instancePath.slice(1).replaceAll('/', '.')
      if (e.keyword === 'pattern' && where === 'function') return 'function must name a function: "name", "name@alias" or "name@version"'
      return `${where} ${e.message ?? 'is invalid'}`
    })
    throw new KdlError('KDL_ERR_BAD_SPEC', `invalid trigger spec: ${problems.join('; ')}`)
  }
  const timezone = body.timezone ?? 'UTC'
  // The expression first (in UTC), then the zone, so the message names the field that is wrong.
  try {
    scheduleOf({ cron: body.cron, timezone: 'UTC' }).stop()
  } catch (err) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `cron: "${body.cron}" is not a cron expression (5 fields, or 6 with seconds first): ${(err as Error).message}`)
  }
  try {
    const c = scheduleOf({ cron: body.cron, timezone })
    const next = c.nextRun()
    c.stop()
    if (next === null) throw new Error('the expression never fires')
  } catch (err) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `timezone: "${timezone}" cannot schedule "${body.cron}": ${(err as Error).message}`)
  }
  for (const h of Object.keys(body.headers ?? {})) {
    if (RESERVED_HEADERS.test(h)) throw new KdlError('KDL_ERR_BAD_SPEC', `headers: "${h}" is set by the platform, a trigger cannot set it`)
  }
  if (body.body !== undefined) {
    const size = Buffer.byteLength(typeof body.body === 'string' ? body.body : JSON.stringify(body.body))
    if (size > TRIGGER_MAX_BODY_BYTES) {
      throw new KdlError('KDL_ERR_PAYLOAD_TOO_LARGE', `body: ${size} bytes, a trigger's body may have at most ${TRIGGER_MAX_BODY_BYTES}`)
    }
  }
  const at = now.toISOString()
  return {
    name,
    cron: body.cron,
    function: body.function,
    ...(body.body === undefined ? {} : { body: body.body }),
    timezone,
    headers: body.headers ?? {},
    enabled: body.enabled ?? true,
    createdAt: current?.createdAt ?? at,
    updatedAt: at,
  }
}

/** Trigger names are function-like names (DNS labels). */
export function assertTriggerName(name: string): void {
  if (!new RegExp(NAME_PATTERN).test(name)) {
    throw new KdlError('KDL_ERR_BAD_SPEC', `trigger name "${name.slice(0, 80)}" must be a DNS label: lower-case letters, digits and "-", at most 63 characters`)
  }
}

/** The function part of a trigger's `function` (`name@alias` → `name`), and whether it names a version. */
export function targetOf(fn: string): { name: string; qualifier: string; version: number | undefined } {
  const { name, qualifier } = splitQualifier(fn)
  return { name, qualifier, version: versionQualifier(qualifier) }
}
