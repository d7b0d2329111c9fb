import { ApiError, type KubeObject } from './types.js'

/**
 * Label and field selectors as the API server reads them (issue 10): the string syntax of `?labelSelector=`
 * (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`) and the `LabelSelector` objects of
 * workload specs (`matchLabels` + `matchExpressions`), which the controllers match pods with.
 */
export type Operator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist' | 'Gt' | 'Lt'

export interface Requirement {
  key: string
  operator: Operator
  values: string[]
}

export interface LabelSelector {
  matchLabels?: Record<string, string> | undefined
  matchExpressions?: Array<{ key: string; operator: string; values?: string[] | undefined }> | undefined
}

const KEY = /^([a-z0-9A-Z]([-a-z0-9A-Z._]*[a-z0-9A-Z])?\/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$/
const VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/

function bad(selector: string, why: string): ApiError {
  return new ApiError(400, 'BadRequest', `unable to parse requirement: ${why}`, { causes: [{ reason: 'FieldValueInvalid', field: 'labelSelector', message: `${selector}: ${why}` }] })
}

/** Splits on commas outside parentheses. */
function terms(s: string): string[] {
  const out: string[] = []
  let depth = 0
  let cur = ''
  for (const ch of s) {
    if (ch === '(') depth++
    else if (ch === ')') depth--
    if (ch === ',' && depth === 0) { out.push(cur); cur = '' } else cur += ch
  }
  out.push(cur)
  return out.map((x) => x.trim()).filter((x) => x !== '')
}

function checkKey(sel: string, key: string): string {
  if (!KEY.test(key) || key.length > 316) throw bad(sel, `invalid label key "${key}"`)
  return key
}
function checkValue(sel: string, v: string): string {
  if (!VALUE.test(v) || v.length > 63) throw bad(sel, `invalid label value: "${v}"`)
  return v
}

/** Parses the string syntax; 400 BadRequest on a malformed selector. '' selects everything. */
export function parseLabelSelector(selector: string): Requirement[] {
  const out: Requirement[] = []
  for (const term of terms(selector)) {
    let m = /^(\S+)\s+(in|notin)\s*\(([^)]*)\)$/.exec(term)
    if (m) {
      const values = m[3]!.split(',').map((v) => checkValue(selector, v.trim())).filter((v, i, a) => a.indexOf(v) === i)
      out.push({ key: checkKey(selector, m[1]!), operator: m[2] === 'in' ? 'In' : 'NotIn', values })
      continue
    }
    m = /^([^=!<>\s]+)\s*(==|=|!=|>|<)\s*([^=!<>\s]*)$/.exec(term)
    if (m) {
      const [, key, op, value] = m as unknown as [string, string, string, string]
      if (op === '>' || op === '<') {
        if (!/^-?\d+$/.test(value)) throw bad(selector, `for 'Gt', 'Lt' operators, the value must be an integer`)
        out.push({ key: checkKey(selector, key), operator: op === '>' ? 'Gt' : 'Lt', values: [value] })
      } else {
        out.push({ key: checkKey(selector, key), operator: op === '!=' ? 'NotIn' : 'In', values: [checkValue(selector, value)] })
      }
      continue
    }
    m = /^(!?)\s*([^=!<>\s()]+)$/.exec(term)
    if (m) {
      out.push({ key: checkKey(selector, m[2]!), operator: m[1] === '!' ? 'DoesNotExist' : 'Exists', values: [] })
      continue
    }
    throw bad(selector, `found '${term}', expected: key, !key, key=value, key!=value, key in (...), key notin (...)`)
  }
  return out
}

/** The requirements of a `LabelSelector` object; 400 on an unknown operator. */
export function requirementsOf(sel: LabelSelector): Requirement[] {
  const out: Requirement[] = []
  for (const [key, value] of Object.entries(sel.matchLabels ?? {})) out.push({ key, operator: 'In', values: [value] })
  for (const e of sel.matchExpressions ?? []) {
    if (!['In', 'NotIn', 'Exists', 'DoesNotExist'].includes(e.operator)) throw bad(e.key, `"${e.operator}" is not a valid label selector operator`)
    out.push({ key: e.key, operator: e.operator as Operator, values: e.values ?? [] })
  }
  return out
}

export function matchesRequirements(reqs: readonly Requirement[], labels: Record<string, string> | undefined): boolean {
  for (const r of reqs) {
    const v = labels?.[r.key]
    switch (r.operator) {
      case 'In': if (v === undefined || !r.values.includes(v)) return false; break
      case 'NotIn': if (v !== undefined && r.values.includes(v)) return false; break
      case 'Exists': if (v === undefined) return false; break
      case 'DoesNotExist': if (v !== undefined) return false; break
      case 'Gt': if (v === undefined || !/^-?\d+$/.test(v) || Number(v) <= Number(r.values[0])) return false; break
      case 'Lt': if (v === undefined || !/^-?\d+$/.test(v) || Number(v) >= Number(r.values[0])) return false; break
    }
  }
  return true
}

/**
 * Whether `labels` satisfy a `LabelSelector` object, as controllers read one: an empty selector (`{}`) selects
 * everything, an absent one (`undefined`/`null`) nothing.
 */
export function matchesLabelSelector(sel: LabelSelector | null | undefined, labels: Record<string, string> | undefined): boolean {
  if (sel === null || sel === undefined) return false
  return matchesRequirements(requirementsOf(sel), labels)
}

/** A `LabelSelector` object in the string syntax (what `?labelSelector=` and `status.selector` carry). */
export function labelSelectorString(sel: LabelSelector): string {
  return requirementsOf(sel).map((r) => {
    switch (r.operator) {
      case 'In': return r.values.length === 1 ? `${r.key}=${r.values[0]}` : `${r.key} in (${r.values.join(',')})`
      case 'NotIn': return `${r.key} notin (${r.values.join(',')})`
      case 'Exists': return r.key
      case 'DoesNotExist': return `!${r.key}`
      case 'Gt': return `${r.key}>${r.values[0]}`
      case 'Lt': return `${r.key}<${r.values[0]}`
    }
  }).join(',')
}

export interface FieldRequirement {
  path: string[]
  equal: boolean
  value: string
}

/**
 * Parses a field selector (`metadata.name=x,spec.nodeName!=,status.phase==Running`). Any dotted path of the object
 * is accepted (the real server allows a per-kind list; `metadata.name`, `metadata.namespace`, `spec.nodeName`
 * and `status.phase` are the ones clients use); a missing field reads as ''.
 */
export function parseFieldSelector(selector: string): FieldRequirement[] {
  const out: FieldRequirement[] = []
  for (const term of selector.split(',').map((x) => x.trim()).filter((x) => x !== '')) {
    const m = /^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$/.exec(term)
    if (!m) throw new ApiError(400, 'BadRequest', `invalid selector: '${selector}'; can't understand '${term}'`)
    out.push({ path: m[1]!.split('.'), equal: m[2] !== '!=', value: m[3]! })
  }
  return out
}

function fieldValue(obj: unknown, path: readonly string[]): string {
  let cur: unknown = obj
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return ''
    cur = (cur as Record<string, unknown>)[p]
  }
  return cur === undefined || cur === null ? '' : String(cur)
}

export function matchesFields(reqs: readonly FieldRequirement[], obj: KubeObject): boolean {
  for (const r of reqs) if ((fieldValue(obj, r.path) === r.value) !== r.equal) return false
  return true
}
