import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { archiveOf } from '../fixtures/code.js'
import { TestRegistry } from '../../bench/npm-registry.js'
import { processesMentioning, startPlatform, type TestPlatform } from '../fixtures/platform.js'
import { waitFor } from '../fixtures/wait.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))

/** A function whose answer comes through `ms`, a small, well-known pure-JS package (the project's own copy, served by the test registry). */
const MS_FN = "import ms from 'ms'\nexport default () => ms(90_000) + ' / ' + ms('2h')\n"
const pkg = (extra: Record<string, unknown> = {}): string => JSON.stringify({ name: 'fn', type: 'module', dependencies: { ms: '^2.1.0' }, ...extra })

const registry = await TestRegistry.start()
t.teardown(() => registry.close())
await registry.publishDir(join(REPO, 'node_modules', 'ms'))
await registry.publish({ name: 'kdl-dev-only', version: '1.0.0', main: 'index.js' }, { 'index.js': 'module.exports = 1\n' })
await registry.publish({ name: 'kdl-bad-install', version: '1.0.0', main: 'index.js', scripts: { postinstall: "node -e \"console.log('kdl-bad-install: cannot set up'); process.exit(9)\"" } }, { 'index.js': 'module.exports = 2\n' })

async function logOf(p: TestPlatform, id: string): Promise<string> {
  const res = await request(`${p.url}/v1/builds/${id}/log`)
  return res.body.text()
}

