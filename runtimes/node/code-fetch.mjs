// The download behind POST /_/fetch (../PROTOCOL.md §4.6): the function's code archive from the platform's code
// server, streamed to a temp file in KINDLING_CODE_DIR while hashed, its sha256 checked before anything is
// unpacked, then unpacked (untar.mjs) into a temp directory renamed to `<codeRoot>/<sha256>`. Loaded on the first
// fetch only: an instance that is never asked to fetch pays nothing for it.
import { promises as fsp } from 'node:fs'
import { join } from 'node:path'
import { ArchiveError, untar } from './untar.mjs'

/** A fetch that failed: `status` and `code` are what the runtime answers. */
export class FetchError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

const fetchFailed = (message) => new FetchError(502, 'KDL_ERR_CODE_FETCH', message)
/** What a tar adds to its files' bytes: a header per entry, padding, the end blocks. */
const FRAMING_PER_ENTRY = 2 * 512

/**
 * Fetches, verifies and unpacks; answers `{ codeDir, bytes, fetchMs }` (`cached: true` when this code is here
 * already, from an earlier fetch).
 * @param {{ url: URL, sha256: string, token: string, instance: string, bytes: number|null, timeoutMs: number, maxBytes: number, maxEntries: number }} spec
 * @param {string} codeRoot
 */
export async function fetchCode(spec, codeRoot) {
  const started = process.hrtime.bigint()
  const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100
  const final = join(codeRoot, spec.sha256)
  if (await isDir(final)) return { codeDir: final, bytes: 0, fetchMs: elapsed(), cached: true }
  await fsp.mkdir(codeRoot, { recursive: true })
  await sweepOnce(codeRoot)
  const tag = `${spec.sha256.slice(0, 12)}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`
  const tarPath = join(codeRoot, `.fetch-${tag}.tar`)
  const unpackDir = join(codeRoot, `.unpack-${tag}`)
  try {
    const limit = spec.bytes ?? spec.maxBytes + spec.maxEntries * FRAMING_PER_ENTRY + 1024
    const { digest, bytes } = await download(spec, tarPath, limit)
    if (digest !== spec.sha256) {
      throw new FetchError(502, 'KDL_ERR_CODE_INTEGRITY', `the fetched code has the sha256 ${digest}, not ${spec.sha256}; nothing was unpacked`)
    }
    await fsp.mkdir(unpackDir, { mode: 0o755 })
    try {
      await untar(tarPath, unpackDir, { maxBytes: spec.maxBytes, maxEntries: spec.maxEntries })
    } catch (err) {
      if (err instanceof ArchiveError) throw new FetchError(400, 'KDL_ERR_BAD_ARCHIVE', `the fetched code archive is refused: ${err.message}`)
      throw err
    }
    await fsp.chmod(unpackDir, 0o755)
    try {
      await fsp.rename(unpackDir, final)
    } catch (err) {
      // The same code landed meanwhile (a concurrent fetch of the same hash): it is the same bytes.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err
    }
    return { codeDir: final, bytes, fetchMs: elapsed() }
  } finally {
    await fsp.rm(tarPath, { force: true })
    await fsp.rm(unpackDir, { recursive: true, force: true })
  }
}

let swept = false
/**
 * Removes what a killed runtime left half-done (the emptyDir outlives a container restart). Run before this
 * process's first fetch, when nothing of its own can be in flight: the server runs one fetch at a time.
 */
async function sweepOnce(codeRoot) {
  if (swept) return
  swept = true
  for (const name of await fsp.readdir(codeRoot)) {
    if (name.startsWith('.fetch-') || name.startsWith('.unpack-')) await fsp.rm(join(codeRoot, name), { recursive: true, force: true })
  }
}

async function isDir(p) {
  try {
    return (await fsp.lstat(p)).isDirectory()
  } catch {
    return false
  }
}

/**
 * GET url with the token and instance headers, at most `limit` bytes (exactly `spec.bytes` when the grant
 * gave it), within `spec.timeoutMs` all told; written to `file` (created exclusively) while hashed.
 */
async function download(spec, file, limit) {
  const http = process.getBuiltinModule(spec.url.protocol === 'https:' ? 'node:https' : 'node:http')
  const hash = process.getBuiltinModule('node:crypto').createHash('sha256')
  const out = await fsp.open(file, 'wx', 0o600)
  let req
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    req?.destroy()
  }, spec.timeoutMs)
  try {
    const res = await new Promise((resolve, reject) => {
      req = http.request(spec.url, {
        method: 'GET',
        agent: false,
        headers: { authorization: `Bearer ${spec.token}`, 'x-kindling-instance': spec.instance },
      }, resolve)
      req.on('error', (err) => reject(timedOut ? timeout(spec) : fetchFailed(`fetching the code from ${spec.url.origin} failed: ${err.message}`)))
      req.end()
    })
    if (res.statusCode !== 200) throw fetchFailed(`the code server answered ${res.statusCode}${await refusal(res)}`)
    const length = res.headers['content-length'] === undefined ? null : Number(res.headers['content-length'])
    if (spec.bytes !== null && length !== null && length !== spec.bytes) throw fetchFailed(`the code archive has ${length} bytes, not the ${spec.bytes} granted`)
    if (length !== null && length > limit) throw fetchFailed(`the code archive has ${length} bytes, over the ${limit} allowed`)
    let bytes = 0
    try {
      for await (const chunk of res) {
        bytes += chunk.length
        if (bytes > limit) throw fetchFailed(`the code archive exceeds the ${limit} bytes allowed`)
        hash.update(chunk)
        let off = 0
        while (off < chunk.length) off += (await out.write(chunk, off, chunk.length - off)).bytesWritten
      }
    } catch (err) {
      if (err instanceof FetchError) throw err
      throw timedOut ? timeout(spec) : fetchFailed(`the code download broke off after ${bytes} bytes: ${err.message}`)
    }
    if (timedOut) throw timeout(spec)
    if ((length !== null && bytes !== length) || !res.complete) throw fetchFailed(`the code download broke off after ${bytes} bytes`)
    return { digest: hash.digest('hex'), bytes }
  } finally {
    clearTimeout(timer)
    req?.destroy()
    await out.close()
  }
}

const timeout = (spec) => fetchFailed(`fetching the code timed out after ${spec.timeoutMs} ms`)

/** ` KDL_ERR_…: message` from a JSON error answer (first 4 KiB), or ''. */
async function refusal(res) {
  let body = ''
  try {
    for await (const chunk of res) {
      body += chunk
      if (body.length > 4096) break
    }
    const json = JSON.parse(body)
    return typeof json?.code === 'string' ? ` ${json.code}: ${json.message}` : ''
  } catch {
    return ''
  } finally {
    res.destroy()
  }
}
