import { generateKeyPairSync, randomBytes, sign } from 'node:crypto'
import { isIPv4 } from 'node:net'

/**
 * A self-signed serving certificate for the stand-in's API server (issue 10). kubectl sends a kubeconfig's token
 * only over TLS (client-go's clientcmd drops the user's credentials for an `http://` server), so an authenticated
 * stand-in serves HTTPS; the certificate is its own CA, handed to clients as the kubeconfig's
 * `certificate-authority-data`. Built with node:crypto alone (EC P-256, ECDSA-SHA256): a minimal X.509 v3 DER.
 */
export interface SelfSigned {
  /** PEM */
  cert: string
  /** PEM (PKCS#8) */
  key: string
}

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}
const tlv = (tag: number, ...content: Buffer[]): Buffer => {
  const body = Buffer.concat(content)
  return Buffer.concat([Buffer.from([tag]), len(body.length), body])
}
const seq = (...c: Buffer[]): Buffer => tlv(0x30, ...c)
const set = (...c: Buffer[]): Buffer => tlv(0x31, ...c)
const octets = (b: Buffer): Buffer => tlv(0x04, b)
const bits = (b: Buffer): Buffer => tlv(0x03, Buffer.from([0]), b)
const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0]))
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'))

function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number)
  const out: number[] = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f]
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f))
    out.push(...chunk)
  }
  return tlv(0x06, Buffer.from(out))
}

function time(d: Date): Buffer {
  const iso = d.toISOString()
  const compact = `${iso.slice(2, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`
  return tlv(0x17, Buffer.from(compact, 'ascii'))
}

function ext(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value))
}

/** A certificate valid for `hosts` (IPv4 addresses or DNS names) for ten years. */
export function selfSigned(hosts: readonly string[], commonName = 'kindling-kube-sim'): SelfSigned {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const ecdsaSha256 = seq(oid('1.2.840.10045.4.3.2'))
  const name = seq(set(seq(oid('2.5.4.3'), utf8(commonName))))
  // A DER INTEGER is minimal and positive: a first byte of 0x01…0x7f is neither padded (0x00 before < 0x80, which
  // OpenSSL refuses as "illegal padding") nor negative.
  const serial = randomBytes(16)
  serial[0] = (serial[0]! & 0x7f) | 0x01
  const now = Date.now()
  const sans = [...new Set(hosts)].map((h) => (isIPv4(h) ? tlv(0x87, Buffer.from(h.split('.').map(Number))) : tlv(0x82, Buffer.from(h, 'ascii'))))
  const extensions = tlv(0xa3, seq(
    ext('2.5.29.19', true, seq(bool(true))),
    // digitalSignature + keyCertSign
    ext('2.5.29.15', true, tlv(0x03, Buffer.from([0x02, 0x84]))),
    ext('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'))),
    ext('2.5.29.17', false, seq(...sans)),
  ))
  const tbs = seq(
    tlv(0xa0, tlv(0x02, Buffer.from([2]))),
    tlv(0x02, serial),
    ecdsaSha256,
    name,
    seq(time(new Date(now - 3600_000)), time(new Date(now + 10 * 365 * 86400_000))),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    extensions,
  )
  const der = seq(tbs, ecdsaSha256, bits(sign('sha256', tbs, privateKey)))
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')
  return {
    cert: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`,
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  }
}
