import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { TestRegistry } from '../../bench/npm-registry.js'
import { archiveOf } from '../fixtures/code.js'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const hello = (word: string): string => `export default () => ${JSON.stringify(word)}`

async function apply(p: TestPlatform, body: Record<string, unknown>): Promise<{ status: number; json: Record<string, unknown> }> {
  return p.api('POST', '/v1/apply', body)
}

/** `action name[: fields]` for each change that is not `unchanged`, in the answer's order. */
function summary(json: Record<string, unknown>): string[] {
  const changes = json['changes'] as Array<{ kind: string; name: string; action: string; fields?: string[] }>
  return changes.filter((c) => c.action !== 'unchanged').map((c) => `${c.action} ${c.kind} ${c.name}${c.fields === undefined ? '' : `: ${c.fields.join(', ')}`}`)
}

async function versionOf(p: TestPlatform, name: string): Promise<number | undefined> {
  const r = await p.api('GET', `/v1/functions/${name}`)
  return r.status === 200 ? r.json['version'] as number : undefined
}

t.test('apply creates, a second apply of the same project changes nothing, a changed field updates only that', async (t) => {
  const p = await startPlatform(t)
  const archive = await archiveOf({ 'index.js': 'export default (e) => "api " + (process.env.GREETING ?? "-")', 'lib/x.js': 'export const x = 1' })
  const project = {
    functions: {
      hello: { runtime: 'node', code: hello('hi') },
      api: { runtime: 'node', archive, env: { GREETING: 'one' } },
    },
    runtimes: { node: { poolSize: 1 } },
  }
  const first = await apply(p, project)
  t.equal(first.status, 200, JSON.stringify(first.json))
  t.same(summary(first.json), ['create function api', 'create function hello'])
  t.equal(first.json['applied'], true)
  t.equal((await p.invoke('hello')).text, 'hi')
  t.equal((await p.invoke('api')).text, 'api one')

  // The same files packed again (another archive of equal content) are unchanged code.
  const repacked = await archiveOf({ 'lib/x.js': 'export const x = 1', 'index.js': 'export default (e) => "api " + (process.env.GREETING ?? "-")' })
  const second = await apply(p, { ...project, functions: { ...project.functions, api: { ...project.functions.api, archive: repacked } } })
  t.equal(second.status, 200, JSON.stringify(second.json))
  t.same(summary(second.json), [], 'nothing changes')
  t.equal(second.json['applied'], false)
  t.same((second.json['changes'] as unknown[]).length, 3, 'every entry is listed, unchanged')
  t.equal(await versionOf(p, 'hello'), 1)
  t.equal(await versionOf(p, 'api'), 1)

  const third = await apply(p, { ...project, functions: { ...project.functions, api: { ...project.functions.api, env: { GREETING: 'two' }, prewarm: 1 } } })
  t.equal(third.status, 200, JSON.stringify(third.json))
  t.same(summary(third.json), ['update function api: prewarm, env'])
  t.match(third.json['changes'], [{ kind: 'runtime', action: 'unchanged' }, { name: 'api', version: 2 }, { name: 'hello', action: 'unchanged', version: 1 }])
  t.equal(await versionOf(p, 'api'), 2)
  t.equal(await versionOf(p, 'hello'), 1, 'the unchanged function keeps its version')
  t.equal((await p.invoke('api')).text, 'api two')

  const code = await apply(p, { ...project, functions: { ...project.functions, hello: { runtime: 'node', code: hello('hey') } } })
  t.match(summary(code.json), ['update function api: prewarm, env', 'update function hello: code'], 'code counts; a field left out takes its default again')
  t.equal((await p.invoke('hello')).text, 'hey')

  const rt = await apply(p, { runtimes: { node: { poolSize: 2 } } })
  t.same(summary(rt.json), ['update runtime node: poolSize'])
  t.equal((await p.api('GET', '/v1/runtimes')).json['runtimes'] instanceof Array, true)
  t.match((await p.api('GET', '/v1/runtimes')).json, { runtimes: [{ name: 'node', poolSize: 2 }] })
})

