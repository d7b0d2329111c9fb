// Kindling Node runtime server: one process is one instance. It starts generic, is loaded with one function
// and then runs its handler once per request. The contract is ../PROTOCOL.md; this file implements it on a
// bare `node` (>= 20.19) with no dependencies and no platform imports, because it is copied into images.
//
// Kept lean on purpose: besides node:http, only modules Node has loaded at start-up anyway are imported
// here; what loads, reloads and failures need is fetched when first needed.
import { createServer } from 'node:http'
import { lstatSync, realpath, renameSync, stat, unlinkSync } from 'node:fs'
import { isAbsolute, join, relative, resolve as resolvePath, sep } from 'node:path'
import { pathToFileURL } from 'node:url'

const INVOCATION_ID = 'x-kindling-invocation-id'
const DEADLINE_MS = 'x-kindling-deadline-ms'
const RETIRE = 'x-kindling-retire'
const WARMUP = 'x-kindling-warmup'
const MAX_CONTROL_BODY = 1 << 20
const SELF_DIR = new URL('./', import.meta.url).href

const TEXT = ['content-type', 'text/plain; charset=utf-8']
const JSON_TYPE = ['content-type', 'application/json; charset=utf-8']
const OCTETS = ['content-type', 'application/octet-stream']
const FN_ERROR = ['content-type', 'application/json; charset=utf-8', 'x-kindling-error', 'handled']

/** Started ahead of its use (a pool refill): warm the request path once listening (see warmUp). */
const WARM_AT_START = process.env.KINDLING_WARMUP === '1'
delete process.env.KINDLING_WARMUP
/** Where POST /_/fetch unpacks code (Kubernetes: the pod's emptyDir at /code); null: this instance does not fetch. */
const CODE_ROOT = process.env.KINDLING_CODE_DIR !== undefined && isAbsolute(process.env.KINDLING_CODE_DIR) ? resolvePath(process.env.KINDLING_CODE_DIR) : null
delete process.env.KINDLING_CODE_DIR
/**
 * The code server's origin (`http://host:port`), when the pod spec names it: a fetch from anywhere else is refused,
 * so whoever else can reach a generic pod's control port cannot have it download code of their choosing.
 */
const CODE_ORIGIN = originOf(process.env.KINDLING_CODE_ORIGIN)
delete process.env.KINDLING_CODE_ORIGIN
/** The environment the server started with; each load sets process.env to this plus the function's env. */
const baseEnv = { ...process.env }

// --- instance state -------------------------------------------------------------------------------------
/** Function the instance is bound to from its first load attempt on (it never serves another one). */
let boundFn = null
/** Function and version currently loaded; the handler is null when generic. */
let fnName = null
let fnVersion = null
let handler = null
/** Real path of the code directory of the last load attempt (require.cache entries under it are dropped). */
let codeDir = null
let loading = false
/** The code fetch in progress: `{ sha256, promise }` (a second fetch of the same code shares it). */
let fetching = null
let loads = 0
let invocations = 0
let inflight = 0
/**
 * The invocation console output belongs to: the one call in flight, when exactly one is (with several, a line
 * cannot be told apart without async context tracking, which would tax every call — it goes untagged).
 */
let currentInv
let terminating = false
/** Whether function code was ever imported: later loads need fresh module URLs (see loader-hooks.mjs). */
let imported = false
let generation = 0
/** Shared with the loader hooks once registered: the generation of the load in progress. */
let generationView = null

// --- recycle mode: every call on a freshly evaluated copy of the function ------------------------------
// The copy a call ran on takes no new call once that call has ended ("spent"): as soon as no call runs
// on it, the server evaluates the next copy itself — no round trip to the platform — and calls that
// arrived meanwhile wait here for it. A caller that leaves any gap between calls (more than the few
// milliseconds an evaluation takes) never waits; one that sends back to back waits for the evaluation.
/** What a reload evaluates again (the last successful load), or null outside recycle mode. */
let recycleSpec = null
let spent = false
let reloading = false
/** Why no fresh copy can be made any more (its reload failed twice): every call is then refused unrun. */
let exhausted = null
/** Invocations waiting for the fresh copy: [req, res, url, body]. */
const held = []

// --- invocations (the hot path) -------------------------------------------------------------------------

