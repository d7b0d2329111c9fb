import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FunctionRecord, RuntimeSpec } from '../../common/types.js'
import { FileStore } from '../../store/file-store.js'

async function dataDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-file-store-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

function record(name: string, overrides: Partial<FunctionRecord> = {}): FunctionRecord {
  return {
    name,
    runtime: 'node',
    entrypoint: 'index.mjs',
    mode: 'recycle',
    prewarm: 1,
    concurrency: 1,
    maxInstances: 10,
    queueTimeoutMs: 10_000,
    timeoutMs: 30_000,
    env: { GREETING: 'hi' },
    network: 'none',
    maxInvocations: 1000,
    maxAgeMs: 3_600_000,
    idleTimeoutMs: 300_000,
    version: 1,
    codeHash: 'a'.repeat(64),
    createdAt: '2025-01-01T00:00:00.000Z',
    updatedAt: '2025-01-01T00:00:00.000Z',
    ...overrides,
  }
}

const runtime = (name: string, poolSize = 2): RuntimeSpec => ({ name, poolSize, memoryMb: 128, cpu: 1 })

t.test('a function record round-trips and survives a restart', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  t.equal(await store.getFunction('hello'), undefined, 'unknown function is undefined')
  t.same(await store.listFunctions(), [], 'empty store lists nothing')
  const rec = record('hello', { memoryMb: 256 })
  await store.putFunction(rec)
  t.same(await store.getFunction('hello'), rec)
  await store.putFunction({ ...rec, version: 2 })
  t.equal((await store.getFunction('hello'))?.version, 2, 'a put replaces the record')
  await store.close()

  const again = new FileStore({ dir })
  t.same(await again.getFunction('hello'), { ...rec, version: 2 }, 'a new instance on the same dir reads it back')
  t.same(await readdir(join(dir, 'functions')), ['hello.json'], 'one file per function, no temp file left')
  t.equal((await stat(join(dir, 'functions', 'hello.json'))).mode & 0o777, 0o600, 'records are private (they hold env values)')
})

t.test('runtimes round-trip and list sorted', async (t) => {
  const store = new FileStore({ dir: await dataDir(t) })
  t.equal(await store.getRuntime('node'), undefined)
  await store.putRuntime(runtime('python', 1))
  await store.putRuntime({ ...runtime('node'), image: 'kindling/node:1' })
  t.same(await store.getRuntime('node'), { ...runtime('node'), image: 'kindling/node:1' })
  t.same((await store.listRuntimes()).map((r) => r.name), ['node', 'python'])
})

t.test('listFunctions is sorted by name and ignores temp and stray files', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  for (const name of ['zeta', 'alpha', 'mid-1']) await store.putFunction(record(name))
  const folder = join(dir, 'functions')
  await writeFile(join(folder, '.alpha.json.123.abcdef.tmp'), '{"name":"alpha","half')
  await writeFile(join(folder, 'notes.txt'), 'not a record')
  await writeFile(join(folder, 'Bad_Name.json'), '{}')
  await mkdir(join(folder, 'subdir'))
  t.same((await store.listFunctions()).map((r) => r.name), ['alpha', 'mid-1', 'zeta'])
})

t.test('deleteFunction resolves true when a record was removed, false otherwise', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  t.equal(await store.deleteFunction('ghost'), false, 'nothing to delete (no dir yet)')
  await store.putFunction(record('doomed'))
  await store.putFunction(record('kept'))
  t.equal(await store.deleteFunction('doomed'), true)
  t.equal(await store.deleteFunction('doomed'), false, 'second delete finds nothing')
  t.equal(await store.getFunction('doomed'), undefined)
  t.same((await new FileStore({ dir }).listFunctions()).map((r) => r.name), ['kept'], 'the delete is durable across a restart')
})

t.test('a crash between temp write and rename leaves the previous record intact', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  const good = record('steady', { version: 7 })
  await store.putFunction(good)
  // What a crash mid-put leaves behind: a half-written temp file beside the record, never renamed.
  await writeFile(join(dir, 'functions', `.steady.json.999.0badc0ffee00.tmp`), '{"name":"steady","version":8,"runt')

  const restarted = new FileStore({ dir })
  t.same(await restarted.getFunction('steady'), good, 'the old record is read')
  t.same((await restarted.listFunctions()).map((r) => r.version), [7], 'the temp file is not listed')
  await restarted.putFunction({ ...good, version: 8 })
  t.equal((await restarted.getFunction('steady'))?.version, 8, 'the next put still works')
})

t.test('concurrent puts to one name leave one valid record (the last rename)', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  const other = new FileStore({ dir })
  const versions = Array.from({ length: 40 }, (_, i) => i + 1)
  await Promise.all(versions.map((v) => (v % 2 === 0 ? store : other).putFunction(record('racy', { version: v, env: { PAD: 'x'.repeat(v * 500) } }))))
  const text = await readFile(join(dir, 'functions', 'racy.json'), 'utf8')
  const parsed = JSON.parse(text) as FunctionRecord
  t.ok(versions.includes(parsed.version), 'the file holds one of the writes, whole')
  t.equal(parsed.env['PAD'], 'x'.repeat(parsed.version * 500), 'not a mix of two writes')
  t.same(await readdir(join(dir, 'functions')), ['racy.json'], 'no temp file left behind')
})

t.test('invalid names are rejected with KDL_ERR_BAD_SPEC before touching the filesystem', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  for (const bad of ['../escape', 'UPPER', 'a/b', '', '-lead', 'trail-', 'x'.repeat(64), 'dot.json']) {
    await t.rejects(store.putFunction(record(bad)), { code: 'KDL_ERR_BAD_SPEC' }, `put ${JSON.stringify(bad)}`)
    await t.rejects(store.getFunction(bad), { code: 'KDL_ERR_BAD_SPEC' }, `get ${JSON.stringify(bad)}`)
    await t.rejects(store.deleteFunction(bad), { code: 'KDL_ERR_BAD_SPEC' }, `delete ${JSON.stringify(bad)}`)
    await t.rejects(store.putRuntime(runtime(bad)), { code: 'KDL_ERR_BAD_SPEC' }, `put runtime ${JSON.stringify(bad)}`)
  }
  t.same(await readdir(dir), [], 'nothing was created')
})

t.test('a corrupt record is reported, not returned', async (t) => {
  const dir = await dataDir(t)
  await mkdir(join(dir, 'functions'), { recursive: true })
  await writeFile(join(dir, 'functions', 'broken.json'), '{"name": "broken", "vers')
  await writeFile(join(dir, 'functions', 'swapped.json'), JSON.stringify(record('other')))
  const store = new FileStore({ dir })
  await t.rejects(store.getFunction('broken'), { code: 'KDL_ERR_INTERNAL', message: /functions\/broken\.json is not valid JSON/ })
  await t.rejects(store.getFunction('swapped'), { code: 'KDL_ERR_INTERNAL', message: /does not hold the function "swapped"/ })
})

t.test('close waits for in-flight writes and refuses later calls', async (t) => {
  const dir = await dataDir(t)
  const store = new FileStore({ dir })
  const put = store.putFunction(record('last'))
  await store.close()
  await put
  t.same(await new FileStore({ dir }).getFunction('last'), record('last'), 'the in-flight write completed')
  await t.rejects(store.getFunction('last'), { code: 'KDL_ERR_SHUTTING_DOWN' })
  await t.rejects(store.putFunction(record('late')), { code: 'KDL_ERR_SHUTTING_DOWN' })
})
