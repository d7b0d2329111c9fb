import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { CHART, CUSTOM, helm, render, valuesFile } from './chart.js'

// Issue 13: the chart passes the real helm's lint with its defaults and with a non-default install, and refuses bad
// values — at lint (values.schema.json) and at render (the schema, then the templates' `fail`) — saying what to change.

t.test('helm lint passes with the defaults and with values-custom.yaml (external Redis, 3 routers, own node roles, a token)', async (t) => {
  const plain = await helm('lint', CHART)
  t.equal(plain.code, 0, plain.stdout + plain.stderr)
  t.match(plain.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/)
  t.notMatch(plain.stdout, /\[(ERROR|WARNING)\]/, 'no error or warning')
  const custom = await helm('lint', CHART, '-f', CUSTOM)
  t.equal(custom.code, 0, custom.stdout + custom.stderr)
  t.notMatch(custom.stdout, /\[(ERROR|WARNING)\]/, 'no error or warning')
  const strict = await helm('lint', '--strict', CHART, '-f', CUSTOM)
  t.equal(strict.code, 0, `--strict too: ${strict.stdout}${strict.stderr}`)
})

t.test('Chart.yaml: apiVersion v2, appVersion = package.json\'s version; values.yaml comments every value', async (t) => {
  const chart = parse(await readFile(join(CHART, 'Chart.yaml'), 'utf8')) as { apiVersion: string; appVersion: string; name: string }
  const pkg = JSON.parse(await readFile('package.json', 'utf8')) as { version: string }
  t.equal(chart.apiVersion, 'v2')
  t.equal(chart.name, 'kindling')
  t.equal(chart.appVersion, pkg.version, 'appVersion follows package.json')
  const lines = (await readFile(join(CHART, 'values.yaml'), 'utf8')).split('\n')
  const uncommented: string[] = []
  // Every top-level value, and every map of the second level (controller.resources, nodes.runtime, ...).
  const values = lines.filter((l) => /^[A-Za-z]\w*:/.test(l) || /^  [A-Za-z]\w*:\s*$/.test(l))
  lines.forEach((line, i) => {
    if (values.includes(line) && !(lines[i - 1] ?? '').trimStart().startsWith('#')) uncommented.push(line)
  })
  t.ok(lines.filter((l) => /^[A-Za-z]\w*:/.test(l)).length >= 15, 'the top-level values were read')
  t.ok(values.length >= 25, `${values.length} values and maps read`)
  t.same(uncommented, [], 'a comment above every top-level value and every second-level map')
})

/** A bad values file fails both lint and template, each saying the same thing. */
async function refused(t: Test, file: string, message: RegExp): Promise<void> {
  const lint = await helm('lint', CHART, '-f', file)
  t.not(lint.code, 0, `lint fails on ${file}`)
  t.match(lint.stdout + lint.stderr, message, 'lint names the value')
  const tpl = await helm('template', 'kindling', CHART, '-f', file)
  t.not(tpl.code, 0, `template fails on ${file}`)
  t.match(tpl.stderr, message, 'template names the value')
  t.equal(tpl.stdout, '', 'and renders nothing')
}

