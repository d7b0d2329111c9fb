import { access, mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises'
import { closeSync, constants, openSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { KdlError, isKdlError } from '../common/errors.js'
import type { CgroupLimits } from './types.js'

/** The CFS period Kindling uses on both versions (µs). */
export const CFS_PERIOD_US = 100_000
/** The kernel refuses quotas below 1 ms. */
const CFS_MIN_QUOTA_US = 1_000

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

export function backendError(message: string, cause: unknown): KdlError {
  if (isKdlError(cause)) return cause
  const detail = cause instanceof Error ? `: ${cause.message}` : ''
  return new KdlError('KDL_ERR_BACKEND', `${message}${detail}`, { cause })
}

export function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string'
    ? (err as { code: string }).code
    : undefined
}

/** Validates a parent path (`a` or `a/b`) or a group name (one segment). */
export function checkRelPath(path: string, what: 'parent' | 'name'): string {
  const segments = path.split('/')
  if (path === '' || (what === 'name' && segments.length !== 1) || !segments.every((s) => SEGMENT.test(s) && s.length <= 128)) {
    throw new KdlError('KDL_ERR_BACKEND', `invalid cgroup ${what} ${JSON.stringify(path)}`)
  }
  return path
}

export function checkLimits(limits: CgroupLimits): void {
  for (const [key, value] of Object.entries(limits)) {
    if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
      throw new KdlError('KDL_ERR_BACKEND', `invalid cgroup limit ${key}=${String(value)}`)
    }
  }
}

export function checkCores(cores: number): void {
  if (typeof cores !== 'number' || Number.isNaN(cores) || cores < 0) {
    throw new KdlError('KDL_ERR_BACKEND', `invalid cpu cores ${String(cores)}`)
  }
}

/** CFS quota for a core count; `undefined` for no quota (0 or Infinity). */
export function quotaUs(cores: number): number | undefined {
  if (cores === 0 || !Number.isFinite(cores)) return undefined
  return Math.max(CFS_MIN_QUOTA_US, Math.round(cores * CFS_PERIOD_US))
}

/** True for "no limit" (0 or Infinity); otherwise the integral limit. */
export function integralLimit(value: number): number | undefined {
  return value === 0 || !Number.isFinite(value) ? undefined : Math.floor(value)
}

export async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw backendError(`cannot read ${file}`, err)
  }
}

/**
 * Reads a small control file synchronously: open, read, close (3 syscalls; the fs/promises readFile
 * path costs ~4× more CPU). cgroupfs files are generated in memory, so the read never waits on I/O;
 * the sampler blocks the loop ~20 µs per file instead of paying thread-pool round trips.
 * `optional` turns ENOENT into `undefined`.
 */
export function readSmallSync(file: string, scratch: { buf: Buffer }, optional: true): string | undefined
export function readSmallSync(file: string, scratch: { buf: Buffer }, optional?: false): string
export function readSmallSync(file: string, scratch: { buf: Buffer }, optional = false): string | undefined {
  let fd: number
  try {
    fd = openSync(file, 'r')
  } catch (err) {
    if (optional && errno(err) === 'ENOENT') return undefined
    throw backendError(`cannot read ${file}`, err)
  }
  try {
    let length = 0
    for (;;) {
      if (length === scratch.buf.length) {
        const bigger = Buffer.allocUnsafe(scratch.buf.length * 2)
        scratch.buf.copy(bigger)
        scratch.buf = bigger
      }
      const n = readSync(fd, scratch.buf, length, scratch.buf.length - length, length)
      if (n === 0) return scratch.buf.toString('utf8', 0, length)
      length += n
    }
  } catch (err) {
    throw backendError(`cannot read ${file}`, err)
  } finally {
    closeSync(fd)
  }
}

/** Reads a file that may be absent; `undefined` when it is. */
export async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined
    throw backendError(`cannot read ${file}`, err)
  }
}

export async function writeText(file: string, value: string): Promise<void> {
  try {
    await writeFile(file, value)
  } catch (err) {
    throw backendError(`cannot write ${JSON.stringify(value)} to ${file}`, err)
  }
}

