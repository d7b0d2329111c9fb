// Kindling's spawner: a small helper process that starts instance processes for the process backend.
//
// Why: fork() copies the page tables of the process that calls it, so spawning from the platform (150+ MB
// RSS) blocks its event loop for 5–20 ms per instance — every pool refill would stall the router's calls.
// This process stays ~40 MB and does nothing else, so its spawns are cheap and stall nobody.
//
// Protocol (Node IPC, one JSON message each way):
//   parent → {op: 'spawn', id, command, args, env, cwd, readyFd?, output?: {maxLine, rate, burst}}
//   child  → {op: 'spawned', id, pid} | {op: 'error', id, message}
//          → {op: 'fd-ready', id}   (readyFd set: the process wrote to that fd, e.g. slirp4netns --ready-fd)
//          → {op: 'line', id, stream: 'stdout'|'stderr', line, truncated?}   (instance output, one line each)
//          → {op: 'dropped', id, stream, count}   (lines over the output rate, counted instead of sent)
//          → {op: 'exit', id, code, signal}
// It exits when the platform goes away (IPC disconnect); instances it started are then orphans that the
// next platform start reaps.
import { spawn } from 'node:child_process'

const send = (msg) => { if (process.connected) process.send(msg) }

process.on('message', (msg) => {
  if (msg === null || typeof msg !== 'object' || msg.op !== 'spawn') return
  const { id, command, args, env, cwd, readyFd } = msg
  const stdio = ['ignore', 'pipe', 'pipe']
  if (Number.isInteger(readyFd) && readyFd > 2) { while (stdio.length < readyFd) stdio.push('ignore'); stdio.push('pipe') }
  let child
  try {
    child = spawn(command, args, { env, cwd, stdio, detached: true })
  } catch (err) {
    send({ op: 'error', id, message: String(err?.message ?? err) })
    return
  }
  child.once('error', (err) => send({ op: 'error', id, message: String(err?.message ?? err) }))
  if (child.pid !== undefined) send({ op: 'spawned', id, pid: child.pid })
  const limit = rateLimit(id, msg.output)
  for (const stream of ['stdout', 'stderr']) {
    splitLines(child[stream], msg.output?.maxLine ?? 8192, (line, truncated) => {
      if (limit === null || limit.take(stream)) send(truncated ? { op: 'line', id, stream, line, truncated } : { op: 'line', id, stream, line })
    })
  }
  if (stdio.length > 3) {
    const ready = child.stdio[stdio.length - 1]
    ready.once('data', () => { send({ op: 'fd-ready', id }); ready.destroy() })
  }
  child.once('exit', (code, signal) => send({ op: 'exit', id, code, signal }))
})
process.on('disconnect', () => process.exit(0))

/**
 * Calls `onLine` for each line of a stream, without its newline. A line longer than `maxLine` characters is cut
 * there (`truncated`) and the rest of it skipped up to the next newline: an instance printing without a newline
 * cannot make this process hold more than one line's worth of its output.
 */
function splitLines(stream, maxLine, onLine) {
  let pending = ''
  let skipping = false
  stream.setEncoding('utf8')
  stream.on('data', (chunk) => {
    let at = 0
    for (;;) {
      const nl = chunk.indexOf('\n', at)
      const piece = nl === -1 ? chunk.slice(at) : chunk.slice(at, nl)
      if (!skipping) {
        pending += piece
        if (pending.length > maxLine) {
          onLine(pending.slice(0, maxLine), true)
          pending = ''
          skipping = true
        }
      }
      if (nl === -1) break
      if (!skipping) onLine(pending.endsWith('\r') ? pending.slice(0, -1) : pending, false)
      pending = ''
      skipping = false
      at = nl + 1
    }
  })
  stream.on('end', () => { if (pending !== '' && !skipping) onLine(pending, false) })
}

/**
 * The output rate of one instance (both streams together): a token bucket of `burst` lines refilled at `rate`
 * lines a second. A line without a token is counted; the count is sent as one `dropped` message per stream
 * before the next line that passes, or a second after the drops began, whichever comes first — so a function
 * printing without end costs the platform `rate` messages a second, not as many as it can write.
 */
function rateLimit(id, output) {
  if (output === undefined || output === null || !(output.rate > 0)) return null
  const rate = output.rate
  const burst = Math.max(1, output.burst ?? rate)
  let tokens = burst
  let last = Date.now()
  const dropped = { stdout: 0, stderr: 0 }
  let timer = null
  const flush = () => {
    timer = null
    for (const stream of ['stdout', 'stderr']) {
      if (dropped[stream] > 0) { send({ op: 'dropped', id, stream, count: dropped[stream] }); dropped[stream] = 0 }
    }
  }
  return {
    take(stream) {
      const now = Date.now()
      tokens = Math.min(burst, tokens + (now - last) * rate / 1000)
      last = now
      if (tokens >= 1) {
        tokens -= 1
        if (dropped.stdout > 0 || dropped.stderr > 0) { clearTimeout(timer); flush() }
        return true
      }
      dropped[stream]++
      timer ??= setTimeout(flush, 1000)
      return false
    },
  }
}
send({ op: 'ready' })
