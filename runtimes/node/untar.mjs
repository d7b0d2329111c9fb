// A minimal POSIX ustar reader for the code archive a runtime fetched (../PROTOCOL.md §4.6). It reads what
// the platform's code server writes — regular files (0644/0755) and directories (0755), each parent before
// its children — and refuses everything else instead of interpreting it: links of any kind, devices, FIFOs,
// pax and GNU extension headers, absolute paths, `..`, a path twice, totals over the bounds. The whole
// archive is checked before the first byte is written, so a refused archive writes nothing at all.
//
// File system calls are synchronous, in slices of at most SLICE_MS between two turns of the event loop: a
// function's code is many small files, and a thread-pool round trip per open/write/chmod/close made unpacking
// 250 files take ~100 ms here, against ~10 ms so. The instance serves no function while it fetches; the slices
// keep it answering /_/health.
import { chmodSync, closeSync, fchmodSync, fstatSync, mkdirSync, openSync, readSync, writeSync, constants } from 'node:fs'
import { join, sep } from 'node:path'

const BLOCK = 512
const SLICE_MS = 10
const utf8 = new TextDecoder('utf-8', { fatal: true })

/** A refused archive (the runtime answers it as KDL_ERR_BAD_ARCHIVE). */
export class ArchiveError extends Error {
  constructor(message) {
    super(message)
    this.code = 'KDL_ERR_BAD_ARCHIVE'
  }
}

const TYPE_NAMES = {
  '1': 'a hard link', '2': 'a symlink', '3': 'a character device', '4': 'a block device', '6': 'a FIFO',
  '7': 'a contiguous file', x: 'a pax header', g: 'a pax global header', L: 'a GNU long name', K: 'a GNU long link name',
}

/**
 * Unpacks the ustar at `archivePath` into the existing, empty directory `destDir`.
 * @param {string} archivePath
 * @param {string} destDir
 * @param {{ maxBytes: number, maxEntries: number }} limits sum of file sizes, number of entries
 * @returns {Promise<{ files: number, dirs: number, bytes: number }>}
 */
export async function untar(archivePath, destDir, limits) {
  const fd = openSync(archivePath, 'r')
  try {
    const plan = await inspect(fd, fstatSync(fd).size, limits)
    await write(fd, destDir, plan.entries)
    return { files: plan.files, dirs: plan.entries.length - plan.files, bytes: plan.bytes }
  } finally {
    closeSync(fd)
  }
}

let sliceStart = 0
/** Lets the event loop turn when the current slice of synchronous work is over SLICE_MS. */
async function yieldSometimes() {
  const now = performance.now()
  if (now - sliceStart < SLICE_MS) return
  await new Promise((resolve) => setImmediate(resolve))
  sliceStart = performance.now()
}

function readBlock(fd, buf, position) {
  let off = 0
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, position + off)
    if (n === 0) throw new ArchiveError('the archive is truncated')
    off += n
  }
}

/** Lists and checks every entry: `{ entries: [{ kind, path, mode, size, offset }], files, bytes }`. */
async function inspect(fd, archiveSize, { maxBytes, maxEntries }) {
  const entries = []
  const kinds = new Map()
  const header = Buffer.alloc(BLOCK)
  let pos = 0
  let files = 0
  let bytes = 0
  sliceStart = performance.now()
  for (;;) {
    await yieldSometimes()
    if (pos + BLOCK > archiveSize) throw new ArchiveError('the archive is truncated (no end-of-archive blocks)')
    readBlock(fd, header, pos)
    if (isZero(header)) {
      if (pos + 2 * BLOCK > archiveSize) throw new ArchiveError('the archive is truncated (one end-of-archive block)')
      readBlock(fd, header, pos + BLOCK)
      if (!isZero(header)) throw new ArchiveError(`a zero block inside the archive at offset ${pos}`)
      break
    }
    if (!checksumOk(header)) throw new ArchiveError(`the header at offset ${pos} has a bad checksum`)
    if (header.toString('latin1', 257, 263) !== 'ustar\0') throw new ArchiveError(`the header at offset ${pos} is not POSIX ustar`)
    const raw = joinPath(text(header, 345, 155), text(header, 0, 100))
    const name = JSON.stringify(raw)
    const flag = header[156] === 0 ? '0' : String.fromCharCode(header[156])
    if (flag !== '0' && flag !== '5') throw new ArchiveError(`entry ${name} is ${TYPE_NAMES[flag] ?? `of the unsupported type ${JSON.stringify(flag)}`}`)
    const kind = flag === '0' ? 'file' : 'dir'
    const mode = octal(header, 100, 8, name)
    const size = octal(header, 124, 12, name)
    const problem = pathProblem(raw)
    if (problem !== undefined) throw new ArchiveError(`entry ${name} ${problem}`)
    const path = raw.split('/').filter((s) => s !== '' && s !== '.').join('/')
    if (kind === 'file' ? mode !== 0o644 && mode !== 0o755 : mode !== 0o755) {
      throw new ArchiveError(`entry ${name} has the mode ${mode.toString(8).padStart(4, '0')} (files 0644 or 0755, directories 0755)`)
    }
    if (kind === 'dir' && size !== 0) throw new ArchiveError(`directory ${name} has a size`)
    if (entries.length + 1 > maxEntries) throw new ArchiveError(`the archive has more than ${maxEntries} entries`)
    if (path === '') {
      if (kind !== 'dir') throw new ArchiveError(`entry ${name} replaces the archive root`)
    } else {
      if (kinds.has(path)) throw new ArchiveError(`entry ${name} appears more than once`)
      const slash = path.lastIndexOf('/')
      if (slash !== -1 && kinds.get(path.slice(0, slash)) !== 'dir') {
        throw new ArchiveError(`entry ${name} comes before its directory ${JSON.stringify(path.slice(0, slash))}`)
      }
      kinds.set(path, kind)
      if (kind === 'file') {
        files++
        bytes += size
        if (bytes > maxBytes) throw new ArchiveError(`the archive unpacks to more than ${maxBytes} bytes`)
      }
      entries.push({ kind, path, mode, size, offset: pos + BLOCK })
    }
    pos += BLOCK + Math.ceil(size / BLOCK) * BLOCK
  }
  return { entries, files, bytes }
}

