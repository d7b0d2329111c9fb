import { open, readFile, type FileHandle } from 'node:fs/promises'
import { KdlError } from '../common/errors.js'
import { isErrno } from './atomic-file.js'

interface Pending {
  text: string
  resolve: () => void
  reject: (err: unknown) => void
}

/** How far back the tail repair reads at a time. */
const TAIL_CHUNK = 4096

/**
 * One append-only NDJSON file with group commit (issue 12): the appends made while a write is under way
 * wait for it and then go together, as one write and one fdatasync, in the order they were called. A map
 * state's items finishing at once then cost one disk flush between them, not one each.
 *
 * An append resolves only after its fdatasync returned, so a line that does not end in `\n` was never
 * acknowledged: a crash mid-write leaves at most such a torn tail, which readers skip and the next batch
 * cuts off before it writes (else its first line would be glued to the torn one).
 */
export class GroupCommitLog {
  readonly #file: string
  readonly #onSync: () => void
  readonly #onIdle: () => void
  #queue: Pending[] = []
  #flushing = false

  /** `onSync` is told of each fdatasync (a batch); `onIdle` when the queue is empty and no write runs. */
  constructor(file: string, onSync: () => void, onIdle: () => void) {
    this.#file = file
    this.#onSync = onSync
    this.#onIdle = onIdle
  }

  /** Appends `text` (whole lines, each ending in `\n`) after every earlier append; resolves once it is on disk. */
  append(text: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ text, resolve, reject })
      if (this.#flushing) return
      this.#flushing = true
      // A microtask, not now: the appends a caller makes in one go (Promise.all over a map's items) all
      // join the first batch instead of the first one going alone.
      queueMicrotask(() => { void this.#flush() })
    })
  }

  async #flush(): Promise<void> {
    while (this.#queue.length > 0) {
      const batch = this.#queue
      this.#queue = []
      try {
        await this.#write(batch.map((p) => p.text).join(''))
        for (const p of batch) p.resolve()
      } catch (err) {
        const e = new KdlError('KDL_ERR_INTERNAL', `appending to ${this.#file} failed`, { cause: err })
        for (const p of batch) p.reject(e)
      }
    }
    this.#flushing = false
    this.#onIdle()
  }

  async #write(text: string): Promise<void> {
    // 'a+' (the tail is read) does not create the run's directory: a run that is not there fails (ENOENT), it is not made up.
    const handle = await open(this.#file, 'a+', 0o600)
    try {
      const size = await cutTornTail(handle)
      try {
        await handle.appendFile(text, 'utf8')
        await handle.datasync()
      } catch (err) {
        // Whatever part of the batch got out is unacknowledged: take it back so the file ends on a line.
        await handle.truncate(size).catch(() => undefined)
        throw err
      }
      this.#onSync()
    } finally {
      await handle.close()
    }
  }
}

/** Truncates an unterminated last line (a crash's torn write); resolves the file's size after it. */
async function cutTornTail(handle: FileHandle): Promise<number> {
  const { size } = await handle.stat()
  let end = size
  const buf = Buffer.alloc(TAIL_CHUNK)
  while (end > 0) {
    const start = Math.max(0, end - TAIL_CHUNK)
    const { bytesRead } = await handle.read(buf, 0, end - start, start)
    const nl = buf.subarray(0, bytesRead).lastIndexOf(0x0a)
    if (nl >= 0) {
      const keep = start + nl + 1
      if (keep !== size) await handle.truncate(keep)
      return keep
    }
    end = start
  }
  if (size > 0) await handle.truncate(0)
  return 0
}

/**
 * The objects of an NDJSON file, in order, or undefined when it does not exist. An unterminated last line is
 * dropped: it was never acknowledged (see GroupCommitLog). A terminated line that is not a JSON object is
 * damage no crash of ours leaves: KDL_ERR_INTERNAL, naming the line.
 */
export async function readNdjson(file: string, label: string): Promise<Record<string, unknown>[] | undefined> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined
    throw new KdlError('KDL_ERR_INTERNAL', `reading ${label} failed`, { cause: err })
  }
  const lines = text.split('\n')
  lines.pop()
  return lines.map((line, i) => {
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch (err) {
      throw new KdlError('KDL_ERR_INTERNAL', `line ${i + 1} of ${label} is not valid JSON`, { cause: err })
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new KdlError('KDL_ERR_INTERNAL', `line ${i + 1} of ${label} is not a JSON object`)
    return value as Record<string, unknown>
  })
}