async function accessible(path: string, mode: number): Promise<boolean> {
  try {
    await access(path, mode)
    return true
  } catch {
    return false
  }
}

export const exists = (path: string): Promise<boolean> => accessible(path, constants.F_OK)
export const writable = (path: string): Promise<boolean> => accessible(path, constants.W_OK)

export async function mkdirp(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true })
  } catch (err) {
    throw backendError(`cannot create cgroup ${dir}`, err)
  }
}

/** A number from a one-value file (`max` → Infinity). */
export function parseValue(text: string, file: string): number {
  const t = text.trim()
  if (t === 'max') return Number.POSITIVE_INFINITY
  const n = Number(t)
  if (t === '' || Number.isNaN(n)) throw new KdlError('KDL_ERR_BACKEND', `unexpected content ${JSON.stringify(t)} in ${file}`)
  return n
}

/** `key value` lines (cpu.stat, memory.events, memory.oom_control) → map. */
export function parseKeyed(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ')
    if (sp <= 0) continue
    const n = Number(line.slice(sp + 1).trim())
    if (!Number.isNaN(n)) out.set(line.slice(0, sp), n)
  }
  return out
}

export function parsePids(text: string): number[] {
  const out: number[] = []
  for (const line of text.split('\n')) {
    const n = Number.parseInt(line, 10)
    if (n > 0) out.push(n)
  }
  return out
}

/** Pids listed in a cgroup.procs file; `[]` when the group is gone. */
export async function readProcs(file: string): Promise<number[]> {
  const text = await readOptional(file)
  return text === undefined ? [] : parsePids(text)
}

/** Names of the subdirectories (child groups) of a directory; `[]` when it is missing. */
export async function subdirs(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { withFileTypes: true })
    return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort()
  } catch (err) {
    if (errno(err) === 'ENOENT') return []
    throw backendError(`cannot list ${dir}`, err)
  }
}

export async function defaultRemoveDir(dir: string): Promise<void> {
  await rmdir(dir)
}

/**
 * Removes a group directory and any child groups below it, deepest first. Retries EBUSY (the kernel
 * may still be releasing killed tasks) until the deadline; a missing directory resolves.
 */
export async function removeGroup(dir: string, removeDir: (dir: string) => Promise<void>, deadline: number): Promise<void> {
  for (const child of await subdirs(dir)) await removeGroup(join(dir, child), removeDir, deadline)
  for (let attempt = 0; ; attempt++) {
    try {
      await removeDir(dir)
      return
    } catch (err) {
      const code = errno(err)
      if (code === 'ENOENT') return
      if (code !== 'EBUSY' || Date.now() > deadline) throw backendError(`cannot remove cgroup ${dir}`, err)
      await delay(Math.min(50, 2 ** attempt))
    }
  }
}

/** SIGKILL, ignoring processes that are already gone. */
export function killPids(pids: readonly number[], selfPid: number): void {
  if (pids.includes(selfPid)) {
    throw new KdlError('KDL_ERR_BACKEND', `refusing to destroy a cgroup that holds the calling process (pid ${selfPid})`)
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch (err) {
      if (errno(err) !== 'ESRCH') throw backendError(`cannot kill pid ${pid}`, err)
    }
  }
}

/**
 * Runs kill rounds until `listPids` comes back empty. Each round is `round(pids)` (freeze, kill, thaw
 * or cgroup.kill); between rounds a short back-off lets SIGKILLed tasks leave the group.
 */
export async function killUntilEmpty(
  listPids: () => Promise<number[]>,
  round: (pids: number[]) => Promise<void>,
  deadline: number,
  what: string,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const pids = await listPids()
    if (pids.length === 0) return
    if (Date.now() > deadline) {
      throw new KdlError('KDL_ERR_BACKEND', `cgroup ${what} still holds ${pids.length} process(es) after the destroy timeout`, {
        details: { pids: pids.slice(0, 20) },
      })
    }
    await round(pids)
    await delay(Math.min(20, 2 ** attempt))
  }
}

/** POSIX single-quoting for a shell word. */
export function shQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`
}
