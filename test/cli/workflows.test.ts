import { join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { cli, fakeApi, only } from '../fixtures/cli.js'

const ORDER_YAML = [
  'name: order',
  'startAt: Check',
  'states:',
  '  Check:',
  '    type: task',
  '    function: check-stock',
  '    next: Charge',
  '  Charge:',
  '    type: task',
  '    function: charge',
  '    end: true',
  '',
].join('\n')

const ORDER_BODY = {
  startAt: 'Check',
  states: { Check: { type: 'task', function: 'check-stock', next: 'Charge' }, Charge: { type: 'task', function: 'charge', end: true } },
}

const applied = (version: number, changed: boolean): Record<string, unknown> =>
  ({ name: 'order', version, digest: 'sha256:ab', createdAt: '2026-12-03T10:00:00.000Z', changed, definition: ORDER_BODY })

t.test('wf apply -f YAML PUTs the definition as JSON, named by its `name`, without the name in the body', async (t) => {
  const api = await fakeApi(t, () => ({ status: 201, body: applied(1, true) }))
  const dir = t.testdir({ 'order.yaml': ORDER_YAML })
  const r = await cli(['wf', 'apply', '-f', join(dir, 'order.yaml')], { KINDLING_URL: api.url, KINDLING_API_TOKEN: 'tok' })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'workflow order created (version 1)\n')
  t.equal(r.stderr, '')
  const req = only(api.requests)
  t.equal(req.method, 'PUT')
  t.equal(req.url, '/v1/workflows/order')
  t.match(req.headers['content-type'], /^application\/json/)
  t.equal(req.headers['authorization'], 'Bearer tok')
  t.strictSame(req.json, ORDER_BODY, 'the name is the path, not part of the body')
})

t.test('wf apply -f JSON --name NAME names the workflow instead of the file\'s name, and says updated', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, body: { ...applied(4, true), name: 'order-v2' } }))
  const dir = t.testdir({ 'order.json': JSON.stringify({ name: 'order', ...ORDER_BODY }) })
  const r = await cli(['wf', 'apply', '-f', join(dir, 'order.json'), '--name', 'order-v2'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'workflow order-v2 updated (version 4)\n')
  const req = only(api.requests)
  t.equal(req.url, '/v1/workflows/order-v2')
  t.strictSame(req.json, ORDER_BODY)
})

t.test('wf apply of a definition identical to the head says unchanged', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, body: applied(4, false) }))
  const dir = t.testdir({ 'order.yaml': ORDER_YAML })
  const r = await cli(['wf', 'apply', '-f', join(dir, 'order.yaml')], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'workflow order unchanged (version 4)\n')
})

t.test('wf apply of a file without a name and without --name is a usage error (exit 2), sent nowhere', async (t) => {
  const api = await fakeApi(t)
  const dir = t.testdir({ 'anon.yaml': 'startAt: A\nstates:\n  A: { type: pass, end: true }\n' })
  const r = await cli(['wf', 'apply', '-f', join(dir, 'anon.yaml')], { KINDLING_URL: api.url })
  t.equal(r.code, 2)
  t.equal(r.stdout, '')
  t.match(r.stderr, /^error: .*anon\.yaml has no top-level name: give one, or --name\n$/)
  t.equal(api.requests.length, 0)
})