function onRequest(req, res) {
  const url = req.url
  if (req.headers[INVOCATION_ID] === undefined && url.startsWith('/_/') && control(req, res, url)) return
  if (warmToken !== null && req.headers[WARMUP] === warmToken) return warmCall(req, res, url)
  const fn = handler
  if (fn === null) {
    sendJson(res, 503, { code: 'KDL_ERR_INTERNAL', message: 'no function loaded' })
    return
  }
  const headers = req.headers
  const length = headers['content-length']
  if ((length === undefined || length === '0') && headers['transfer-encoding'] === undefined) {
    if (recycleSpec === null) invoke(fn, req, res, url, '')
    else runFresh(req, res, url, '')
    return
  }
  let body = ''
  req.setEncoding('utf8')
  req.on('data', (chunk) => {
    body += chunk
  })
  req.on('end', () => {
    if (recycleSpec === null) invoke(fn, req, res, url, body)
    else runFresh(req, res, url, body)
  })
}

/** Recycle mode: runs the call on the current copy unless a call of it has ended (then it waits). */
function runFresh(req, res, url, body) {
  if (exhausted !== null) return refuseUnrun(res)
  if (spent) {
    held.push([req, res, url, body])
    return
  }
  invoke(handler, req, res, url, body)
}

/** A call the instance can no longer run: it did not run, so the platform may send it elsewhere. */
function refuseUnrun(res) {
  const body = JSON.stringify({ code: 'KDL_ERR_LOAD_FAILED', message: `a fresh copy of ${fnName} no longer loads in this instance: ${exhausted}` })
  res.writeHead(503, [...JSON_TYPE, RETIRE, 'unrun', 'content-length', Buffer.byteLength(body)])
  res.end(body)
}

function invoke(fn, req, res, rawUrl, body) {
  invocations++
  const headers = req.headers
  const invocationId = headers[INVOCATION_ID]
  currentInv = ++inflight === 1 ? invocationId : undefined
  const url = rawUrl.charCodeAt(0) === 47 ? rawUrl : absoluteFormPath(rawUrl)
  const q = url.indexOf('?')
  const contentType = headers['content-type']
  const event = {
    method: req.method,
    path: q === -1 ? url : url.slice(0, q),
    query: q === -1 ? {} : parseQuery(url.slice(q + 1)),
    headers,
    body,
    json: body !== '' && contentType !== undefined && contentType.includes('json') ? parseJson(body) : undefined,
  }
  const deadline = headers[DEADLINE_MS]
  const deadlineMs = deadline === undefined ? undefined : Number(deadline)
  const name = fnName
  const context = {
    function: name,
    version: fnVersion,
    invocationId,
    deadlineMs: Number.isFinite(deadlineMs) ? deadlineMs : undefined,
    log: (...args) => writeLog('info', name, invocationId, args),
  }
  let result
  try {
    result = fn(event, context)
  } catch (err) {
    fail(res, err, context)
    return
  }
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    try {
      result.then(
        (value) => reply(res, value, context),
        (err) => fail(res, err, context),
      )
    } catch (err) {
      fail(res, err, context)
    }
  } else {
    reply(res, result, context)
  }
}

function reply(res, value, context) {
  try {
    if (value === undefined) {
      res.writeHead(204)
      res.end()
    } else if (typeof value === 'string') {
      send(res, 200, TEXT, value)
    } else if (value instanceof Uint8Array) {
      send(res, 200, OCTETS, value)
    } else if (typeof value === 'object' && value !== null && (typeof value.status === 'number' || typeof value.statusCode === 'number')) {
      replyShaped(res, value)
    } else {
      const json = JSON.stringify(value)
      if (json === undefined) throw new TypeError(`handler returned a ${typeof value}, which has no JSON form`)
      send(res, 200, JSON_TYPE, json)
    }
  } catch (err) {
    fail(res, err, context)
    return
  }
  done(res)
}

/** `{status | statusCode, headers?, body?}`: strings and bytes go as they are, other bodies as JSON. */
function replyShaped(res, value) {
  const status = typeof value.status === 'number' ? value.status : value.statusCode
  const headers = value.headers
  let body = value.body
  let type = null
  if (body === undefined || body === null) body = undefined
  else if (typeof body === 'string') type = TEXT
  else if (body instanceof Uint8Array) type = OCTETS
  else {
    body = JSON.stringify(body)
    type = JSON_TYPE
  }
  if (headers === undefined || headers === null) {
    if (type === null) res.writeHead(status)
    else send(res, status, type, body)
  } else {
    if (type !== null && !hasContentType(headers)) res.setHeader(type[0], type[1])
    if (body !== undefined && !hasHeader(headers, 'content-length') && !hasHeader(headers, 'transfer-encoding')) {
      res.setHeader('content-length', typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength)
    }
    res.writeHead(status, headers)
  }
  if (!res.writableEnded) res.end(body)
}