t.test('the schema refuses replicas -1, a config key that is not KINDLING_*, and Redis disabled without externalUrl', async (t) => {
  await refused(t, valuesFile('bad-replicas'), /\/router\/replicas': minimum: got -1, want 1/)
  await refused(t, valuesFile('bad-config'), /'POOL_SIZE' does not match pattern '\^KINDLING_\[A-Z0-9_\]\+\$'/)
  await refused(t, valuesFile('bad-redis'), /\/redis\/externalUrl': minLength: got 0, want 1/)
  const wrongType = await helm('template', 'kindling', CHART, '--set', 'config.KINDLING_POOL_SIZE=4')
  t.not(wrongType.code, 0, 'a config value that is not a string')
  t.match(wrongType.stderr, /\/config\/KINDLING_POOL_SIZE': got number, want string/)
  const unknown = await helm('template', 'kindling', CHART, '--set', 'routers.replicas=3')
  t.not(unknown.code, 0, 'a misspelt value is refused, not ignored')
  t.match(unknown.stderr, /additional properties 'routers' not allowed/)
})

t.test('the templates\' `fail` says what the schema cannot (and catches Redis without a URL when the schema is skipped)', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['-f', valuesFile('bad-redis'), '--skip-schema-validation'], /redis\.enabled is false but redis\.externalUrl is empty: set redis\.externalUrl/],
    [['--set', 'redis.externalUrl=redis://r:6379'], /redis\.externalUrl is set while redis\.enabled is true/],
    [['--set', 'nodes.runtime.labels.pool=fn'], /nodes\.runtime\.labels must hold exactly one label \(it is KINDLING_KUBE_RUNTIME_NODES, key=value\)/],
    [['--set', 'nodes.quarantine.taint.value=jail'], /nodes\.quarantine\.taint must be kindling\.io\/node-role=quarantine:NoSchedule, the label of the role/],
    [['--set', 'nodes.runtime.taint.effect=NoExecute'], /nodes\.runtime\.taint must be kindling\.io\/node-role=runtime:NoSchedule/],
    [['--set', 'config.KINDLING_BACKEND=process'], /config\.KINDLING_BACKEND is set by the chart itself/],
  ]
  for (const [args, message] of cases) {
    const r = await helm('template', 'kindling', CHART, ...args)
    t.not(r.code, 0, `template ${args.join(' ')} fails`)
    t.match(r.stderr, message, args.join(' '))
  }
  const long = await helm('template', 'a-release-name-far-too-long-for-names', CHART)
  t.not(long.code, 0)
  t.match(long.stderr, /makes names longer than a Service name may be/)
})

t.test('what the values set reaches the rendered objects (a null drops a default label)', async (t) => {
  const objs = await render({ files: [CUSTOM] })
  const controller = objs.find((o) => o.kind === 'Deployment' && o.metadata.name === 'kindling-controller')!
  t.same(controller.spec.template.spec.nodeSelector, { 'pool.example.com/role': 'platform', 'topology.example.com/tier': 'control' }, 'the default kindling.io/node-role label is gone')
  t.equal(controller.spec.template.spec.containers[0].image, 'registry.example.com/kindling/platform:0.1.0-rc1')
  t.equal(controller.spec.template.spec.containers[0].imagePullPolicy, 'Always')
  t.same(controller.spec.template.spec.imagePullSecrets, [{ name: 'example-registry' }])
  t.equal(controller.spec.template.metadata.annotations['example.com/team'], 'functions')
  const defaults = await render()
  const plain = defaults.find((o) => o.kind === 'Deployment' && o.metadata.name === 'kindling-controller')!
  t.equal(plain.spec.template.spec.containers[0].image, 'kindling/platform:0.1.0', 'the tag defaults to appVersion')
  t.notOk('imagePullSecrets' in plain.spec.template.spec)
})

t.test('a config change rolls the pods: the checksum annotation follows the ConfigMap', async (t) => {
  const sum = async (setString: string[]): Promise<string[]> => (await render({ setString })).filter((o) => o.kind === 'Deployment' || o.kind === 'DaemonSet')
    .filter((o) => o.metadata.labels?.['app.kubernetes.io/component'] !== 'redis').map((o) => o.spec.template.metadata.annotations['checksum/config'] as string)
  const a = await sum([])
  const b = await sum([])
  const c = await sum(['config.KINDLING_POOL_SIZE=4'])
  t.equal(a.length, 3, 'controller, router, agent')
  t.ok(a.every((x) => /^[0-9a-f]{64}$/.test(x)))
  t.same(a, b, 'the same values, the same checksum')
  t.ok(c.every((x, i) => x !== a[i]), 'a changed config, a new checksum on every pod template')
  const secret = async (set: string[]): Promise<string> => (await render({ set })).find((o) => o.metadata.name === 'kindling-router' && o.kind === 'Deployment')!.spec.template.metadata.annotations['checksum/secret'] as string
  t.equal(await secret([]), await secret([]), 'generated tokens do not change the secret checksum between renders')
  t.not(await secret(['apiToken=another-token-0123456789']), await secret([]), 'a token set does')
})