/** Directories in archive order (parents first), then each file created exclusively (O_EXCL never follows a link). */
async function write(fd, destDir, entries) {
  const root = destDir.endsWith(sep) ? destDir : destDir + sep
  const chunk = Buffer.allocUnsafe(1 << 20)
  // O_EXCL: never follows or reuses an existing path; O_NOFOLLOW for good measure.
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW
  sliceStart = performance.now()
  for (const e of entries) {
    await yieldSometimes()
    const target = join(destDir, e.path)
    if (!target.startsWith(root)) throw new ArchiveError(`entry ${JSON.stringify(e.path)} leaves the code directory`)
    if (e.kind === 'dir') {
      mkdirSync(target, { mode: 0o755 })
      chmodSync(target, 0o755)
      continue
    }
    const out = openSync(target, flags, e.mode)
    try {
      let done = 0
      while (done < e.size) {
        const n = Math.min(chunk.length, e.size - done)
        readBlock(fd, chunk.subarray(0, n), e.offset + done)
        let off = 0
        while (off < n) off += writeSync(out, chunk, off, n - off)
        done += n
        if (done < e.size) await yieldSometimes()
      }
      fchmodSync(out, e.mode)
    } finally {
      closeSync(out)
    }
  }
}

function isZero(buf) {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false
  return true
}

/** The sum of the header's bytes with the checksum field counted as spaces (POSIX), against the field. */
function checksumOk(header) {
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]
  const field = header.toString('latin1', 148, 156).replace(/[\0 ]+$/, '').replace(/^ +/, '')
  return /^[0-7]{1,7}$/.test(field) && parseInt(field, 8) === sum
}

/** A NUL-terminated UTF-8 field; invalid UTF-8 is refused (a name must mean one thing). */
function text(header, at, width) {
  const end = header.indexOf(0, at)
  const bytes = header.subarray(at, end === -1 || end > at + width ? at + width : end)
  try {
    return utf8.decode(bytes)
  } catch {
    throw new ArchiveError(`a header at field offset ${at} holds invalid UTF-8`)
  }
}

function joinPath(prefix, name) {
  return prefix === '' ? name : `${prefix}/${name}`
}

/** Octal digits (space- or NUL-terminated); base-256 and other forms are refused. */
function octal(header, at, width, name) {
  const field = header.toString('latin1', at, at + width).replace(/[\0 ]+$/, '').replace(/^ +/, '')
  if (!/^[0-7]{1,11}$/.test(field)) throw new ArchiveError(`entry ${name} has a malformed numeric field`)
  return parseInt(field, 8)
}

/** Why a path may not be unpacked, or undefined for a plain relative path. */
function pathProblem(raw) {
  if (raw === '') return 'has an empty name'
  if (raw.includes('\\')) return 'contains a backslash'
  if (raw.startsWith('/')) return 'is an absolute path'
  if (/^[A-Za-z]:/.test(raw)) return 'is a Windows drive path'
  if (raw.split('/').includes('..')) return 'contains a ".." segment'
  return undefined
}
