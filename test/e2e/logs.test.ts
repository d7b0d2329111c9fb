// Function logs (issue 14) on a real platform: what instances print is tagged, kept per function, bounded,
// streamed — on the process backend and on real Docker.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { runCli } from '../../cli/main.js'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

const BIN = fileURLToPath(new URL('../../bin/kindling.mjs', import.meta.url))

interface Entry {
  seq: number; t: number; function: string; version: number; instance: string; invocation?: string
  stream: string; level: string; msg: string; truncated?: boolean; dropped?: number
}

async function logsOf(p: TestPlatform, name: string, query = ''): Promise<{ logs: Entry[]; next: number }> {
  const res = await p.api('GET', `/v1/functions/${name}/logs${query}`)
  if (res.status !== 200) throw new Error(`logs of ${name}: ${res.status} ${JSON.stringify(res.json)}`)
  return res.json as unknown as { logs: Entry[]; next: number }
}

const CHATTY = `
console.log('module top level')
export default (event, ctx) => {
  console.log('console.log', { n: Number(event.query.n ?? 0) })
  console.warn('a warning')
  console.error('an error')
  ctx.log('context.log', 42)
  process.stdout.write('raw stdout\\n')
  process.stderr.write('raw stderr\\n')
  return 'ok'
}`

async function taggingCase(t: Test, p: TestPlatform, name: string): Promise<void> {
  // Persistent: recycle mode would evaluate the module again after each call, printing its top level anew.
  const dep = await p.deploy(name, { runtime: 'node', code: CHATTY, mode: 'persistent' })
  t.equal(dep.status, 201, JSON.stringify(dep.json))
  const first = await p.invoke(name, { path: '?n=1' })
  const second = await p.invoke(name, { path: '?n=2' })
  t.equal(first.status, 200)
  const inv1 = first.headers['x-kindling-invocation-id']!
  const inv2 = second.headers['x-kindling-invocation-id']!
  t.ok(inv1 !== undefined && inv1 !== inv2, 'each answer names its invocation')

  // Six lines per call; the stderr pipe and stdout pipe are read independently, so wait for all of them.
  const all = await waitFor(async () => {
    const { logs } = await logsOf(p, name)
    return logs.filter((e) => e.invocation === inv2 || e.msg === 'raw stdout' || e.msg === 'raw stderr').length >= 8 && logs
  }, 'both calls\' lines')
  t.ok(all.every((e) => e.function === name && e.version === 1 && typeof e.instance === 'string' && e.instance !== ''), 'every entry names function, version, instance')
  t.ok(all.some((e) => e.msg === 'module top level' && e.level === 'info'), 'the module\'s top level is the function\'s too')
  const seqs = all.map((e) => e.seq)
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'oldest first')

  const one = await logsOf(p, name, `?invocation=${inv1}`)
  const msgs = one.logs.map((e) => `${e.level}:${e.msg}`)
  t.same(msgs.sort(), ['error:an error', 'info:console.log { n: 1 }', 'info:context.log 42', 'warn:a warning'].sort(), 'console.* and context.log of one call, with their levels, and none of the other call')
  t.ok(one.logs.every((e) => e.stream === 'stdout'), 'tagged lines come on stdout')
  const raw = all.filter((e) => e.msg === 'raw stderr')
  t.ok(raw.length === 2 && raw.every((e) => e.stream === 'stderr' && e.level === 'error' && e.invocation === undefined), 'direct writes are kept as plain lines of their stream, untagged')

  // Reading on: after=next gives only what came later.
  const { next } = await logsOf(p, name)
  t.same((await logsOf(p, name, `?after=${next}`)).logs, [], 'nothing after the newest')
  await p.invoke(name, { path: '?n=3' })
  const later = await waitFor(async () => {
    const r = await logsOf(p, name, `?after=${next}`)
    return r.logs.length >= 6 && r
  }, 'the third call\'s lines')
  t.ok(later.logs.every((e) => e.seq > next), 'after= reads on from there')
  t.ok(later.logs.some((e) => e.msg === 'console.log { n: 3 }'))
  t.notOk(later.logs.some((e) => e.msg === 'console.log { n: 2 }'), 'and not what came before')
  t.equal((await logsOf(p, name, '?limit=2')).logs.length, 2, 'limit= keeps the newest')
}

t.test('process backend: lines are tagged with function, version, instance and invocation', async (t) => {
  const p = await startPlatform(t)
  await taggingCase(t, p, 'chatty')
})