t.test('dry run answers the plan and changes nothing; prune deletes what the project no longer names', async (t) => {
  const p = await startPlatform(t)
  t.equal((await p.deploy('old', { runtime: 'node', code: hello('old') })).status, 201)
  t.equal((await p.deploy('keep', { runtime: 'node', code: hello('keep') })).status, 201)
  const project = { functions: { keep: { runtime: 'node', code: hello('kept'), timeoutMs: 5000 }, fresh: { runtime: 'node', code: hello('fresh') } }, prune: true }

  const dry = await apply(p, { ...project, dryRun: true })
  t.equal(dry.status, 200, JSON.stringify(dry.json))
  t.same(summary(dry.json), ['create function fresh', 'update function keep: timeoutMs, code', 'delete function old'])
  t.equal(dry.json['applied'], false)
  t.equal(await versionOf(p, 'fresh'), undefined, 'nothing created')
  t.equal(await versionOf(p, 'keep'), 1, 'nothing updated')
  t.equal((await p.invoke('keep')).text, 'keep')
  t.equal(await versionOf(p, 'old'), 1, 'nothing deleted')

  const withoutPrune = await apply(p, { ...project, prune: false, dryRun: true })
  t.notMatch(summary(withoutPrune.json).join('\n'), /delete/, 'without prune nothing is deleted')

  const real = await apply(p, project)
  t.same(summary(real.json), ['create function fresh', 'update function keep: timeoutMs, code', 'delete function old'])
  t.equal(await versionOf(p, 'old'), undefined, 'pruned')
  t.equal((await p.invoke('old')).status, 404)
  t.equal((await p.invoke('keep')).text, 'kept')
  t.equal((await p.invoke('fresh')).text, 'fresh')
  t.same(summary((await apply(p, project)).json), [], 'applied again: nothing')
})

t.test('one function that does not load in a batch of three: nothing is applied, the two good ones are not deployed', async (t) => {
  const p = await startPlatform(t)
  t.equal((await p.deploy('good-a', { runtime: 'node', code: hello('a1') })).status, 201)
  const res = await apply(p, {
    functions: {
      'good-a': { runtime: 'node', code: hello('a2') },
      'good-b': { runtime: 'node', code: hello('b'), prewarm: 1 },
      broken: { runtime: 'node', code: 'export default () => { this is not javascript' },
    },
  })
  t.equal(res.status, 422, JSON.stringify(res.json))
  t.equal(res.json['code'], 'KDL_ERR_LOAD_FAILED')
  t.match(res.json['message'], /a trial load failed, nothing was applied: function "broken" \(code\): /)
  t.match(res.json['errors'], [{ kind: 'function', name: 'broken', field: ['code'], code: 'KDL_ERR_LOAD_FAILED' }])
  t.equal((res.json['errors'] as unknown[]).length, 1, 'only the broken one is named')
  t.equal(await versionOf(p, 'good-b'), undefined, 'the good new function is not deployed')
  t.equal(await versionOf(p, 'broken'), undefined)
  t.equal(await versionOf(p, 'good-a'), 1, 'the good update is not applied')
  t.equal((await p.invoke('good-a')).text, 'a1')
  const instances = [...p.pools.instances()].filter((i) => i.fn === 'good-b' || i.fn === 'broken')
  t.same(instances.filter((i) => i.state !== 'dead').map((i) => i.fn), [], 'the trial instances are gone')
})

t.test('a bad file is refused whole: every problem by function and field, nothing applied', async (t) => {
  const p = await startPlatform(t)
  const res = await apply(p, {
    functions: {
      ok: { runtime: 'node', code: hello('ok') },
      fields: { runtime: 'node', code: hello('x'), prewarm: 99, mode: 'forever', env: { '1BAD': 'x' }, colour: 'red' },
      'Bad_Name': { runtime: 'node', code: hello('x') },
      nort: { runtime: 'cobol', code: hello('x') },
      noentry: { runtime: 'node', archive: await archiveOf({ 'main.js': 'export default () => 1' }) },
      notgz: { runtime: 'node', archive: Buffer.from('not a tarball at all, just bytes').toString('base64') },
    },
    runtimes: { node: { poolSize: -1 }, python: {} },
  })
  t.equal(res.status, 400, JSON.stringify(res.json))
  t.equal(res.json['code'], 'KDL_ERR_BAD_SPEC')
  const errors = res.json['errors'] as Array<{ kind: string; name: string; field: string[]; code: string; message: string }>
  const where = errors.map((e) => `${e.kind} ${e.name} ${e.field.join('.')}`).sort()
  t.same(where, [
    'function Bad_Name ',
    'function fields colour',
    'function fields env.1BAD',
    'function fields mode',
    'function fields prewarm',
    'function noentry entrypoint',
    'function nort runtime',
    'function notgz archive',
    'runtime node poolSize',
    'runtime python ',
  ])
  t.match(errors.find((e) => e.name === 'notgz'), { code: 'KDL_ERR_BAD_ARCHIVE' })
  t.match(errors.find((e) => e.field.join('.') === 'prewarm')?.message, /prewarm must be <= 64/)
  t.equal(errors.find((e) => e.field.join('.') === 'mode')?.message, 'mode must be one of "ephemeral", "recycle", "persistent"', 'a union is one problem, naming its values')
  t.match(res.json['message'], /^10 problems in the project, nothing was applied: /)
  t.equal(await versionOf(p, 'ok'), undefined, 'the good function is not deployed')
  t.match((await p.api('GET', '/v1/runtimes')).json, { runtimes: [{ name: 'node', poolSize: 1 }] }, 'the runtime is unchanged')
})

