import t from 'tap'
import { loadConfig } from '../../common/config.js'

t.test('defaults apply when the environment says nothing', async (t) => {
  const c = loadConfig({})
  t.equal(c.KINDLING_PORT, 8080)
  t.equal(c.KINDLING_HOST, '127.0.0.1')
  t.equal(c.KINDLING_BACKEND, 'process')
  t.equal(c.KINDLING_MAX_BODY_BYTES, 6 * 1024 * 1024)
  t.ok(Object.isFrozen(c))
})

t.test('values are read from KINDLING_* variables and coerced', async (t) => {
  const c = loadConfig({ KINDLING_PORT: '9090', KINDLING_BACKEND: 'docker', UNRELATED: 'x' })
  t.equal(c.KINDLING_PORT, 9090)
  t.equal(c.KINDLING_BACKEND, 'docker')
})

t.test('a bad value stops start-up with a message naming the variable', async (t) => {
  t.throws(() => loadConfig({ KINDLING_PORT: 'eighty' }), { code: 'KDL_ERR_BAD_REQUEST', message: /KINDLING_PORT/ })
  t.throws(() => loadConfig({ KINDLING_BACKEND: 'lxc' }), { message: /KINDLING_BACKEND/ })
  t.throws(() => loadConfig({ KINDLING_INSTANCE_USER: 'nobody' }), { message: /KINDLING_INSTANCE_USER/ })
})

t.test('every configuration variable is in the README table', async (t) => {
  const { readFile } = await import('node:fs/promises')
  const { ConfigSchema } = await import('../../common/config.js')
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  for (const key of Object.keys(ConfigSchema.properties)) t.ok(readme.includes(`| \`${key}\``), `${key} is documented`)
})