t.test('one function cannot write into another\'s logs, whatever it prints', async (t) => {
  const p = await startPlatform(t)
  await p.deploy('victim', { runtime: 'node', code: "export default () => { console.log('victim line'); return 'v' }" })
  // Prints lines shaped exactly like the runtime's own, naming the other function and a made-up call.
  const fake = JSON.stringify({ t: Date.now(), level: 'error', fn: 'victim', inv: 'forged', msg: 'spoofed' })
  await p.deploy('forger', { runtime: 'node', code: `export default () => { process.stdout.write(${JSON.stringify(fake + '\n')}); return 'f' }` })
  await p.invoke('victim')
  await p.invoke('forger')
  const forged = await waitFor(async () => (await logsOf(p, 'forger')).logs.find((e) => e.msg === 'spoofed'), 'the forged line')
  t.equal(forged.function, 'forger', 'the line is the function\'s whose instance printed it')
  await waitFor(async () => (await logsOf(p, 'victim')).logs.some((e) => e.msg === 'victim line'), 'the victim\'s own line')
  t.notOk((await logsOf(p, 'victim')).logs.some((e) => e.msg === 'spoofed'), 'nothing of the forger is in the victim\'s logs')
})

t.test('a function that prints without end is bounded, and the drops are counted', async (t) => {
  const rate = 50
  const p = await startPlatform(t, { KINDLING_LOG_LINES_PER_SEC: rate })
  const lines = 5000
  await p.deploy('flood', {
    runtime: 'node',
    code: `export default () => { for (let i = 0; i < ${lines}; i++) console.log('line ' + i); return 'done' }`,
  })
  const res = await p.invoke('flood')
  t.equal(res.status, 200, 'the call itself is not held up')
  // Every line is either kept or counted in a dropped marker (the last marker comes a second after the drops).
  const counted = await waitFor(async () => {
    const { logs } = await logsOf(p, 'flood', '?limit=10000')
    const kept = logs.filter((e) => e.dropped === undefined && e.msg.startsWith('line ')).length
    const dropped = logs.reduce((n, e) => n + (e.dropped ?? 0), 0)
    return kept + dropped === lines && { kept, dropped, logs }
  }, 'every line kept or counted', 15_000)
  t.ok(counted.kept <= 2 * rate + 2 * rate, `at most the burst plus a little rate is kept (${counted.kept} of ${lines})`)
  t.ok(counted.dropped >= lines - 4 * rate, `the rest is counted as dropped (${counted.dropped})`)
  const marker = counted.logs.find((e) => e.dropped !== undefined)!
  t.match(marker, { level: 'warn', function: 'flood', msg: /lines dropped/ }, 'a dropped marker says so')
  // The platform still answers management calls and other functions promptly after the flood.
  t.equal((await p.api('GET', '/v1/functions')).status, 200)
})

t.test('a line without a newline longer than the limit is cut, not buffered whole', async (t) => {
  const p = await startPlatform(t, { KINDLING_LOG_MAX_LINE: 1000 })
  await p.deploy('long', { runtime: 'node', code: "export default () => { process.stdout.write('y'.repeat(5_000_000)); process.stdout.write('\\nafter\\n'); return 'ok' }" })
  t.equal((await p.invoke('long')).status, 200)
  const { logs } = await waitFor(async () => {
    const r = await logsOf(p, 'long')
    return r.logs.some((e) => e.msg === 'after') && r
  }, 'the line after the long one')
  const cut = logs.filter((e) => e.truncated === true)
  t.equal(cut.length, 1, 'one entry for the long line')
  t.equal(cut[0]!.msg, 'y'.repeat(1000), 'cut at the limit')
})

