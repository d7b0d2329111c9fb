import { readFile } from 'node:fs/promises'
import t from 'tap'
import { ERROR_CODES, errorBody, isKdlError, KdlError } from '../../common/errors.js'

t.test('every error code is unique, KDL_ERR_-prefixed, has an HTTP status and is documented in the README', async (t) => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  const codes = Object.keys(ERROR_CODES)
  t.equal(new Set(codes).size, codes.length)
  for (const [code, info] of Object.entries(ERROR_CODES)) {
    t.match(code, /^KDL_ERR_[A-Z_]+$/)
    t.ok(info.status >= 400 && info.status < 600, `${code} has an error status`)
    t.ok(info.description.length > 10, `${code} is described`)
    t.ok(readme.includes(code), `${code} is in the README's error table`)
  }
  t.ok(Object.isFrozen(ERROR_CODES), 'the table is frozen')
})

t.test('a KdlError serialises as {statusCode, code, error, message}', async (t) => {
  const err = new KdlError('KDL_ERR_SATURATED', 'busy', { headers: { 'retry-after': '1' }, details: { queued: 3 } })
  t.same(errorBody(err), { statusCode: 429, code: 'KDL_ERR_SATURATED', error: 'Too Many Requests', message: 'busy', queued: 3 })
  t.ok(isKdlError(err))
  t.ok(isKdlError({ code: 'KDL_ERR_FN_NOT_FOUND', statusCode: 404 }), 'matching is by code, not class')
  t.notOk(isKdlError(new Error('x')))
})