t.test('wf apply reports a YAML syntax error at its line without calling the API', async (t) => {
  const api = await fakeApi(t)
  const dir = t.testdir({ 'bad.yaml': 'name: x\nstates:\n  A: [unclosed\n' })
  const r = await cli(['wf', 'apply', '-f', join(dir, 'bad.yaml')], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.match(r.stderr, /^error: .*bad\.yaml:\d+:\d+: /)
  t.equal(api.requests.length, 0)
})

t.test('a definition error names its state and field, and the line of the file they are on', async (t) => {
  const api = await fakeApi(t, () => ({
    status: 400,
    body: { statusCode: 400, code: 'KDL_ERR_WF_UNKNOWN_STATE', error: 'Bad Request', message: 'state "Check" goes to "Charge", which is not defined', state: 'Check', field: 'next' },
  }))
  const dir = t.testdir({ 'order.yaml': ORDER_YAML })
  const file = join(dir, 'order.yaml')
  const r = await cli(['wf', 'apply', '-f', file], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, `error KDL_ERR_WF_UNKNOWN_STATE: state "Check" goes to "Charge", which is not defined (state "Check", field "next", ${file}:7)\n`)
})

t.test('a bad expression names its position; a field the file lacks points at the state', async (t) => {
  const api = await fakeApi(t, () => ({
    status: 400,
    body: { code: 'KDL_ERR_WF_BAD_EXPRESSION', message: 'expected ")"', state: 'Charge', field: 'parameters.amount', position: 7 },
  }))
  const dir = t.testdir({ 'order.yaml': ORDER_YAML })
  const file = join(dir, 'order.yaml')
  const r = await cli(['wf', 'apply', '-f', file], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stderr, `error KDL_ERR_WF_BAD_EXPRESSION: expected ")" (state "Charge", field "parameters.amount", position 7, ${file}:8)\n`)
})

t.test('an error without state or field prints as every other API error', async (t) => {
  const api = await fakeApi(t, () => ({ status: 404, body: { code: 'KDL_ERR_WF_NOT_FOUND', message: 'workflow "nope" is not defined' } }))
  const r = await cli(['wf', 'get', 'nope'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stderr, 'error KDL_ERR_WF_NOT_FOUND: workflow "nope" is not defined\n')
})

t.test('wf list prints NAME VERSION STATES CREATED; `workflows` is the same group', async (t) => {
  const api = await fakeApi(t, () => ({
    body: { workflows: [
      { name: 'order', version: 4, createdAt: '2026-12-03T10:00:00.000Z', states: 2 },
      { name: 'nightly-report', version: 1, createdAt: '2026-12-01T03:00:00.000Z', states: 11 },
    ] },
  }))
  const r = await cli(['workflows', 'list'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/workflows')
  t.equal(r.stdout, [
    'NAME            VERSION  STATES  CREATED',
    'order           4        2       2026-12-03T10:00:00.000Z',
    'nightly-report  1        11      2026-12-01T03:00:00.000Z',
    '',
  ].join('\n'))
})

t.test('wf get prints the definition as YAML that names it; --version asks for one; --json the answer', async (t) => {
  const answer = { name: 'order', version: 2, digest: 'sha256:ab', createdAt: '2026-12-03T10:00:00.000Z', definition: ORDER_BODY }
  const api = await fakeApi(t, () => ({ body: answer }))
  const r = await cli(['wf', 'get', 'order', '--version', '2'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/workflows/order?version=2')
  t.match(r.stdout, /^# version 2, created 2026-12-03T10:00:00\.000Z, digest sha256:ab\nname: order\n/)
  t.strictSame(parse(r.stdout), { name: 'order', ...ORDER_BODY }, 'what wf apply -f takes back')
  const j = await cli(['wf', 'get', 'order', '--json'], { KINDLING_URL: api.url })
  t.equal(api.requests[1]?.url, '/v1/workflows/order')
  t.strictSame(JSON.parse(j.stdout), answer)
})

t.test('wf delete sends DELETE /v1/workflows/NAME', async (t) => {
  const api = await fakeApi(t, () => ({ body: { deleted: 'order' } }))
  const r = await cli(['wf', 'delete', 'order'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  const req = only(api.requests)
  t.equal(req.method, 'DELETE')
  t.equal(req.url, '/v1/workflows/order')
  t.equal(r.stdout, 'workflow order deleted\n')
})

t.test('wf run waits for the run and prints its output as indented JSON (exit 0)', async (t) => {
  const output = { charged: 42, items: [1, 2] }
  const api = await fakeApi(t, () => ({ status: 200, headers: { 'x-kindling-run-id': 'r-1', 'x-kindling-run-status': 'succeeded' }, body: output }))
  const r = await cli(['wf', 'run', 'order', '-d', '{"cart":7}', '--wait', '5000'], { KINDLING_URL: api.url, KINDLING_API_TOKEN: 'tok' })
  t.equal(r.code, 0)
  t.equal(r.stdout, JSON.stringify(output, null, 2) + '\n')
  t.equal(r.stderr, '')
  const req = only(api.requests)
  t.equal(req.method, 'POST')
  t.equal(req.url, '/wf/order?wait=5000')
  t.match(req.headers['content-type'], /^application\/json/)
  t.strictSame(req.json, { cart: 7 })
})

t.test('wf run sends {} without -d, and a file\'s JSON with -d @file', async (t) => {
  const api = await fakeApi(t, () => ({ status: 200, headers: { 'x-kindling-run-id': 'r-1' }, body: null }))
  const dir = t.testdir({ 'in.json': '{"from":"file"}\n' })
  await cli(['wf', 'run', 'order'], { KINDLING_URL: api.url })
  await cli(['wf', 'run', 'order', '-d', `@${join(dir, 'in.json')}`], { KINDLING_URL: api.url })
  t.equal(api.requests[0]?.url, '/wf/order')
  t.strictSame(api.requests[0]?.json, {})
  t.strictSame(api.requests[1]?.json, { from: 'file' })
})

t.test('wf run -d that is not JSON is a usage error (exit 2), sent nowhere', async (t) => {
  const api = await fakeApi(t)
  const r = await cli(['wf', 'run', 'order', '-d', 'cart=7'], { KINDLING_URL: api.url })
  t.equal(r.code, 2)
  t.match(r.stderr, /^error: -d value is not JSON: /)
  t.equal(api.requests.length, 0)
})

t.test('wf run --async prints the run id and how to follow it (exit 0)', async (t) => {
  const api = await fakeApi(t, () => ({ status: 202, headers: { 'x-kindling-run-id': 'r-2' }, body: { id: 'r-2', workflow: 'order', status: 'running', location: '/v1/runs/r-2' } }))
  const r = await cli(['wf', 'run', 'order', '--async'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/wf/order?async=true')
  t.equal(r.stdout, 'run r-2 started\nfollow it: kindling wf show r-2\n')
  t.equal(r.stderr, '')
})

t.test('wf run whose wait ran out (202) prints the id too, and says the run goes on', async (t) => {
  const api = await fakeApi(t, () => ({ status: 202, body: { id: 'r-3', workflow: 'order', status: 'running', location: '/v1/runs/r-3' } }))
  const r = await cli(['wf', 'run', 'order', '--wait', '10'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(r.stdout, 'run r-3 started\nfollow it: kindling wf show r-3\n')
  t.equal(r.stderr, 'the run goes on: it did not end within the wait\n')
})

t.test('wf run of a run that fails prints "run ID failed: ERROR: CAUSE" on stderr and exits 1', async (t) => {
  const api = await fakeApi(t, () => ({
    status: 500, headers: { 'x-kindling-run-id': 'r-4' },
    body: { code: 'KDL_ERR_WF_RUN_FAILED', message: 'run r-4 failed', run: 'r-4', error: 'KDL_ERR_FN_TIMEOUT', cause: 'charge exceeded 30000 ms' },
  }))
  const r = await cli(['wf', 'run', 'order'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, 'run r-4 failed: KDL_ERR_FN_TIMEOUT: charge exceeded 30000 ms\n')
})

t.test('wf run of a run that is cancelled exits 1', async (t) => {
  const api = await fakeApi(t, () => ({ status: 409, headers: { 'x-kindling-run-id': 'r-5' }, body: { code: 'KDL_ERR_WF_RUN_CANCELLED', message: 'run r-5 was cancelled', run: 'r-5' } }))
  const r = await cli(['wf', 'run', 'order'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, 'run r-5 cancelled\n')
})

t.test('wf runs prints ID STATUS VERSION STARTED DURATION ERROR and names the next page', async (t) => {
  const api = await fakeApi(t, () => ({
    body: {
      runs: [
        { id: 'r-9', workflow: 'order', version: 4, status: 'running', startedAt: '2026-12-03T10:05:00.000Z', cancelRequested: true },
        { id: 'r-8', workflow: 'order', version: 4, status: 'failed', startedAt: '2026-12-03T10:00:00.000Z', endedAt: '2026-12-03T10:00:12.345Z', error: { error: 'KDL_ERR_FN_FAILED', cause: 'card declined' } },
        { id: 'r-7', workflow: 'order', version: 3, status: 'succeeded', startedAt: '2026-12-03T09:00:00.000Z', endedAt: '2026-12-03T09:00:00.250Z', output: { ok: true } },
        { id: 'r-6', workflow: 'order', version: 3, status: 'succeeded', startedAt: '2026-12-03T08:00:00.000Z', endedAt: '2026-12-03T08:04:05.000Z' },
      ],
      next: 'r-6',
    },
  }))
  const r = await cli(['wf', 'runs', 'order', '--limit', '4', '--status', 'failed'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/workflows/order/runs?limit=4&status=failed')
  t.equal(r.stdout, [
    'ID   STATUS                VERSION  STARTED                   DURATION  ERROR',
    'r-9  running (cancelling)  4        2026-12-03T10:05:00.000Z  -         -',
    'r-8  failed                4        2026-12-03T10:00:00.000Z  12.3 s    KDL_ERR_FN_FAILED: card declined',
    'r-7  succeeded             3        2026-12-03T09:00:00.000Z  250 ms    -',
    'r-6  succeeded             3        2026-12-03T08:00:00.000Z  4m05s     -',
    '',
  ].join('\n'))
  t.equal(r.stderr, 'more: kindling wf runs order --status failed --limit 4 --before r-6\n')
})

t.test('wf runs --status takes only a run status', async (t) => {
  const api = await fakeApi(t)
  const r = await cli(['wf', 'runs', 'order', '--status', 'done'], { KINDLING_URL: api.url })
  t.equal(r.code, 2)
  t.match(r.stderr, /Allowed choices are running, succeeded, failed, cancelled/)
  t.equal(api.requests.length, 0)
})

t.test('wf show prints the run, then its steps indented by depth, with errors and cut outputs in DETAIL', async (t) => {
  const long = { receipt: 'x'.repeat(100) }
  const api = await fakeApi(t, () => ({
    body: {
      id: 'r-8', workflow: 'order', version: 4, status: 'failed',
      startedAt: '2026-12-03T10:00:00.000Z', endedAt: '2026-12-03T10:00:01.500Z',
      error: { error: 'KDL_ERR_FN_FAILED', cause: 'card declined' },
      steps: [
        { id: 'Check', state: 'Check', type: 'task', status: 'succeeded', input: { cart: 7 }, output: { inStock: true }, attempts: 1, startedAt: 'a', endedAt: 'b', ms: 12 },
        { id: 'Items', state: 'Items', type: 'map', status: 'failed', attempts: 1, startedAt: 'a', error: { error: 'KDL_ERR_FN_FAILED', cause: 'card declined' } },
        { id: 'Items[0]/Charge', state: 'Charge', type: 'task', status: 'succeeded', output: long, attempts: 1, startedAt: 'a', ms: 80 },
        { id: 'Items[1]/Charge', state: 'Charge', type: 'task', status: 'failed', attempts: 3, startedAt: 'a', ms: 950, error: { error: 'KDL_ERR_FN_FAILED', cause: 'card\ndeclined' } },
        { id: 'Items[1]/Both#0/Pick', state: 'Pick', type: 'pass', status: 'cancelled', attempts: 0, startedAt: 'a' },
        { id: 'Poll@3', state: 'Poll', type: 'wait', status: 'waiting', attempts: 1, startedAt: 'a' },
      ],
    },
  }))
  const r = await cli(['wf', 'show', 'r-8'], { KINDLING_URL: api.url })
  t.equal(r.code, 0)
  t.equal(only(api.requests).url, '/v1/runs/r-8')
  const cut = JSON.stringify(long).slice(0, 59) + '…'
  t.equal(cut.length, 60)
  t.equal(r.stdout, [
    'run      r-8',
    'workflow order@4',
    'status   failed',
    'started  2026-12-03T10:00:00.000Z',
    'ended    2026-12-03T10:00:01.500Z (1.5 s)',
    'error    KDL_ERR_FN_FAILED: card declined',
    '',
    'STEP                      TYPE  STATUS     ATTEMPTS  MS   DETAIL',
    'Check                     task  succeeded  1         12   {"inStock":true}',
    'Items                     map   failed     1         -    KDL_ERR_FN_FAILED: card declined',
    '  Items[0]/Charge         task  succeeded  1         80   ' + cut,
    '  Items[1]/Charge         task  failed     3         950  KDL_ERR_FN_FAILED: card declined',
    '    Items[1]/Both#0/Pick  pass  cancelled  0         -    -',
    'Poll@3                    wait  waiting    1         -    -',
    '',
  ].join('\n'))
})

t.test('wf show of a succeeded run prints its output; --json prints the answer', async (t) => {
  const run = { id: 'r-7', workflow: 'order', version: 3, status: 'succeeded', startedAt: '2026-12-03T09:00:00.000Z', endedAt: '2026-12-03T09:00:00.250Z', output: { ok: true }, steps: [] }
  const api = await fakeApi(t, () => ({ body: run }))
  const r = await cli(['wf', 'show', 'r-7'], { KINDLING_URL: api.url })
  t.match(r.stdout, /\nended    2026-12-03T09:00:00\.250Z \(250 ms\)\noutput   \{"ok":true\}\n\nno steps yet\n$/)
  const j = await cli(['wf', 'show', 'r-7', '--json'], { KINDLING_URL: api.url })
  t.strictSame(JSON.parse(j.stdout), run)
})

t.test('wf cancel says cancelled, or cancelling while the run has yet to stop', async (t) => {
  let answer: Record<string, unknown> = { id: 'r-9', workflow: 'order', version: 4, status: 'cancelled', startedAt: 'a', endedAt: 'b' }
  const api = await fakeApi(t, () => ({ body: answer }))
  const done = await cli(['wf', 'cancel', 'r-9'], { KINDLING_URL: api.url })
  t.equal(done.code, 0)
  t.equal(done.stdout, 'run r-9 cancelled\n')
  t.equal(api.requests[0]?.method, 'POST')
  t.equal(api.requests[0]?.url, '/v1/runs/r-9/cancel')
  answer = { id: 'r-9', workflow: 'order', version: 4, status: 'running', startedAt: 'a', cancelRequested: true }
  const asked = await cli(['wf', 'cancel', 'r-9'], { KINDLING_URL: api.url })
  t.equal(asked.code, 0)
  t.equal(asked.stdout, 'run r-9 cancelling\n')
})

t.test('wf cancel of a finished run prints KDL_ERR_WF_RUN_FINISHED and exits 1', async (t) => {
  const api = await fakeApi(t, () => ({ status: 409, body: { statusCode: 409, code: 'KDL_ERR_WF_RUN_FINISHED', error: 'Conflict', message: 'run r-7 has already succeeded' } }))
  const r = await cli(['wf', 'cancel', 'r-7'], { KINDLING_URL: api.url })
  t.equal(r.code, 1)
  t.equal(r.stdout, '')
  t.equal(r.stderr, 'error KDL_ERR_WF_RUN_FINISHED: run r-7 has already succeeded\n')
})