function hasHeader(headers, name) {
  for (const key in headers) if (key.length === name.length && key.toLowerCase() === name) return true
  return false
}

function hasContentType(headers) {
  for (const key in headers) if (key.length === 12 && key.toLowerCase() === 'content-type') return true
  return false
}

function fail(res, err, context) {
  const isError = typeof err === 'object' && err !== null && typeof err.message === 'string'
  const message = isError ? err.message : describe(err)
  const stack = isError && typeof err.stack === 'string' ? err.stack : undefined
  // The thrown error's class (`class OutOfStock extends Error`, or a set `name`): a workflow's retry/catch matches on it.
  const name = !isError ? undefined : typeof err.name === 'string' && err.name !== 'Error' && err.name !== '' ? err.name : err.constructor?.name
  writeLog('error', context.function, context.invocationId, [stack ?? message])
  if (res.headersSent) {
    res.destroy()
  } else {
    for (const header of res.getHeaderNames()) res.removeHeader(header)
    send(res, 500, FN_ERROR, JSON.stringify({ code: 'KDL_ERR_FN_ERROR', name, message, stack }))
  }
  done(res)
}

function done(res) {
  if (recycleSpec !== null && res[WARM] !== true) spent = true
  if (--inflight === 0) {
    currentInv = undefined
    if (terminating) {
      if (res.writableFinished) exitNow()
      else res.once('finish', exitNow).once('close', exitNow)
    } else if (spent && !reloading && recycleSpec !== null) {
      reload(0)
    }
  }
}

/**
 * Recycle mode: evaluates the next copy once no call runs on the spent one (so nothing of a call can
 * see it happen: the environment and require.cache change only between calls), then lets the calls
 * that waited for it run. A copy that fails to load is tried once more (code that fails now and then);
 * after that the instance is exhausted and refuses every call unrun, for the platform to retire it.
 */
function reload(failures) {
  reloading = true
  const spec = recycleSpec
  dropCode()
  setEnv(spec.env)
  importHandler(spec.entryFile, spec.exportName).then((fn) => {
    if (recycleSpec !== spec) return
    if (typeof fn !== 'function') throw new TypeError(`${spec.file} has no handler any more`)
    handler = fn
    loads++
    reloading = false
    spent = false
    for (const [req, res, url, body] of held.splice(0)) runFresh(req, res, url, body)
  }).catch((err) => {
    if (recycleSpec !== spec) return
    dropCode()
    setEnv(spec.env)
    if (failures === 0) return reload(1)
    reloading = false
    exhausted = describe(err?.message ?? err)
    writeLog('error', fnName, undefined, [`a fresh copy failed to load twice; the instance refuses further calls: ${err?.stack ?? exhausted}`])
    for (const [, res] of held.splice(0)) refuseUnrun(res)
  })
}

/** One JSON line on stdout: `{t, level, fn, inv, msg}` (context.log, and handler failures). */
function writeLog(level, fn, inv, args) {
  let msg
  if (args.length === 1 && typeof args[0] === 'string') msg = args[0]
  else msg = util().format(...args)
  stdout().write(`${JSON.stringify({ t: Date.now(), level, fn, inv, msg })}\n`)
}

/**
 * console.log/info/debug/warn/error of the function's code, as the same JSON lines as context.log: with its
 * level, and with the invocation when one call is in flight (see currentInv). Other console methods and
 * direct writes to process.stdout/stderr reach the platform as plain lines of their stream.
 */
function tagConsole() {
  const levels = { log: 'info', info: 'info', debug: 'debug', warn: 'warn', error: 'error' }
  for (const method of Object.keys(levels)) {
    const level = levels[method]
    console[method] = (...args) => writeLog(level, fnName ?? boundFn, currentInv, args)
  }
}