t.test('builds on the process backend', async (t) => {
  const p = await startPlatform(t, { KINDLING_BUILD_REGISTRY: registry.url })

  let first: Record<string, unknown> = {}
  t.test('a function importing a real npm package is built once and answers through its import, prewarmed', async (t) => {
    const code = await archiveOf({ 'package.json': pkg(), 'index.js': MS_FN })
    const res = await p.api('PUT', '/v1/functions/ms?wait=true', { runtime: 'node', archive: code, prewarm: 1 })
    t.equal(res.status, 201, JSON.stringify(res.json))
    first = res.json['build'] as Record<string, unknown>
    t.match(first, { state: 'succeeded', reused: false, command: 'npm install --omit=dev', lockfile: 'generated', functions: ['ms'] })
    t.type(first['durationMs'], 'number')
    t.match(first['inputsHash'], /^[0-9a-f]{64}$/)
    t.equal(registry.tarballFetches('ms'), 1, 'npm fetched the package through the proxy, from the registry')
    const call = await p.invoke('ms')
    t.equal(call.status, 200)
    t.equal(call.text, '2m / 7200000')
    t.equal(call.headers['x-kindling-start'], 'prewarmed', 'the prewarmed instance has the dependency loaded')
    const log = await logOf(p, String(first['id']))
    t.match(log, /npm install --omit=dev/)
    t.match(log, new RegExp(`GET 200 ${registry.url}/ms`), 'npm\'s own fetch lines are in the log')
    t.match(log, /added 1 package/)
    const fn = await p.api('GET', '/v1/functions/ms')
    t.match(fn.json['build'], { id: first['id'], inputsHash: first['inputsHash'] }, 'the function record names its build')
    const got = await p.api('GET', `/v1/builds/${String(first['id'])}`)
    t.match(got.json, { id: first['id'], state: 'succeeded' })
  })

  t.test('the same dependencies are built once: another function and a code-only redeploy install nothing', async (t) => {
    const other = await p.api('PUT', '/v1/functions/ms-too?wait=true', {
      runtime: 'node', archive: await archiveOf({ 'package.json': pkg(), 'index.js': "import ms from 'ms'\nexport default () => ms(1000)\n" }),
    })
    t.equal(other.status, 201, JSON.stringify(other.json))
    t.match(other.json['build'], { id: first['id'], reused: true, durationMs: first['durationMs'] }, 'the first build, timed once')
    t.equal((await p.invoke('ms-too')).text, '1s')
    const again = await p.api('PUT', '/v1/functions/ms', {
      runtime: 'node', archive: await archiveOf({ 'package.json': pkg(), 'index.js': "import ms from 'ms'\nexport default () => 'v2 ' + ms(60_000)\n" }),
    })
    t.equal(again.status, 200, 'no build to wait for: the answer is the deploy itself')
    t.match(again.json, { version: 2, build: { id: first['id'], reused: true } })
    t.equal((await p.invoke('ms')).text, 'v2 1m')
    t.equal(registry.tarballFetches('ms'), 1, 'no second download')
    const builds = await p.api('GET', '/v1/builds')
    t.equal((builds.json['builds'] as unknown[]).length, 1, 'one build on record')
    t.same((builds.json['builds'] as Array<Record<string, unknown>>)[0]!['functions'], ['ms', 'ms-too'])
  })

  t.test('a lockfile is installed with npm ci, without dev dependencies', async (t) => {
    const out = join(p.dataDir, 'builds', 'out', String(first['inputsHash']))
    const lock = JSON.parse(await readFile(join(out, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> }
    lock.packages['node_modules/kdl-dev-only'] = { version: '1.0.0', resolved: `${registry.url}/kdl-dev-only/-/kdl-dev-only-1.0.0.tgz`, dev: true }
    ;(lock.packages[''] as Record<string, unknown>)['devDependencies'] = { 'kdl-dev-only': '1.0.0' }
    const res = await p.api('PUT', '/v1/functions/locked?wait=true', {
      runtime: 'node',
      archive: await archiveOf({
        'package.json': pkg({ devDependencies: { 'kdl-dev-only': '1.0.0' } }),
        'package-lock.json': JSON.stringify(lock),
        'index.js': "import ms from 'ms'\nexport default async () => { let dev = 'absent'; try { await import('kdl-dev-only'); dev = 'present' } catch {} return ms(5000) + ' dev ' + dev }\n",
      }),
    })
    t.equal(res.status, 201, JSON.stringify(res.json))
    t.match(res.json['build'], { command: 'npm ci --omit=dev', lockfile: 'provided', reused: false })
    t.not((res.json['build'] as Record<string, unknown>)['id'], first['id'], 'another lockfile is another build')
    t.equal((await p.invoke('locked')).text, '5s dev absent')
    t.equal(registry.tarballFetches('kdl-dev-only'), 0, 'a dev dependency is never fetched')
  })

  t.test('a missing package is refused with KDL_ERR_BUILD_FAILED and the log; the previous version keeps serving', async (t) => {
    const res = await p.api('PUT', '/v1/functions/ms?wait=true', {
      runtime: 'node', archive: await archiveOf({ 'package.json': JSON.stringify({ dependencies: { ms: '^2.1.0', 'kdl-no-such-package': '1.0.0' } }), 'index.js': MS_FN }),
    })
    t.equal(res.status, 422)
    t.equal(res.json['code'], 'KDL_ERR_BUILD_FAILED')
    t.match(res.json['message'], /npm install failed/)
    t.match(res.json['build'], { reason: 'exit' })
    t.match((res.json['logTail'] as string[]).join('\n'), /404.*kdl-no-such-package/s, "the log's tail names the package")
    const fn = await p.api('GET', '/v1/functions/ms')
    t.equal(fn.json['version'], 2, 'nothing was stored')
    t.equal((await p.invoke('ms')).text, 'v2 1m')
    const record = await p.api('GET', `/v1/builds/${String((res.json['build'] as Record<string, unknown>)['id'])}`)
    t.match(record.json, { state: 'failed', error: { code: 'KDL_ERR_BUILD_FAILED', reason: 'exit' } })
  })

  t.test('a failing install script is refused with its output', async (t) => {
    const res = await p.api('PUT', '/v1/functions/bad-script?wait=true', {
      runtime: 'node',
      archive: await archiveOf({
        'package.json': pkg({ scripts: { postinstall: "node -e \"console.log('postinstall: giving up'); process.exit(3)\"" } }),
        'index.js': MS_FN,
      }),
    })
    t.equal(res.status, 422)
    t.equal(res.json['code'], 'KDL_ERR_BUILD_FAILED')
    t.match((res.json['logTail'] as string[]).join('\n'), /postinstall: giving up/)
    t.equal((await p.api('GET', '/v1/functions/bad-script')).status, 404)
  })

  t.test("a dependency's failing install script fails the build; npm's allowScripts policy holds", async (t) => {
    const files = (allow: boolean): Promise<string> => archiveOf({
      'package.json': pkg({ dependencies: { ms: '^2.1.0', 'kdl-bad-install': '1.0.0' }, allowScripts: { 'kdl-bad-install': allow } }),
      'index.js': MS_FN,
    })
    const allowed = await p.api('PUT', '/v1/functions/dep-script?wait=true', { runtime: 'node', archive: await files(true) })
    t.equal(allowed.status, 422)
    t.equal(allowed.json['code'], 'KDL_ERR_BUILD_FAILED')
    t.match((allowed.json['logTail'] as string[]).join('\n'), /kdl-bad-install: cannot set up/)
    // npm's own script policy holds in the build: a denied dependency script does not run.
    const skipped = await p.api('PUT', '/v1/functions/dep-script?wait=true', { runtime: 'node', archive: await files(false) })
    t.equal(skipped.status, 201, JSON.stringify(skipped.json))
    t.notMatch(await logOf(p, String((skipped.json['build'] as Record<string, unknown>)['id'])), /cannot set up/)
  })

  t.test('a build sees neither the data directory nor the API, and reaches nothing but the registry', async (t) => {
    const probe = `
      const fs = require('fs'), net = require('net'), http = require('http');
      const r = (f) => { try { return f() } catch (e) { return e.code || String(e) } };
      console.log('probe uid ' + process.getuid());
      console.log('probe data ' + JSON.stringify(r(() => fs.readdirSync(${JSON.stringify(p.dataDir)}))));
      console.log('probe store ' + r(() => fs.readFileSync(${JSON.stringify(join(p.dataDir, 'store'))} + '/functions/ms.json', 'utf8').slice(0, 20)));
      const s = net.connect(${p.port}, '127.0.0.1');
      s.on('connect', () => { console.log('probe api connected'); s.destroy(); via(); });
      s.on('error', (e) => { console.log('probe api ' + e.code); via(); });
      function via() {
        const u = new URL(process.env.npm_config_proxy);
        const q = http.get({ host: u.hostname, port: u.port, path: 'http://127.0.0.1:${p.port}/v1/functions' }, (res) => { console.log('probe via proxy ' + res.statusCode); res.resume() });
        q.on('error', (e) => console.log('probe via proxy ' + e.code));
      }`
    await p.deploy('secret', { runtime: 'node', code: 'export default () => 1', env: { TOKEN: 'hunter2' } })
    const res = await p.api('PUT', '/v1/functions/probe?wait=true', {
      runtime: 'node', archive: await archiveOf({ 'package.json': pkg({ scripts: { postinstall: `node -e ${JSON.stringify(probe.replace(/\n\s*/g, ' '))}` } }), 'index.js': MS_FN }),
    })
    t.equal(res.status, 201, JSON.stringify(res.json))
    const log = await logOf(p, String((res.json['build'] as Record<string, unknown>)['id']))
    t.match(log, /probe uid 65534/, 'the build runs as the unprivileged instance user')
    t.match(log, /probe data (\[\]|"ENOENT")/, 'the data directory is an empty cover (or, under /tmp, behind the private /tmp)')
    t.match(log, /probe store (ENOENT|EACCES)/, 'no spec (with its env) can be read')
    t.match(log, /probe api ECONNREFUSED/, "the platform's port is not in the build's network")
    t.match(log, /probe via proxy 403/, 'the proxy lets through the registry only')
    t.match(log, new RegExp(`proxy refused GET http://127.0.0.1:${p.port}/v1/functions`), 'and says so in the log')
    t.notMatch(log, /hunter2/)
  })

  t.test('without ?wait the deploy answers 202 with its build, whose log streams until it ends', async (t) => {
    const res = await p.api('PUT', '/v1/functions/later', {
      runtime: 'node', archive: await archiveOf({ 'package.json': pkg({ description: 'another inputs hash' }), 'index.js': MS_FN }),
    })
    t.equal(res.status, 202)
    const build = res.json['build'] as Record<string, unknown>
    t.match(res.json, { function: 'later', state: 'building' })
    t.match(build['state'], /^(queued|running)$/)
    const log = await logOf(p, String(build['id']))
    t.match(log, /kindling build: done in \d+ ms/, 'the log was followed to its end')
    const record = await p.api('GET', `/v1/builds/${String(build['id'])}`)
    t.equal(record.json['state'], 'succeeded')
    await waitFor(async () => (await p.api('GET', '/v1/functions/later')).status === 200, 'the function lands after its build')
    t.equal((await p.invoke('later')).text, '2m / 7200000')
  })

  t.test('deploys of one set of dependencies at once share one build', async (t) => {
    const fetchesBefore = registry.tarballFetches('ms')
    const archives = await Promise.all([1, 2, 3].map((n) => archiveOf({ 'package.json': pkg({ description: 'concurrent' }), 'index.js': `export { default } from './f.js'\n`, 'f.js': `import ms from 'ms'\nexport default () => '${n} ' + ms(2000)\n` })))
    const results = await Promise.all(archives.map((archive, i) => p.api('PUT', `/v1/functions/same-${i}?wait=true`, { runtime: 'node', archive })))
    for (const r of results) t.equal(r.status, 201, JSON.stringify(r.json))
    const ids = new Set(results.map((r) => (r.json['build'] as Record<string, unknown>)['id']))
    t.equal(ids.size, 1, 'one build id for all three')
    t.equal(registry.tarballFetches('ms') - fetchesBefore, 1, 'one install')
    t.equal((await p.invoke('same-2')).text, '3 2s')
  })

  t.test('unknown builds answer 404', async (t) => {
    const res = await p.api('GET', '/v1/builds/b-nosuchbuild')
    t.equal(res.status, 404)
    t.equal(res.json['code'], 'KDL_ERR_BUILD_NOT_FOUND')
  })
})

t.test('a build over its memory, time or size limit is stopped and reported, and leaves no process', async (t) => {
  const p = await startPlatform(t, { KINDLING_BUILD_REGISTRY: registry.url, KINDLING_BUILD_MEMORY_MB: 256, KINDLING_BUILD_TIMEOUT_MS: 3000, KINDLING_MAX_UNPACKED_BYTES: 2000 })
  const hog = await p.api('PUT', '/v1/functions/hog?wait=true', {
    runtime: 'node',
    archive: await archiveOf({ 'package.json': pkg({ scripts: { postinstall: "node -e \"const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1))\"" } }), 'index.js': MS_FN }),
  })
  t.equal(hog.status, 422)
  t.equal(hog.json['code'], 'KDL_ERR_BUILD_FAILED')
  t.match(hog.json['build'], { reason: 'memory' })
  t.match(hog.json['message'], /exceeded its memory limit \(256 MiB/)

  const hang = await p.api('PUT', '/v1/functions/hang?wait=true', {
    runtime: 'node',
    archive: await archiveOf({ 'package.json': pkg({ scripts: { postinstall: "node -e \"console.log('hanging'); setInterval(() => {}, 1000)\"" } }), 'index.js': MS_FN }),
  })
  t.equal(hang.status, 422)
  t.match(hang.json['build'], { reason: 'timeout' })
  t.match(hang.json['message'], /ran past its time limit \(3000 ms/)
  const big = await p.api('PUT', '/v1/functions/big?wait=true', { runtime: 'node', archive: await archiveOf({ 'package.json': pkg(), 'index.js': MS_FN }) })
  t.equal(big.status, 422)
  t.match(big.json['build'], { reason: 'output' })
  t.match(big.json['message'], /larger than 2000 bytes \(KINDLING_MAX_UNPACKED_BYTES\)/, 'ms with its readme and lockfile is over 2000 bytes')
  for (const r of [hog, hang, big]) {
    const id = String((r.json['build'] as Record<string, unknown>)['id'])
    t.same(await processesMentioning(id), [], `no process of build ${id} is left`)
  }
  t.same(await readdir(join(p.dataDir, 'builds', 'out')), [], 'no output of a failed build is kept')
  t.same(await readdir(join(p.dataDir, 'builds', 'work')), [], 'and nothing is left in work/')
})

t.test('builds on the docker backend: a build container, the dependency loaded in the function container', async (t) => {
  const p = await startPlatform(t, { KINDLING_BACKEND: 'docker', KINDLING_BUILD_REGISTRY: registry.url })
  const res = await p.api('PUT', '/v1/functions/ms-docker?wait=true', {
    runtime: 'node', prewarm: 1,
    archive: await archiveOf({
      'package.json': pkg({ description: 'docker', scripts: { postinstall: "node -e \"console.log('probe uid ' + process.getuid())\"" } }),
      'index.js': MS_FN,
    }),
  })
  t.equal(res.status, 201, JSON.stringify(res.json))
  const call = await p.invoke('ms-docker')
  t.equal(call.text, '2m / 7200000')
  t.equal(call.headers['x-kindling-start'], 'prewarmed')
  const log = await logOf(p, String((res.json['build'] as Record<string, unknown>)['id']))
  t.match(log, /probe uid 65534/, 'install scripts run as the instance user, through the host\'s sh')
  t.match(log, /added 1 package/)
  const missing = await p.api('PUT', '/v1/functions/ms-docker?wait=true', {
    runtime: 'node', archive: await archiveOf({ 'package.json': JSON.stringify({ dependencies: { 'kdl-no-such-package': '1.0.0' } }), 'index.js': MS_FN }),
  })
  t.equal(missing.status, 422)
  t.equal(missing.json['code'], 'KDL_ERR_BUILD_FAILED')
  t.equal((await p.invoke('ms-docker')).text, '2m / 7200000', 'the previous version keeps serving')
})
