// Kindling's build step for the node runtime: installs a function's dependencies with npm, inside the build
// instance's sandbox (PROTOCOL.md §9). Plain ESM, no dependencies, imports nothing of the platform.
//
// The sandbox has no network but its own loopback. The one way out is the platform's registry proxy, a Unix
// socket in the build directory that lets through only the registry npm is configured with. npm speaks to
// proxies over TCP, so this script listens on 127.0.0.1 inside the sandbox and relays each connection to it.
//
// Environment (set by the backend):
//   KINDLING_BUILD_DIR       the build directory: app/ (package.json, maybe package-lock.json), tmp/, proxy.sock
//   KINDLING_BUILD_NPM       path of npm's npm-cli.js
//   KINDLING_BUILD_REGISTRY  the registry URL
//   KINDLING_BUILD_COMMAND   "ci" (a lockfile came with the code) or "install" (npm writes one)
import { spawn } from 'node:child_process'
import { createServer, connect } from 'node:net'
import { join } from 'node:path'

const env = process.env
const dir = env.KINDLING_BUILD_DIR
const npm = env.KINDLING_BUILD_NPM
const registry = env.KINDLING_BUILD_REGISTRY
const command = env.KINDLING_BUILD_COMMAND
if (!dir || !npm || !registry || (command !== 'ci' && command !== 'install')) {
  console.error('kindling build: KINDLING_BUILD_DIR, KINDLING_BUILD_NPM, KINDLING_BUILD_REGISTRY and KINDLING_BUILD_COMMAND (ci|install) are required')
  process.exit(2)
}
const tmp = join(dir, 'tmp')

const relay = createServer((client) => {
  const upstream = connect(join(dir, 'proxy.sock'))
  client.pipe(upstream).pipe(client)
  client.on('error', () => upstream.destroy())
  upstream.on('error', () => client.destroy())
})
relay.listen(0, '127.0.0.1', () => {
  const proxy = `http://127.0.0.1:${relay.address().port}`
  const args = [npm, command, '--omit=dev', '--no-audit', '--no-fund', '--foreground-scripts', '--loglevel=http']
  console.log(`kindling build: npm ${args.slice(1).join(' ')} (registry ${registry})`)
  const child = spawn(process.execPath, args, {
    cwd: join(dir, 'app'),
    stdio: ['ignore', 'inherit', 'inherit'],
    // Built from nothing: npm sees the registry, the proxy and its own cache in the build's tmp, and no
    // configuration of the host's users (their tokens stay where they are).
    env: {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: tmp,
      TMPDIR: tmp,
      npm_config_registry: registry,
      npm_config_proxy: proxy,
      npm_config_https_proxy: proxy,
      npm_config_noproxy: '',
      npm_config_cache: join(tmp, 'npm-cache'),
      npm_config_userconfig: join(tmp, 'npmrc'),
      npm_config_update_notifier: 'false',
      npm_config_progress: 'false',
      npm_config_color: 'false',
    },
  })
  child.once('error', (err) => {
    console.error(`kindling build: cannot run npm: ${err.message}`)
    process.exit(127)
  })
  child.once('exit', (code, signal) => {
    if (signal !== null) console.error(`kindling build: npm ended by ${signal}`)
    process.exit(code ?? 128)
  })
})
