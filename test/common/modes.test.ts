import t from 'tap'
import { afterCall } from '../../common/modes.js'

const limits = { maxInvocations: 3, maxAgeMs: 60_000 }

t.test('ephemeral goes after every call; persistent stays whatever it served', async (t) => {
  t.equal(afterCall({ mode: 'ephemeral', ...limits }, 1, 0), 'ephemeral')
  t.equal(afterCall({ mode: 'persistent', ...limits }, 1_000_000, 10 * 60_000), 'keep', 'recycle limits do not apply to persistent')
})

t.test('recycle stays until maxInvocations calls or maxAgeMs, the calls checked first', async (t) => {
  t.equal(afterCall({ mode: 'recycle', ...limits }, 2, 59_999), 'keep')
  t.equal(afterCall({ mode: 'recycle', ...limits }, 3, 0), 'max-invocations')
  t.equal(afterCall({ mode: 'recycle', ...limits }, 1, 60_000), 'max-age')
  t.equal(afterCall({ mode: 'recycle', ...limits }, 3, 60_000), 'max-invocations')
})
