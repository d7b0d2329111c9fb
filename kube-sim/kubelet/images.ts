/**
 * What an image name means to the stand-in's kubelet (issue 10): nothing is pulled; an image maps to a local
 * command. `kindling/runtime-node` (any tag) runs the runtime server, `kindling/platform` runs `bin/kindling.mjs`
 * with the container's args, `redis` runs the host's redis-server. The map is the `images` option of startCluster; tests add small scripts.
 */
import { join } from 'node:path'

export interface ImageSpec {
  /** The image's ENTRYPOINT: argv[0] absolute or found on PATH. A container's `command` replaces it. */
  command: string[]
  /** The image's CMD: a container's `args` replace it. */
  args?: string[]
  /** The image's WORKDIR (host path); default: the container's own directory. */
  workingDir?: string
  /** The image's ENV, below the container's. */
  env?: Record<string, string>
  /** The image's USER, used when the kubelet runs as root and the pod names no runAsUser. */
  user?: { uid: number; gid: number }
}

/** An image name (`repo`, `repo:tag`, `repo@sha256:…`) → its spec, or just the entrypoint argv. */
export type ImageMap = Record<string, ImageSpec | string[]>

/** The two images of the brief, run from the repository at `repoRoot`. */
export function defaultImages(repoRoot: string): ImageMap {
  return {
    // The runtime image runs as nobody (USER 65534:65534 in backends/docker's image), so `runAsNonRoot` holds.
    'kindling/runtime-node': { command: [process.execPath, join(repoRoot, 'runtimes/node/server.mjs')], user: { uid: 65534, gid: 65534 } },
    'kindling/platform': { command: [process.execPath, join(repoRoot, 'bin/kindling.mjs')] },
    // The chart's bundled Redis (issue 13): Debian's redis-server, as the official image's entrypoint runs it.
    'redis': { command: ['redis-server'], user: { uid: 999, gid: 999 } },
  }
}

/** The image's spec: an exact entry first, then the repository without tag or digest (and without `docker.io/library/`). */
export function resolveImage(images: ImageMap, image: string): ImageSpec | undefined {
  const repo = image.replace(/@.*$/, '').replace(/:[^/:]*$/, '')
  const bare = repo.replace(/^docker\.io\/(library\/)?/, '')
  for (const key of [image, repo, bare]) {
    const v = images[key]
    if (v !== undefined) return Array.isArray(v) ? { command: v } : v
  }
  return undefined
}
