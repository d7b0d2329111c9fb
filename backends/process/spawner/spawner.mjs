// Kindling's spawner: a small helper process that starts instance processes for the process backend.
//
// Why: fork() copies the page tables of the process that calls it, so spawning from the platform (150+ MB
// RSS) blocks its event loop for 5–20 ms per instance — every pool refill would stall the router's calls.
// This process stays ~40 MB and does nothing else, so its spawns are cheap and stall nobody.
//
// Protocol (Node IPC, one JSON message each way):
//   parent → {op: 'spawn', id, command, args, env, cwd, readyFd?}
//   child  → {op: 'spawned', id, pid} | {op: 'error', id, message}
//          → {op: 'fd-ready', id}   (readyFd set: the process wrote to that fd, e.g. slirp4netns --ready-fd)
//          → {op: 'line', id, stream: 'stdout'|'stderr', line}   (instance output, one line each)
//          → {op: 'exit', id, code, signal}
// It exits when the platform goes away (IPC disconnect); instances it started are then orphans that the
// next platform start reaps.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'

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
  for (const stream of ['stdout', 'stderr']) {
    createInterface({ input: child[stream], crlfDelay: Infinity }).on('line', (line) => send({ op: 'line', id, stream, line: line.slice(0, 8192) }))
  }
  if (stdio.length > 3) {
    const ready = child.stdio[stdio.length - 1]
    ready.once('data', () => { send({ op: 'fd-ready', id }); ready.destroy() })
  }
  child.once('exit', (code, signal) => send({ op: 'exit', id, code, signal }))
})
process.on('disconnect', () => process.exit(0))
send({ op: 'ready' })
