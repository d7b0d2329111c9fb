import { connect } from 'node:net'
import t from 'tap'
import { BACKENDS, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

/** Instances of the platform that hold (or are loading) a function, or were taken for it. */
function busyInstances(p: TestPlatform): string[] {
  return [...p.pools.instances()].filter((i) => i.state !== 'generic' && i.state !== 'dead').map((i) => `${i.id}:${i.state}:${i.fn ?? ''}`)
}

/**
 * Sends a whole request (headers and body) before reading anything, as many clients do, and resolves
 * with what came back; a connection reset instead of an answer rejects.
 */
function sendThenRead(port: number, head: string, body: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let answer = ''
    socket.on('data', (chunk) => { answer += chunk.toString('latin1') })
    socket.on('error', reject)
    socket.on('end', () => resolve(answer))
    socket.write(head)
    socket.end(body)
  })
}

for (const backend of BACKENDS) {
  t.test(`load-time faults answer with codes, not 500 (${backend} backend)`, async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_LOAD_TIMEOUT_MS: 1500 })
    t.equal((await p.deploy('fault', { runtime: 'node', code: 'export default () => "v1"' })).status, 201)

    const looping = await p.deploy('fault', { runtime: 'node', code: 'while (true) {}\nexport default () => "never"' })
    t.equal(looping.status, 422, 'a module whose top level never ends is refused')
    t.match(looping.json, { code: 'KDL_ERR_LOAD_TIMEOUT', loadTimeoutMs: 1500, message: /did not finish loading within 1500 ms/ })

    const hog = await p.deploy('fault', {
      runtime: 'node', memoryMb: 64, code: 'const keep = []\nwhile (true) keep.push(new Array(1 << 20).fill(7))\nexport default () => "never"',
    })
    t.equal(hog.status, 422, 'a module that allocates without bound while loading is refused')
    t.match(hog.json, { code: 'KDL_ERR_LOAD_FAILED', reason: 'oom', memoryMb: 64, message: /more than its 64 MiB memory limit/ })

    const exits = await p.deploy('fault', { runtime: 'node', code: 'process.exit(3)\nexport default () => "never"' })
    t.equal(exits.status, 422, 'a module that ends its own process is refused')
    t.match(exits.json, { code: 'KDL_ERR_LOAD_FAILED', message: /ended its instance while loading/ })

    await waitFor(() => busyInstances(p).length === 0 ? true : undefined, 'every trial instance to be destroyed')
    const still = await p.invoke('fault')
    t.equal(still.text, 'v1', 'the stored version keeps serving')
    t.equal((await p.api('GET', '/v1/functions/fault')).json['version'], 1, 'nothing of the refused deploys was stored')
  })
}

t.test('env keys that are not variable names are refused', async (t) => {
  const p = await startPlatform(t)
  for (const key of ['A-B', '1ST', 'has space', '']) {
    const res = await p.deploy('envs', { runtime: 'node', code: 'export default () => 1', env: { [key]: 'x' } })
    t.equal(res.status, 400, `env key ${JSON.stringify(key)}`)
    t.match(res.json, { code: 'KDL_ERR_BAD_SPEC', message: `env key "${key}" is not a valid name` })
  }
  const ok = await p.deploy('envs', { runtime: 'node', code: 'export default () => process.env.GOOD_1', env: { GOOD_1: 'yes', _x: 'y' } })
  t.equal(ok.status, 201)
  t.equal((await p.invoke('envs')).text, 'yes')
})

t.test('a body over the limit gets its 413 even when the client sends all of it before reading', async (t) => {
  const p = await startPlatform(t, { KINDLING_MAX_BODY_BYTES: 1024 * 1024, KINDLING_MAX_DEPLOY_BYTES: 2 * 1024 * 1024 })
  t.equal((await p.deploy('sink', { runtime: 'node', code: 'export default (e) => String(e.body.length)' })).status, 201)
  const big = Buffer.alloc(24 * 1024 * 1024, 0x61)
  const chunked = (b: Buffer): Buffer => Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n0\r\n\r\n')])
  const cases: Array<[string, string, Buffer]> = [
    ['invocation, content-length', `POST /fn/sink HTTP/1.1\r\nhost: x\r\ncontent-length: ${big.length}\r\nconnection: close\r\n\r\n`, big],
    ['invocation, chunked', 'POST /fn/sink HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n', chunked(big)],
    ['deploy, content-length', `PUT /v1/functions/sink HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${big.length}\r\nconnection: close\r\n\r\n`, big],
    ['deploy, chunked', 'PUT /v1/functions/sink HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n', chunked(big)],
  ]
  for (const [what, head, body] of cases) {
    const answer = await sendThenRead(p.port, head, body)
    t.match(answer, /^HTTP\/1\.1 413 /, `${what}: the 413 arrives`)
    t.match(answer, /"code":"KDL_ERR_PAYLOAD_TOO_LARGE"/)
  }
  const small = await p.invoke('sink', { method: 'POST', body: 'abc' })
  t.equal(small.text, '3', 'calls within the limit are served as before')
})