let stdoutStream = null
/** process.stdout, created on first use (it costs memory); a reader that went away must not kill the instance. */
function stdout() {
  if (stdoutStream === null) {
    stdoutStream = process.stdout
    stdoutStream.on('error', () => {})
  }
  return stdoutStream
}

function parseQuery(qs) {
  const out = {}
  let start = 0
  while (start < qs.length) {
    let end = qs.indexOf('&', start)
    if (end === -1) end = qs.length
    if (end > start) {
      const eq = qs.indexOf('=', start)
      const hasValue = eq !== -1 && eq < end
      const key = decode(qs.slice(start, hasValue ? eq : end))
      const value = hasValue ? decode(qs.slice(eq + 1, end)) : ''
      if (!Object.hasOwn(out, key)) {
        if (key === '__proto__') Object.defineProperty(out, key, { value, writable: true, enumerable: true, configurable: true })
        else out[key] = value
      } else {
        const prev = out[key]
        if (Array.isArray(prev)) prev.push(value)
        else out[key] = [prev, value]
      }
    }
    start = end + 1
  }
  return out
}

function decode(s) {
  if (s.includes('+')) s = s.replaceAll('+', ' ')
  if (!s.includes('%')) return s
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}

function parseJson(body) {
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}

/** `http://host/p?q` (a proxy-style request target) → `/p?q`. */
function absoluteFormPath(target) {
  try {
    const u = new URL(target)
    return u.pathname + u.search
  } catch {
    return target
  }
}

// --- warm-up: the server's own request path, compiled before the first call ---------------------------
// A prewarmed instance has time before its first call; node's first requests are slow (lazy compilation,
// cold inline caches in the HTTP parser, in this file's invoke/reply path). After a load made ahead of its
// calls, the server sends itself a few requests of every shape over its own listener, answered by a
// built-in handler — never the function's code, and never counted as invocations.
const WARM = Symbol('kindling.warm')
/** Token the warm-up requests carry while they run (null otherwise: the check costs a calls nothing). */
let warmToken = null
/** Warm-up runs completed (GET /_/health). */
let warmups = 0

function warmCall(req, res, url) {
  res[WARM] = true
  const length = req.headers['content-length']
  if (length === undefined || length === '0') return invoke(warmHandler, req, res, url, '')
  let body = ''
  req.setEncoding('utf8')
  req.on('data', (chunk) => { body += chunk })
  req.on('end', () => invoke(warmHandler, req, res, url, body))
}

function warmHandler(event) {
  invocations--
  switch (event.query.shape) {
    case 'text': return 'ok'
    case 'none': return undefined
    case 'shaped': return { status: 201, headers: { 'x-warm': '1' }, body: { ok: true } }
    case 'bytes': return new Uint8Array(8)
    case 'async': return Promise.resolve({ ok: event.json?.n ?? 0 })
    default: return { ok: true, path: event.path }
  }
}

const WARM_SHAPES = ['json', 'text', 'none', 'shaped', 'bytes', 'async']

/** Sends the warm-up requests, one connection, one after another; failures are ignored (it is only warm-up). */
function warmUp(rounds = 4) {
  if (warmToken !== null || terminating) return
  const http = process.getBuiltinModule('node:http')
  warmToken = Math.random().toString(36).slice(2)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  const target = socketPath !== null ? { socketPath } : { host: '127.0.0.1', port: server.address()?.port }
  let left = rounds * WARM_SHAPES.length
  const finish = (ok) => {
    warmToken = null
    agent.destroy()
    if (ok === true) warmups++
  }
  const next = () => {
    if (terminating) return finish(false)
    if (left-- <= 0) return finish(true)
    const shape = WARM_SHAPES[left % WARM_SHAPES.length]
    const post = shape === 'async'
    const body = post ? JSON.stringify({ n: left }) : undefined
    const req = http.request({
      ...target, agent, method: post ? 'POST' : 'GET', path: `/warm/${left}?shape=${shape}&a=1&b=%20`,
      headers: { [WARMUP]: warmToken, [INVOCATION_ID]: `warmup-${left}`, ...(post ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {}) },
    }, (res) => {
      res.resume()
      res.on('end', next)
    })
    req.on('error', () => finish(false))
    req.end(body)
  }
  next()
}

// --- control requests -------------------------------------------------------------------------------------

