import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer as createHttp } from 'node:http'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Agent } from 'undici'
import { RegistryProxy } from '../../builder/registry-proxy.js'

/** One raw exchange over the proxy's socket: what it answers first. */
async function raw(socketPath: string, text: string, then?: string): Promise<string> {
  const s = connect(socketPath)
  await once(s, 'connect')
  s.write(text)
  let got = ''
  s.on('data', (d) => {
    got += String(d)
    if (then !== undefined && got.includes('200 Connection Established')) { s.write(then); then = undefined }
  })
  await Promise.race([once(s, 'end'), once(s, 'close')])
  s.destroy()
  return got
}

t.test('CONNECT reaches an https registry\'s host:port only; other targets get 403 and a log line', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-proxy-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // Stands in for the registry's TLS port: the proxy only tunnels bytes, so an echo shows the tunnel.
  const echo = createServer((c) => c.once('data', (d) => c.end(`echo:${String(d)}`)))
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r))
  t.teardown(() => echo.close())
  const port = (echo.address() as AddressInfo).port
  const refused: string[] = []
  const proxy = await RegistryProxy.listen({ socketPath: join(dir, 'p.sock'), registry: new URL(`https://127.0.0.1:${port}/`), refused: (l) => refused.push(l) })
  t.teardown(() => proxy.close())

  const ok = await raw(join(dir, 'p.sock'), `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`, 'hello')
  t.match(ok, /^HTTP\/1.1 200 Connection Established/)
  t.match(ok, /echo:hello/, 'bytes go through the tunnel')
  const other = await raw(join(dir, 'p.sock'), `CONNECT 127.0.0.1:${port + 1} HTTP/1.1\r\nhost: x\r\n\r\n`)
  t.match(other, /^HTTP\/1.1 403/)
  const plain = await raw(join(dir, 'p.sock'), `GET http://127.0.0.1:${port}/ms HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: close\r\n\r\n`)
  t.match(plain, /^HTTP\/1.1 403/, 'plain http to an https registry\'s host is not the registry')
  t.equal(refused.length, 2)
  t.match(refused[0], new RegExp(`proxy refused CONNECT 127.0.0.1:${port + 1}`))
})

t.test('an http registry is reached by absolute-form requests to its origin only', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kdl-proxy-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const registry = createHttp((req, res) => res.end(`registry saw ${req.url}`))
  await new Promise<void>((r) => registry.listen(0, '127.0.0.1', r))
  t.teardown(() => registry.close())
  const port = (registry.address() as AddressInfo).port
  const refused: string[] = []
  const proxy = await RegistryProxy.listen({ socketPath: join(dir, 'p.sock'), registry: new URL(`http://127.0.0.1:${port}`), refused: (l) => refused.push(l) })
  t.teardown(() => proxy.close())
  const agent = new Agent({ connect: { socketPath: join(dir, 'p.sock') } })
  t.teardown(() => agent.close())
  const ok = await request(`http://127.0.0.1:${port}/ms`, { dispatcher: agent, headers: { host: `127.0.0.1:${port}` } })
  // undici sends origin-form paths; the proxy wants absolute-form, like npm's agent sends.
  t.equal(ok.statusCode, 403, 'an origin-form request is not a proxy request')
  await ok.body.text()
  const abs = await raw(join(dir, 'p.sock'), `GET http://127.0.0.1:${port}/ms HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: close\r\n\r\n`)
  t.match(abs, /^HTTP\/1.1 200/)
  t.match(abs, /registry saw \/ms/)
  const elsewhere = await raw(join(dir, 'p.sock'), `GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nhost: 169.254.169.254\r\nconnection: close\r\n\r\n`)
  t.match(elsewhere, /^HTTP\/1.1 403/)
  t.match(refused.join('\n'), /refused GET http:\/\/169\.254\.169\.254\/latest\/meta-data/)
})