t.test('the apply body itself: triggers and workflows are refused as not supported yet, unknown fields too', async (t) => {
  const p = await startPlatform(t)
  const res = await apply(p, { functions: {}, triggers: {}, workflows: {}, extra: 1, prune: 'yes' })
  t.equal(res.status, 400)
  t.equal(res.json['code'], 'KDL_ERR_BAD_SPEC')
  t.match(res.json['message'], /"triggers" is not supported yet by this platform; "workflows" is not supported yet by this platform; unknown field "extra"; "prune" must be true or false/)
  t.equal((await apply(p, {})).status, 200, 'an empty project is a plan of nothing')
})

t.test('apply and a concurrent PUT of the same name do not interleave: each lands whole or is refused as superseded', async (t) => {
  const p = await startPlatform(t)
  for (let round = 0; round < 3; round++) {
    const before = (await versionOf(p, 'race')) ?? 0
    const [a, b] = await Promise.all([
      apply(p, { functions: { race: { runtime: 'node', code: hello(`apply${round}`), timeoutMs: 5000 + round } } }),
      p.deploy('race', { runtime: 'node', code: hello(`put${round}`) }),
    ])
    const outcomes = [a, b].map((r) => (r.status < 300 ? 'landed' : String(r.json['code'])))
    t.ok(outcomes.every((o) => o === 'landed' || o === 'KDL_ERR_DEPLOY_SUPERSEDED'), `round ${round}: ${outcomes.join(', ')}`)
    t.ok(outcomes.includes('landed'), 'at least one lands')
    const got = await p.api('GET', '/v1/functions/race')
    t.equal(got.json['version'], before + outcomes.filter((o) => o === 'landed').length, 'one version per deploy that landed')
    const text = (await p.invoke('race')).text
    t.equal(text, got.json['timeoutMs'] === 5000 + round ? `apply${round}` : `put${round}`, 'the stored spec and the code served are of the same deploy')
  }
})

t.test('a function with dependencies: built before anything lands, unchanged when applied again, a failed build applies nothing', async (t) => {
  const registry = await TestRegistry.start()
  t.teardown(() => registry.close())
  await registry.publishDir(join(REPO, 'node_modules', 'ms'))
  const p = await startPlatform(t, { KINDLING_BUILD_REGISTRY: registry.url })
  const files = {
    'package.json': JSON.stringify({ name: 'dur', type: 'module', dependencies: { ms: '^2.1.0' } }),
    'index.js': "import ms from 'ms'\nexport default () => 'in ' + ms(60_000)\n",
  }
  const project = { functions: { dur: { runtime: 'node', archive: await archiveOf(files) }, plain: { runtime: 'node', code: hello('plain') } } }
  const first = await apply(p, project)
  t.equal(first.status, 200, JSON.stringify(first.json))
  t.same(summary(first.json), ['create function dur', 'create function plain'])
  t.equal((await p.invoke('dur')).text, 'in 1m', 'the dependency was built')
  const builds = (await p.api('GET', '/v1/builds')).json['builds'] as unknown[]
  t.equal(builds.length, 1)

  const again = await apply(p, { ...project, functions: { ...project.functions, dur: { runtime: 'node', archive: await archiveOf(files) } } })
  t.same(summary(again.json), [], 'code with a build compares by its files and its build inputs: unchanged')
  t.equal(((await p.api('GET', '/v1/builds')).json['builds'] as unknown[]).length, 1, 'nothing built again')

  const broken = {
    ...files,
    'package.json': JSON.stringify({ name: 'dur', type: 'module', dependencies: { ms: '^2.1.0', 'kdl-missing': '^1.0.0' } }),
  }
  const failed = await apply(p, { functions: { dur: { runtime: 'node', archive: await archiveOf(broken) }, plain: { runtime: 'node', code: hello('changed') } } })
  t.equal(failed.status, 422, JSON.stringify(failed.json))
  t.equal(failed.json['code'], 'KDL_ERR_BUILD_FAILED')
  t.match(failed.json['message'], /^a build failed, nothing was applied: function "dur" \(code\): /)
  t.equal((await p.invoke('plain')).text, 'plain', 'the other function is not updated')
  t.equal(await versionOf(p, 'dur'), 1)
})
