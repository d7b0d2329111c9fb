import jsonata from 'jsonata'
import { KdlError } from '../common/errors.js'

/** JSONata's guardrails for every evaluation: deepest nesting (a runaway recursion stops here) and longest run, ms. */
const GUARDRAILS = { stack: 250, timeout: 500 }
/** Compiled expressions kept at most. */
const MAX_CACHED = 10_000
/** JSONata error codes of those guardrails, said plainly. */
const GUARDRAIL_TEXT: Record<string, string> = { D1011: `nested deeper than ${GUARDRAILS.stack} levels (a runaway recursion?)`, D1012: `ran longer than ${GUARDRAILS.timeout} ms` }

/**
 * JSONata (never `eval`) for a workflow's data: each expression text is compiled once and kept; every
 * evaluation runs under JSONata's own guardrails, so a hostile definition (`$f := function($x){ $f($x) }`)
 * fails its step with KDL_ERR_WF_EXPRESSION_FAILED instead of hanging the platform.
 */
export class Expressions {
  readonly #compiled = new Map<string, jsonata.Expression>()

  async evaluate(text: string, input: unknown, bindings: Record<string, unknown>, where: string): Promise<unknown> {
    let expr = this.#compiled.get(text)
    if (expr === undefined) {
      // Bounded: definitions come and go (versions, deletes); a full cache starts over rather than grow for ever.
      if (this.#compiled.size >= MAX_CACHED) this.#compiled.clear()
      expr = jsonata(text, GUARDRAILS)
      this.#compiled.set(text, expr)
    }
    try {
      const out: unknown = await expr.evaluate(input, bindings)
      return out
    } catch (err) {
      const e = err as { message?: string; code?: string }
      const message = (e.code !== undefined ? GUARDRAIL_TEXT[e.code] : undefined) ?? e.message ?? String(err)
      throw new KdlError('KDL_ERR_WF_EXPRESSION_FAILED', `${where}: ${message}${e.code !== undefined ? ` (JSONata ${e.code})` : ''}`, { cause: err })
    }
  }
}