t.test('follow streams new lines as they are printed; bad queries and unknown functions are refused', async (t) => {
  const p = await startPlatform(t)
  await p.deploy('tail', { runtime: 'node', code: "export default (e) => { console.log('call', e.query.k); return 'ok' }" })
  await p.invoke('tail', { path: '?k=before' })
  await waitFor(async () => (await logsOf(p, 'tail')).logs.some((e) => e.msg === 'call before'), 'the first line')

  const ac = new AbortController()
  const res = await request(`${p.url}/v1/functions/tail/logs?follow=true`, { signal: ac.signal })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /application\/x-ndjson/)
  const seen: string[] = []
  const reading = (async () => {
    let buf = ''
    try {
      for await (const chunk of res.body) {
        buf += chunk.toString()
        let nl
        while ((nl = buf.indexOf('\n')) !== -1) {
          seen.push((JSON.parse(buf.slice(0, nl)) as Entry).msg)
          buf = buf.slice(nl + 1)
        }
      }
    } catch { /* aborted */ }
  })()
  await waitFor(() => seen.includes('call before'), 'the backlog first')
  await p.invoke('tail', { path: '?k=live' })
  await waitFor(() => seen.includes('call live'), 'a line printed while following')
  ac.abort()
  await reading

  t.equal((await p.api('GET', '/v1/functions/nope/logs')).json['code'], 'KDL_ERR_FN_NOT_FOUND')
  for (const q of ['?since=yesterday', '?limit=0', '?after=-1', '?follow=maybe']) {
    const bad = await p.api('GET', `/v1/functions/tail/logs${q}`)
    t.equal(bad.json['code'], 'KDL_ERR_BAD_REQUEST', `${q} is refused`)
  }
  t.same((await logsOf(p, 'tail', '?since=1h')).logs.map((e) => e.msg), ['call before', 'call live'], 'since= a duration')
  t.equal((await logsOf(p, 'tail', `?since=${new Date(Date.now() + 60_000).toISOString()}`)).logs.length, 0, 'since= a date')

  // A deleted function's logs go with it.
  await p.api('DELETE', '/v1/functions/tail')
  t.equal((await p.api('GET', '/v1/functions/tail/logs')).json['code'], 'KDL_ERR_FN_NOT_FOUND')
})

t.test('a function whose module fails to load: its output is in its logs', async (t) => {
  const p = await startPlatform(t)
  const dep = await p.deploy('broken', { runtime: 'node', code: "console.error('about to fail: missing config'); process.exit(3)" })
  t.equal(dep.json['code'], 'KDL_ERR_LOAD_FAILED')
  t.match(dep.json['message'], /kindling fn logs broken/, 'the error says where to look')
  const line = await waitFor(async () => (await logsOf(p, 'broken')).logs.find((e) => e.msg === 'about to fail: missing config'), 'the failed load\'s output')
  t.equal(line.level, 'error')
})

t.test('docker backend: the same tagging from a container\'s output', async (t) => {
  const p = await startPlatform(t, { KINDLING_BACKEND: 'docker' })
  await taggingCase(t, p, 'chatty-docker')
})

t.test('kindling fn logs: the lines of a function, of one call, and -f until Ctrl-C', async (t) => {
  const p = await startPlatform(t)
  await p.deploy('cli-logs', { runtime: 'node', code: "export default (e) => { console.log('hello from', e.query.who); return 'ok' }" })
  const a = await p.invoke('cli-logs', { path: '?who=a' })
  await p.invoke('cli-logs', { path: '?who=b' })
  await waitFor(async () => (await logsOf(p, 'cli-logs')).logs.length >= 2, 'both lines')
  const cli = async (...argv: string[]): Promise<{ code: number; out: string; err: string }> => {
    let out = ''
    let err = ''
    const code = await runCli(argv, { stdout: { write: (s: string) => { out += s; return true } }, stderr: { write: (s: string) => { err += s; return true } }, env: { KINDLING_URL: p.url } })
    return { code, out, err }
  }
  const all = await cli('fn', 'logs', 'cli-logs')
  t.equal(all.code, 0, all.err)
  t.match(all.out, /^\S+Z info  v1 \S{8} hello from a\n\S+Z info  v1 \S{8} hello from b\n$/, 'time, level, version, invocation, message — oldest first')
  const one = await cli('fn', 'logs', 'cli-logs', '--invocation', a.headers['x-kindling-invocation-id']!)
  t.equal(one.out.trim().split('\n').length, 1)
  t.match(one.out, /hello from a/)
  const json = await cli('fn', 'logs', 'cli-logs', '--json', '--limit', '1')
  t.match(JSON.parse(json.out), { function: 'cli-logs', msg: 'hello from b' })
  const missing = await cli('fn', 'logs', 'nope')
  t.equal(missing.code, 1)
  t.match(missing.err, /KDL_ERR_FN_NOT_FOUND/)

  // -f as a user runs it: the real binary, ended by SIGINT.
  const child = spawn(process.execPath, [BIN, 'fn', 'logs', 'cli-logs', '-f'], { env: { ...process.env, KINDLING_URL: p.url }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await waitFor(() => out.includes('hello from b'), 'the backlog on -f')
  await p.invoke('cli-logs', { path: '?who=later' })
  await waitFor(() => out.includes('hello from later'), 'a new line on -f')
  child.kill('SIGINT')
  t.equal(await exited, 0, 'Ctrl-C ends it cleanly')
})
