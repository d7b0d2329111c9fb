import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { create } from 'tar'
import t from 'tap'
import { BACKENDS, processesMentioning, startPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'


for (const backend of BACKENDS) {
 t.test(`on the ${backend} backend`, async (t) => {
  t.test('code with a syntax error is refused at deploy with 422 and the file and line', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const res = await p.deploy('bad', { runtime: 'node', code: 'export default () => {\n  return (\n}' })
    t.equal(res.status, 422)
    t.equal(res.json['code'], 'KDL_ERR_LOAD_FAILED')
    t.match(res.json['message'], /index\.mjs:3/, 'the message names file and line')
    t.equal((await p.api('GET', '/v1/functions/bad')).status, 404, 'nothing was stored')
  })

  t.test('code that ends its instance while loading is refused at deploy with 422, not retried as a platform fault', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const res = await p.deploy('quits', { runtime: 'node', code: 'process.exit(3)\nexport default () => "never"' })
    t.equal(res.status, 422, JSON.stringify(res.json))
    t.equal(res.json['code'], 'KDL_ERR_LOAD_FAILED')
    t.match(res.json, { reason: 'exited', exitCode: 3, message: /ended its instance while loading \(exit code 3/ })
    const metrics = await fetch(`${p.url}/metrics`).then((r) => r.text())
    t.notMatch(metrics, /kindling_call_retries_total\{stage="acquire"\} [1-9]/, 'the function\'s own failure is not retried')
  })

  t.test('a failed update keeps the previous version serving', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('keep', { runtime: 'node', code: 'export default () => "v1"' })
    const bad = await p.deploy('keep', { runtime: 'node', code: 'throw new Error("boom at load")' })
    t.equal(bad.status, 422)
    t.match(bad.json['message'], /boom at load/)
    const got = await p.api('GET', '/v1/functions/keep')
    t.equal(got.json['version'], 1)
    t.equal((await p.invoke('keep')).text, 'v1')
  })

  t.test('malformed specs get KDL_ERR_BAD_SPEC naming the field', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const cases: Array<[string, unknown, RegExp]> = [
      ['ok', { runtime: 'node' }, /exactly one of "code"/],
      ['ok', { runtime: 'node', code: 'x', mode: 'forever' }, /mode/],
      ['ok', { runtime: 'node', code: 'x', concurrency: 0 }, /concurrency/],
      ['ok', { runtime: 'node', code: 'x', colour: 'red' }, /unknown field "colour"/],
      ['ok', { runtime: 'cobol', code: 'x' }, /unknown runtime "cobol"/],
      ['Bad_Name', { runtime: 'node', code: 'x' }, /DNS label/],
      ['ok', { runtime: 'node', code: 'export default () => 1', entrypoint: 'missing.js' }, /entrypoint "missing.js" not found/],
    ]
    for (const [name, body, msg] of cases) {
      const res = await p.api('PUT', `/v1/functions/${name}`, body)
      t.equal(res.status, 400, JSON.stringify(body))
      t.equal(res.json['code'], 'KDL_ERR_BAD_SPEC')
      t.match(res.json['message'], msg)
    }
    const notJson = await fetch(`${p.url}/v1/functions/ok`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"runtime":' })
    t.equal(notJson.status, 400)
    t.equal((await notJson.json() as Record<string, unknown>)['code'], 'KDL_ERR_BAD_REQUEST')
  })

  t.test('a handler that throws answers 500 KDL_ERR_FN_ERROR, handled', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('throws', { runtime: 'node', code: 'export default () => { throw new Error("nope") }' })
    const res = await p.invoke('throws')
    t.equal(res.status, 500)
    t.equal(res.headers['x-kindling-error'], 'handled')
    t.match(res.json(), { code: 'KDL_ERR_FN_ERROR', message: 'nope' })
  })

  t.test('a handler that hangs answers 504 and the function recovers', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('hang', {
      runtime: 'node', mode: 'persistent', timeoutMs: 300,
      code: 'export default (e) => e.query.hang ? new Promise(() => {}) : "alive"',
    })
    const first = await p.invoke('hang')
    const pid1 = first.headers['x-kindling-invocation-id']
    t.ok(pid1)
    const res = await p.invoke('hang', { path: '?hang=1' })
    t.equal(res.status, 504)
    t.equal(res.headers['x-kindling-error'], 'unhandled')
    t.equal((res.json() as Record<string, unknown>)['code'], 'KDL_ERR_FN_TIMEOUT')
    const after = await p.invoke('hang')
    t.equal(after.status, 200)
    t.equal(after.text, 'alive')
    t.not(after.headers['x-kindling-start'], 'warm', 'the hung instance was replaced, not reused')
  })

  t.test('process.exit() in a handler answers 502 KDL_ERR_FN_CRASHED and the function recovers', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('exits', { runtime: 'node', mode: 'persistent', code: 'export default (e) => { if (e.query.die) process.exit(3); return String(process.pid) }' })
    const before = await p.invoke('exits')
    const res = await p.invoke('exits', { path: '?die=1' })
    t.equal(res.status, 502, res.text)
    t.equal(res.headers['x-kindling-error'], 'unhandled')
    t.equal((res.json() as Record<string, unknown>)['code'], 'KDL_ERR_FN_CRASHED')
    const after = await p.invoke('exits')
    t.equal(after.status, 200)
    t.ok(before.text !== '' && after.text !== '', 'both calls answered with a pid')
    t.not(after.headers['x-kindling-start'], 'warm', 'served by a new instance')
  })

  t.test('a function that allocates without bound gets 502 KDL_ERR_FN_OOM and the function recovers', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('hog', {
      runtime: 'node', mode: 'persistent', memoryMb: 64,
      code: 'const keep = []; export default (e) => { if (e.query.grow) for (;;) keep.push(Buffer.alloc(1 << 20, 1)); return "fine" }',
    })
    t.equal((await p.invoke('hog')).text, 'fine')
    const res = await p.invoke('hog', { path: '?grow=1' })
    t.equal(res.status, 502, res.text)
    t.equal(res.headers['x-kindling-error'], 'unhandled')
    t.equal((res.json() as Record<string, unknown>)['code'], 'KDL_ERR_FN_OOM')
    const events = await p.api('GET', '/v1/events?function=hog')
    t.ok((events.json['events'] as Array<{ type: string }>).some((e) => e.type === 'instance-oom'), 'the OOM kill is a platform event')
    t.equal((await p.invoke('hog')).text, 'fine', 'a new instance serves the next call')
  })

  t.test('a function that forks without bound is held by the pids limit, answers, and leaves nothing behind', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    await p.deploy('forky', {
      runtime: 'node', mode: 'ephemeral', timeoutMs: 20_000,
      code: `import { spawn } from "node:child_process"
export default async () => {
  let started = 0, refused = 0
  for (let i = 0; i < 200 && refused < 3; i++) {
    const c = spawn(process.execPath, ["-e", "setInterval(() => {}, 1e9) // kindling-fork-test"], { stdio: "ignore" })
    await new Promise((r) => { c.once("spawn", () => { started++; r() }); c.once("error", () => { refused++; r() }) })
  }
  return { started, refused }
}`,
    })
    await p.deploy('bystander', { runtime: 'node', code: 'export default () => "still here"' })
    const res = await p.invoke('forky')
    t.equal(res.status, 200, res.text)
    const got = res.json() as { started: number; refused: number }
    t.ok(got.refused > 0, `the kernel refused forks (${got.refused}) after ${got.started} children`)
    t.ok(got.started < p.config.KINDLING_PIDS_LIMIT, 'far fewer children than the pids limit: every node counts several tasks')
    await waitFor(async () => (await processesMentioning('kindling-fork-test')).length === 0, 'the children to die with their ephemeral instance')
    t.equal((await p.invoke('bystander')).text, 'still here', 'the platform stays healthy')
  })

  t.test('an invocation body over the limit answers 413', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_MAX_BODY_BYTES: 1024 })
    await p.deploy('sink', { runtime: 'node', code: 'export default (e) => String(e.body.length)' })
    const ok = await p.invoke('sink', { method: 'POST', body: 'x'.repeat(1024) })
    t.equal(ok.text, '1024')
    const big = await p.invoke('sink', { method: 'POST', body: 'x'.repeat(1025) })
    t.equal(big.status, 413)
    t.equal((big.json() as Record<string, unknown>)['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE')
    const chunked = await fetch(`${p.url}/fn/sink`, {
      method: 'POST', duplex: 'half',
      body: new ReadableStream({ start(c) { for (let i = 0; i < 4; i++) c.enqueue(new TextEncoder().encode('y'.repeat(512))); c.close() } }),
    } as RequestInit)
    t.equal(chunked.status, 413, 'a chunked body without length is cut at the limit too')
    const after = await p.invoke('sink', { method: 'POST', body: 'abc' })
    t.equal(after.text, '3', 'the function still answers')
  })

  t.test('a deploy body over the limit answers 413', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend, KINDLING_MAX_DEPLOY_BYTES: 2048 })
    const res = await p.deploy('big', { runtime: 'node', code: `export default () => "${'z'.repeat(4096)}"` })
    t.equal(res.status, 413)
    t.equal(res.json['code'], 'KDL_ERR_PAYLOAD_TOO_LARGE')
  })

  t.test('hostile archives are refused with 400 and nothing is written outside the code directory', async (t) => {
    const p = await startPlatform(t, { KINDLING_BACKEND: backend })
    const work = t.testdir({ src: { 'index.js': 'module.exports = () => "ok"' } })
    const good = await archive(join(work, 'src'), ['index.js'])
    const res = await p.deploy('arch', { runtime: 'node', archive: good.toString('base64'), entrypoint: 'index.js' })
    t.equal(res.status, 201, 'a clean archive deploys')
    t.equal((await p.invoke('arch')).text, 'ok')

    const evil = join(work, 'evil')
    await mkdir(join(evil, 'a'), { recursive: true })
    await writeFile(join(evil, 'a', 'x.js'), 'pwned')
    const slip = await archive(join(evil, 'a'), ['../a/x.js'], { preservePaths: true })
    const abs = await archive(evil, [join(evil, 'a', 'x.js')], { preservePaths: true })
    const before = await readdir(p.dataDir)
    for (const [what, buf] of [['zip-slip path', slip], ['absolute path', abs], ['garbage', Buffer.from('not a tarball')]] as const) {
      const r = await p.deploy('arch2', { runtime: 'node', archive: buf.toString('base64') })
      t.equal(r.status, 400, what)
      t.equal(r.json['code'], 'KDL_ERR_BAD_ARCHIVE', what)
    }
    t.same(await readdir(p.dataDir), before, 'the data directory has nothing new')
    t.equal((await p.api('GET', '/v1/functions/arch2')).status, 404)
  })

 })
}

async function archive(cwd: string, entries: string[], opts: { preservePaths?: boolean } = {}): Promise<Buffer> {
  const chunks: Buffer[] = []
  const stream = create({ gzip: true, cwd, portable: true, ...opts }, entries)
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c)
  return Buffer.concat(chunks)
}
