import { existsSync } from 'node:fs'
import { chromium, type Browser, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startPlatform, type TestPlatform } from '../fixtures/platform.js'

// The dashboard at /ui (issue 14) in headless Chromium (Debian's, scripts/ensure-browser.sh): it shows a
// function deployed here, and its charts and pool view follow the calls the test sends.
const CHROMIUM = '/usr/bin/chromium'
const CODE = `export default async (event) => { console.log('served status', event.query.status ?? 200); return { status: Number(event.query.status ?? 200), body: 'hi' } }`

t.ok(existsSync('dist/ui/index.html'), 'the dashboard is built (npm run build / scripts/test.sh build it)')

let browser: Browser
t.before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'] })
})
t.teardown(() => browser?.close())

/** A page whose every request is recorded, to check that none leaves loopback. */
async function openPage(t: Test): Promise<{ page: Page; requests: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } })
  t.teardown(() => context.close())
  const page = await context.newPage()
  const requests: string[] = []
  page.on('request', (r) => requests.push(r.url()))
  return { page, requests }
}

function offLoopback(urls: string[]): string[] {
  return urls.filter((u) => {
    const url = new URL(u)
    if (url.protocol === 'data:' || url.protocol === 'blob:') return false
    return !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)
  })
}

const text = (page: Page, testId: string): Promise<string> => page.getByTestId(testId).innerText()

async function calls(p: TestPlatform, name: string, n: number, path = ''): Promise<void> {
  for (let i = 0; i < n; i++) await p.invoke(name, { path })
}

t.test('the dashboard shows a deployed function and follows its calls', async (t) => {
  const p = await startPlatform(t)
  t.equal((await p.deploy('dash', { runtime: 'node', code: CODE })).status, 201)
  const { page, requests } = await openPage(t)

  const res = await page.goto(`${p.url}/ui`)
  t.equal(res?.status(), 200, '/ui answers (redirected to /ui/)')
  t.equal(new URL(page.url()).pathname, '/ui/')
  await page.getByTestId('fn-row-dash').waitFor()
  t.match(await page.getByTestId('fn-row-dash').innerText(), /dash\s+v1\s+node\s+recycle/, 'name, version, runtime, mode')
  await page.getByTestId('function-panel').getByRole('heading', { name: /dash/ }).waitFor()
  t.equal(await text(page, 'calls-total'), '0', 'no calls yet')
  t.equal(await page.getByTestId('chart-calls').getAttribute('data-points'), '0', 'the call chart is flat')
  t.equal(await text(page, 'routed-dash'), '0', 'the router holds no instance of it yet')
  t.equal(await page.locator('[data-testid=chart-calls] canvas').count(), 1, 'uPlot drew a canvas')
  await page.getByTestId('pool-generic:node').waitFor()
  t.match(await page.getByTestId('starts').innerText(), /starts: \d+ running, \d+ waiting, limit \d+/)

  await calls(p, 'dash', 9)
  await calls(p, 'dash', 1, '?status=500')
  // The page polls every second: wait for what it shows, not for a time.
  await page.waitForFunction(() => document.querySelector('[data-testid=calls-total]')?.textContent === '10')
  t.pass('the call count follows the calls without a reload')
  await page.waitForFunction(() => document.querySelector('[data-testid=errors-total]')?.textContent === '1')
  t.pass('the function\'s 500 shows as an error')
  t.ok(Number(await page.getByTestId('chart-calls').getAttribute('data-points')) > 0, 'the call chart has points now')
  t.ok(Number(await page.getByTestId('chart-starts').getAttribute('data-points')) > 0, 'the start-kind chart has bars')
  t.ok(Number(await page.getByTestId('chart-latency').getAttribute('data-points')) > 0, 'the latency chart has points')
  t.ok(Number(await text(page, 'starts-warm')) >= 8, 'calls after the first are warm')
  t.match(await text(page, 'p50'), /^[\d.]+ ms$/)
  await page.waitForFunction(() => document.querySelector('[data-testid=routed-dash]')?.textContent === '1')
  t.pass('the pool view shows the instance the router now holds')
  t.match(await text(page, 'states-dash'), /\bleased 1\b/, 'and its state: leased to the router')
  await page.getByRole('region', { name: 'Load guard' }).waitFor()
  await page.getByRole('region', { name: 'Logs' }).getByText('served status 500').waitFor()
  t.pass('the logs tail shows what the function printed')
  await page.getByTestId('events').getByText('version 1 deployed').waitFor()
  t.pass('the deploy is among the events')

  if (process.env['KINDLING_UI_SCREENSHOT'] !== undefined) await page.screenshot({ path: process.env['KINDLING_UI_SCREENSHOT'], fullPage: true })
  t.same(offLoopback(requests), [], 'no request left loopback')
  t.ok(requests.some((u) => u.includes('/v1/stats')), 'the page read /v1/stats')
})

t.test('behind an API token: the page asks for it, then shows the data', async (t) => {
  const TOKEN = 'dash-token-123'
  const p = await startPlatform(t, { KINDLING_API_TOKEN: TOKEN })
  const put = await request(`${p.url}/v1/functions/secret`, {
    method: 'PUT', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ runtime: 'node', code: CODE }),
  })
  t.equal(put.statusCode, 201)
  await put.body.dump()
  const { page, requests } = await openPage(t)

  await page.goto(`${p.url}/ui/`)
  const dialog = page.getByRole('dialog', { name: 'API token' })
  await dialog.waitFor()
  t.equal(await page.getByTestId('fn-row-secret').count(), 0, 'nothing is shown without the token')

  await page.getByRole('textbox', { name: 'API token' }).fill('wrong')
  await page.getByRole('button', { name: 'Connect' }).click()
  await page.getByRole('alert').getByText('That token was refused.').waitFor()
  t.pass('a wrong token is refused')

  await page.getByRole('textbox', { name: 'API token' }).fill(TOKEN)
  await page.getByRole('button', { name: 'Connect' }).click()
  await page.getByTestId('fn-row-secret').waitFor()
  t.equal(await dialog.count(), 0, 'the prompt is gone')

  await page.reload()
  await page.getByTestId('fn-row-secret').waitFor()
  t.equal(await dialog.count(), 0, 'the token is kept for the tab: no prompt after a reload')
  t.same(offLoopback(requests), [], 'no request left loopback')
})

t.test('/ui/ files are public, the data is not', async (t) => {
  const p = await startPlatform(t, { KINDLING_API_TOKEN: 'x' })
  const page = await request(`${p.url}/ui/`)
  t.equal(page.statusCode, 200)
  t.match(await page.body.text(), /<div id="app">/)
  const data = await request(`${p.url}/v1/functions`)
  t.equal(data.statusCode, 401)
  await data.body.dump()
})