/** Answers GET /_/health, POST /_/fetch, POST /_/load, POST /_/unload; false for anything else (an invocation). */
function control(req, res, url) {
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  const method = req.method
  if (path === '/_/health' && method === 'GET') {
    sendJson(res, 200, {
      state: handler === null ? 'generic' : 'loaded',
      function: handler === null ? null : fnName,
      version: handler === null ? null : fnVersion,
      pid: process.pid,
      loads,
      invocations,
      inflight,
      warmups,
    })
    return true
  }
  if (path === '/_/load' && method === 'POST') {
    readJson(req, res, load)
    return true
  }
  if (path === '/_/fetch' && method === 'POST') {
    readJson(req, res, fetchCode)
    return true
  }
  if (path === '/_/unload' && method === 'POST') {
    req.resume()
    unload(res)
    return true
  }
  return false
}

function readJson(req, res, then) {
  let body = ''
  let size = 0
  req.setEncoding('utf8')
  req.on('data', (chunk) => {
    size += chunk.length
    if (size <= MAX_CONTROL_BODY) body += chunk
  })
  req.on('end', () => {
    if (size > MAX_CONTROL_BODY) {
      sendJson(res, 413, { code: 'KDL_ERR_PAYLOAD_TOO_LARGE', message: `control request body exceeds ${MAX_CONTROL_BODY} bytes` })
      return
    }
    let value
    try {
      value = JSON.parse(body)
    } catch {
      sendJson(res, 400, { code: 'KDL_ERR_BAD_REQUEST', message: 'body is not JSON' })
      return
    }
    then(value, res).catch((err) => {
      sendJson(res, 500, { code: 'KDL_ERR_INTERNAL', message: describe(err), stack: err?.stack })
    })
  })
}

/** Validated `{codeDir, file, exportName, function, version, env}` of a load request, or a message. */
function parseLoad(spec) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) return 'body must be a JSON object'
  const { codeDir: dir, entrypoint, function: name, version, env } = spec
  if (typeof dir !== 'string' || !isAbsolute(dir)) return 'codeDir must be an absolute path'
  if (typeof name !== 'string' || name === '') return 'function must be a non-empty string'
  if (version !== undefined && version !== null && typeof version !== 'string' && typeof version !== 'number') {
    return 'version must be a string'
  }
  if (typeof entrypoint !== 'string' || entrypoint === '') return 'entrypoint must be a non-empty string'
  const colon = entrypoint.lastIndexOf(':')
  const file = colon === -1 ? entrypoint : entrypoint.slice(0, colon)
  const exportName = colon === -1 ? null : entrypoint.slice(colon + 1)
  if (file === '' || exportName === '') return 'entrypoint must be "file.js" or "file.js:exportName"'
  if (isAbsolute(file) || file.startsWith('\\') || file.split(/[\\/]/).includes('..')) {
    return 'entrypoint must be a path inside codeDir (no absolute path, no "..")'
  }
  if (env !== undefined && env !== null) {
    if (typeof env !== 'object' || Array.isArray(env)) return 'env must be an object of strings'
    for (const k in env) if (typeof env[k] !== 'string') return `env.${k} must be a string`
  }
  if (spec.recycle !== undefined && typeof spec.recycle !== 'boolean') return 'recycle must be a boolean'
  if (spec.prepare !== undefined && typeof spec.prepare !== 'boolean') return 'prepare must be a boolean'
  return { dir, file, exportName, name, version: version ?? null, env: env ?? null, recycle: spec.recycle === true, prepare: spec.prepare === true }
}

