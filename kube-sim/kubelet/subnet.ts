/**
 * A node's loopback subnet (issue 10): each node of every stand-in on this host gets its own `127.N.0.0/16`
 * (N in 100…254) for its address and its pods' addresses, so two stand-ins running at once (parallel test files,
 * a `kindling kube-sim` beside a test) never hand out the same pod IP — a platform of one cluster would otherwise
 * reach the other cluster's pod on `podIP:8888`.
 *
 * The reservation is a listening socket on `127.N.0.1:10250` (the kubelet's port) held for the node's life: the
 * kernel arbitrates between processes, and frees it when the holder exits however it exits — no lock file to go
 * stale.
 */
import { createServer, type Server } from 'node:net'

export const KUBELET_PORT = 10250
const FIRST = 100
const LAST = 254

export interface NodeSubnet {
  /** The second octet: the node is 127.N.0.1, its pods 127.N.x.y. */
  octet: number
  hostIP: string
  release(): Promise<void>
}

function tryListen(host: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => socket.destroy())
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EADDRNOTAVAIL') resolve(undefined)
      else reject(err)
    })
    server.listen({ host, port: KUBELET_PORT, exclusive: true }, () => resolve(server))
  })
}

/** The first free subnet, starting at a random one (several stand-ins starting at once rarely race for the same). */
export async function reserveNodeSubnet(): Promise<NodeSubnet> {
  const span = LAST - FIRST + 1
  const start = Math.floor(Math.random() * span)
  for (let n = 0; n < span; n++) {
    const octet = FIRST + ((start + n) % span)
    const hostIP = `127.${octet}.0.1`
    const server = await tryListen(hostIP)
    if (server === undefined) continue
    server.unref()
    return { octet, hostIP, release: () => new Promise<void>((resolve) => server.close(() => resolve())) }
  }
  throw new Error(`no free node subnet: every 127.N.0.1:${KUBELET_PORT} (N ${FIRST}…${LAST}) is taken on this host`)
}
