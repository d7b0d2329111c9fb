import { X509Certificate } from 'node:crypto'
import t from 'tap'
import { selfSigned } from '../../kube-sim/cert.js'

t.test('every self-signed certificate is DER OpenSSL accepts (a padded serial failed 1 start in ~500)', async (t) => {
  let refused = 0
  let last: X509Certificate | undefined
  for (let i = 0; i < 2000; i++) {
    try {
      last = new X509Certificate(selfSigned(['127.0.0.1', 'localhost']).cert)
    } catch {
      refused++
    }
  }
  t.equal(refused, 0, 'none refused')
  t.ok(last?.checkIP('127.0.0.1'), 'valid for its IP')
  t.ok(last?.checkHost('localhost'), 'and its name')
  t.ok(last?.ca, 'its own CA')
})