async function load(spec, res) {
  const p = parseLoad(spec)
  if (typeof p === 'string') return sendJson(res, 400, { code: 'KDL_ERR_BAD_REQUEST', message: p })
  if (loading) return sendJson(res, 409, { code: 'KDL_ERR_LOAD_FAILED', message: 'another load is in progress' })
  if (fetching !== null) return sendJson(res, 409, { code: 'KDL_ERR_LOAD_FAILED', message: 'a code fetch is in progress' })
  if (handler !== null) {
    const message = p.name === fnName
      ? `function ${fnName} is already loaded; unload it first`
      : `function ${fnName} is loaded; an instance serves one function`
    return sendJson(res, 409, { code: 'KDL_ERR_LOAD_FAILED', message })
  }
  if (boundFn !== null && boundFn !== p.name) {
    return sendJson(res, 409, { code: 'KDL_ERR_LOAD_FAILED', message: `this instance serves function ${boundFn}, not ${p.name}` })
  }
  loading = true
  try {
    const started = process.hrtime.bigint()
    const dir = await realPathOf(p.dir)
    if (dir === null) return loadFailed(res, `codeDir ${p.dir} does not exist`)
    const entryFile = join(dir, p.file)
    if (relative(dir, entryFile).startsWith('..')) return sendJson(res, 400, { code: 'KDL_ERR_BAD_REQUEST', message: 'entrypoint escapes codeDir' })
    if (!(await isFile(entryFile))) return loadFailed(res, `entrypoint ${p.file} not found in codeDir`)

    boundFn = p.name
    codeDir = dir
    setEnv(p.env)
    let fn
    try {
      fn = await importHandler(entryFile, p.exportName)
    } catch (err) {
      dropCode()
      const { describeLoadError } = await import('./load-errors.mjs')
      const failure = await describeLoadError(err, dir, p.file, entryFile, baseEnv)
      return sendJson(res, 422, { code: 'KDL_ERR_LOAD_FAILED', ...failure })
    }
    if (typeof fn !== 'function') {
      dropCode()
      const what = p.exportName === null ? 'a default export or a "handler" export that is a function' : `an export "${p.exportName}" that is a function`
      return loadFailed(res, `${p.file} has no handler: expected ${what}`)
    }
    handler = fn
    fnName = p.name
    fnVersion = p.version
    loads++
    if (p.recycle) {
      recycleSpec = { entryFile, exportName: p.exportName, file: p.file, env: p.env }
      spent = false
      exhausted = null
      // Loaded ahead of its calls (a prewarm pool): the hooks the first reload needs are registered now,
      // while nothing waits, rather than on the way of the second call.
      if (p.prepare) setImmediate(ensureHooks)
    }
    if (p.prepare) setImmediate(warmUp)
    const loadMs = Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100
    return sendJson(res, 200, { loadMs, function: fnName, version: fnVersion })
  } finally {
    loading = false
  }
}

// --- code fetch (Kubernetes): the function's code from the platform, verified, before the load ---------------
// A step of this process rather than a sidecar's (PROTOCOL §4.6): the sha256 is checked by the process that then
// loads the code, and the pod's emptyDir is written by nobody else. The download itself is in code-fetch.mjs,
// imported on the first fetch only.
const MAX_FETCH_TIMEOUT_MS = 600_000

/** Validated fetch request, or a message. */
function parseFetch(spec) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) return 'body must be a JSON object'
  const { url, sha256, token, instance, bytes, timeoutMs, maxBytes, maxEntries } = spec
  let parsed = null
  try {
    parsed = typeof url === 'string' ? new URL(url) : null
  } catch {}
  if (parsed === null || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) return 'url must be an http(s) URL'
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) return 'sha256 must be 64 lower-case hex digits'
  if (typeof token !== 'string' || !/^[\x21-\x7e]{1,4096}$/.test(token)) return 'token must be a non-empty header-safe string'
  if (typeof instance !== 'string' || !/^[\x21-\x7e]{1,253}$/.test(instance)) return 'instance must be a non-empty header-safe string'
  const count = (v, max) => v === undefined || v === null || (Number.isSafeInteger(v) && v >= 0 && v <= max)
  if (!count(bytes, Number.MAX_SAFE_INTEGER)) return 'bytes must be a non-negative integer'
  if (!count(timeoutMs, MAX_FETCH_TIMEOUT_MS) || timeoutMs === 0) return `timeoutMs must be an integer from 1 to ${MAX_FETCH_TIMEOUT_MS}`
  if (!count(maxBytes, Number.MAX_SAFE_INTEGER) || !count(maxEntries, 10_000_000)) return 'maxBytes and maxEntries must be non-negative integers'
  return {
    url: parsed, sha256, token, instance, bytes: bytes ?? null, timeoutMs: timeoutMs ?? 60_000,
    maxBytes: maxBytes ?? 256 * 1024 * 1024, maxEntries: maxEntries ?? 200_000,
  }
}

async function fetchCode(spec, res) {
  const p = parseFetch(spec)
  if (typeof p === 'string') return sendJson(res, 400, { code: 'KDL_ERR_BAD_REQUEST', message: p })
  const refuse = (message) => sendJson(res, 409, { code: 'KDL_ERR_CODE_FETCH', message })
  if (CODE_ROOT === null) return refuse('this runtime was started without KINDLING_CODE_DIR (an absolute path): it does not fetch code')
  if (CODE_ORIGIN !== null && p.url.origin !== CODE_ORIGIN) return refuse(`code is fetched from ${CODE_ORIGIN} only, not ${p.url.origin}`)
  if (loading) return refuse('a load is in progress: code is fetched before the load only')
  if (handler !== null || boundFn !== null) {
    return refuse(`code is fetched before the load only: this instance ${handler !== null ? 'has' : 'is bound to'} function ${fnName ?? boundFn}`)
  }
  if (fetching !== null && fetching.sha256 !== p.sha256) return refuse('another code fetch is in progress')
  let current = fetching
  if (current === null) {
    const started = import('./code-fetch.mjs').then((m) => m.fetchCode(p, CODE_ROOT))
    current = fetching = { sha256: p.sha256, promise: started }
    started.then(() => {}, () => {}).finally(() => { if (fetching === current) fetching = null })
  }
  try {
    sendJson(res, 200, await current.promise)
  } catch (err) {
    if (typeof err?.status === 'number' && typeof err.code === 'string') sendJson(res, err.status, { code: err.code, message: err.message })
    else sendJson(res, 500, { code: 'KDL_ERR_INTERNAL', message: `the code fetch failed: ${describe(err?.message ?? err)}` })
  }
}

/** `scheme://host:port` of a URL, '' for a malformed one (nothing matches it), or null when unset. */
function originOf(value) {
  if (value === undefined || value === '') return null
  try {
    return new URL(value).origin
  } catch {
    return ''
  }
}

/** Imports the entry afresh (a new generation of URLs after the first import) and picks its handler. */
async function importHandler(entryFile, exportName) {
  let url = pathToFileURL(entryFile).href
  if (imported) url += `?kdl=${nextGeneration()}`
  imported = true
  return pickHandler(await import(url), entryFile, exportName)
}

function loadFailed(res, message) {
  sendJson(res, 422, { code: 'KDL_ERR_LOAD_FAILED', message })
}

/**
 * ESM: the named export, else `default` when a function, else `handler`.
 * CommonJS (the entry is in require.cache after import()): `module.exports[name]`, else module.exports when
 * a function, else `.default`, else `.handler`.
 */
function pickHandler(ns, entryFile, exportName) {
  const cjs = nodeModule().createRequire(import.meta.url).cache[entryFile]
  if (cjs === undefined) {
    if (exportName !== null) return ns[exportName]
    return typeof ns.default === 'function' ? ns.default : ns.handler
  }
  const exp = cjs.exports
  if (exportName !== null) return exp?.[exportName]
  if (typeof exp === 'function') return exp
  return typeof exp?.default === 'function' ? exp.default : exp?.handler
}

function unload(res) {
  if (loading) return sendJson(res, 409, { code: 'KDL_ERR_LOAD_FAILED', message: 'a load is in progress' })
  handler = null
  fnName = null
  fnVersion = null
  recycleSpec = null
  spent = false
  reloading = false
  exhausted = null
  for (const [, waiting] of held.splice(0)) sendJson(waiting, 503, { code: 'KDL_ERR_INTERNAL', message: 'no function loaded' })
  dropCode()
  sendJson(res, 200, { unloaded: true })
}

/** Forgets the function's CommonJS modules and environment (ES modules are made fresh on the next load). */
function dropCode() {
  if (codeDir !== null && imported) {
    const cache = nodeModule().createRequire(import.meta.url).cache
    const prefix = codeDir.endsWith(sep) ? codeDir : codeDir + sep
    for (const key of Object.keys(cache)) if (key.startsWith(prefix)) delete cache[key]
  }
  setEnv(null)
}

/** Makes the next import see new module URLs; registers the loader hooks the first time. */
function nextGeneration() {
  ensureHooks()
  generation++
  Atomics.store(generationView, 0, generation)
  return generation
}

function ensureHooks() {
  if (generationView !== null) return
  generationView = new Int32Array(new SharedArrayBuffer(4))
  nodeModule().register('./loader-hooks.mjs', import.meta.url, {
    data: { gen: generationView, self: SELF_DIR },
  })
}

function setEnv(extra) {
  const env = process.env
  for (const key of Object.keys(env)) if (!Object.hasOwn(baseEnv, key)) delete env[key]
  for (const key in baseEnv) if (env[key] !== baseEnv[key]) env[key] = baseEnv[key]
  if (extra !== null) for (const key in extra) env[key] = extra[key]
}

function realPathOf(p) {
  return new Promise((done) => realpath(resolvePath(p), (err, real) => done(err ? null : real)))
}

function isFile(p) {
  return new Promise((done) => stat(p, (err, st) => done(!err && st.isFile())))
}

// --- plumbing -----------------------------------------------------------------------------------------

function sendJson(res, status, value) {
  send(res, status, JSON_TYPE, JSON.stringify(value))
}

/**
 * Head and body with an explicit content-length: without one, node answers chunked, which costs every
 * proxy in front of the instance an extra write per answer (the terminating chunk).
 */
function send(res, status, head, body) {
  res.writeHead(status, [...head, 'content-length', typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength])
  res.end(body)
}

function describe(value) {
  try {
    return typeof value === 'string' ? value : util().inspect(value)
  } catch {
    return 'unprintable value'
  }
}

let utilModule = null
function util() {
  return (utilModule ??= process.getBuiltinModule('node:util'))
}

let moduleModule = null
function nodeModule() {
  return (moduleModule ??= process.getBuiltinModule('node:module'))
}

function exitNow() {
  process.exit(0)
}

function fatal(message) {
  process.stderr.write(`kindling node runtime: ${message}\n`)
  process.exit(1)
}

/** Path of the Unix socket, removed on SIGTERM; null for TCP. */
let socketPath = null

function listen(server, spec) {
  if (spec === undefined || spec === '') fatal('KINDLING_LISTEN is not set (unix:/abs/path.sock or tcp:HOST:PORT)')
  if (spec.startsWith('unix:')) {
    const path = spec.slice(5)
    if (!isAbsolute(path)) fatal(`KINDLING_LISTEN ${spec}: the socket path must be absolute`)
    // Listen on a temporary name and rename it into place once listening, so that the socket file appears
    // only when it accepts connections (and atomically replaces a stale one). Paths too long for a
    // sun_path with the suffix are listened on directly.
    const tmp = `${path}.${process.pid}`
    const direct = Buffer.byteLength(tmp) > 100
    removeStaleSocket(path, spec, direct)
    if (!direct) removeStaleSocket(tmp, spec, true)
    socketPath = path
    server.listen(direct ? path : tmp, () => {
      if (!direct) renameSync(tmp, path)
      if (WARM_AT_START) warmUp()
    })
    return
  }
  const m = /^tcp:(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(spec)
  if (m === null || Number(m[3]) > 65535) fatal(`KINDLING_LISTEN ${spec} is not unix:/abs/path.sock or tcp:HOST:PORT`)
  server.listen(Number(m[3]), m[1] ?? m[2] ?? '0.0.0.0', () => {
    if (WARM_AT_START) warmUp()
  })
}

/** Refuses a path that exists and is not a socket; unlinks a stale socket when asked to. */
function removeStaleSocket(path, spec, unlink) {
  let st = null
  try {
    st = lstatSync(path)
  } catch (err) {
    if (err.code !== 'ENOENT') fatal(`KINDLING_LISTEN ${spec}: ${err.message}`)
  }
  if (st === null) return
  if (!st.isSocket()) fatal(`KINDLING_LISTEN ${spec}: ${path} exists and is not a socket`)
  if (unlink) unlinkSync(path)
}

tagConsole()
const server = createServer({ requireHostHeader: false, requestTimeout: 0 }, onRequest)
// The platform keeps one connection per concurrent call open for as long as the instance lives (its
// dispatcher uses a 600 s keep-alive); a shorter idle timeout here would make it reconnect on quiet functions.
server.keepAliveTimeout = 600_000
server.on('error', (err) => fatal(`cannot listen on ${process.env.KINDLING_LISTEN}: ${err.message}`))

function terminate() {
  if (terminating) return
  terminating = true
  if (socketPath !== null) {
    try {
      unlinkSync(socketPath)
    } catch {}
  }
  server.close(exitNow)
  server.closeIdleConnections()
  if (inflight === 0) exitNow()
}
process.on('SIGTERM', terminate)
process.on('SIGINT', terminate)

listen(server, process.env.KINDLING_LISTEN)
