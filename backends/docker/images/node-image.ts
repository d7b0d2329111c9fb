import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { promisify } from 'node:util'
import type Dockerode from 'dockerode'
import { create as createTar } from 'tar'
import { KdlError } from '../../../common/errors.js'
import { IMAGE_NODE, IMAGE_PATH, RUNTIME_DIR, assembleNodeRootfs, imageVersion } from './rootfs.js'

const run = promisify(execFile)

/** Repository of the node runtime image built from the host (`kindling/runtime-node:<version>`). */
export const NODE_IMAGE_REPO = 'kindling/runtime-node'
/** Bumped when the image layout changes, so an unchanged server still gets a new tag. */
const LAYOUT = '1'

/** Progress of a build (`kindling up` shows it): a constant message plus fields. */
export type ImageLog = (message: string, fields?: Record<string, unknown>) => void

export interface NodeImageOptions {
  docker: Dockerode
  /** Directory of the runtime server (`runtimes/node`, holding `server.mjs`). */
  serverDir: string
  /** Host node binary copied into the image. @default process.execPath */
  nodeBin?: string | undefined
  /** Full tag; by default `kindling/runtime-node:<version>` (see {@link nodeImageTag}). */
  tag?: string | undefined
  /** Where the root filesystem is assembled. @default os.tmpdir() */
  workDir?: string | undefined
  log?: ImageLog | undefined
}

export interface NodeImageResult {
  tag: string
  /** False when the tag already existed and nothing was built. */
  built: boolean
  /** Build time (assembly + import), ms; 0 when not built. */
  ms: number
  /** Image size as the engine reports it, bytes. */
  size: number
}

async function nodeVersion(nodeBin: string): Promise<string> {
  try {
    const { stdout } = await run(nodeBin, ['--version'], { env: { PATH: IMAGE_PATH } })
    return stdout.trim()
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `cannot run ${nodeBin} --version`, { cause: err })
  }
}

/**
 * The tag an image of these inputs gets: `kindling/runtime-node:<12 hex>`, a hash of the server files and the
 * node version, so a changed server (or node) makes a new tag and an unchanged one reuses the image.
 */
export async function nodeImageTag(serverDir: string, nodeBin: string = process.execPath): Promise<string> {
  return `${NODE_IMAGE_REPO}:${await imageVersion(serverDir, await nodeVersion(nodeBin), LAYOUT)}`
}

/** Dockerfile instructions applied on import (the image has no shell, so exec forms only). */
function imageChanges(version: string): string[] {
  return [
    `ENTRYPOINT ["${IMAGE_NODE}", "${RUNTIME_DIR}/server.mjs"]`,
    'USER 65534:65534',
    'WORKDIR /tmp',
    `ENV PATH=${IMAGE_PATH}`,
    `LABEL kindling.image=runtime-node kindling.image.version=${version}`,
  ]
}

async function imageSize(docker: Dockerode, tag: string): Promise<number | undefined> {
  try {
    return (await docker.getImage(tag).inspect()).Size
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return undefined
    throw new KdlError('KDL_ERR_BACKEND', `cannot inspect image ${tag}`, { cause: err })
  }
}

/** Reads an engine progress stream to its end; an `error` line fails it. */
function followProgress(docker: Dockerode, stream: NodeJS.ReadableStream): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve, reject) => {
    docker.modem.followProgress(stream, (err: Error | null, output: Array<Record<string, unknown>>) => {
      if (err) return reject(err)
      const failed = output.find((o) => o['error'] !== undefined || o['errorDetail'] !== undefined)
      if (failed !== undefined) return reject(new Error(String(failed['error'] ?? JSON.stringify(failed['errorDetail']))))
      resolve(output)
    })
  })
}

/**
 * Builds the node runtime image without a registry: assembles a root filesystem from the host's node binary and
 * its libraries plus the server files, tars it and imports it (`POST /images/create?fromSrc=-`).
 */
export async function buildNodeImage(opts: NodeImageOptions): Promise<NodeImageResult> {
  const { docker } = opts
  const nodeBin = opts.nodeBin ?? process.execPath
  const log = opts.log ?? (() => {})
  const t0 = performance.now()
  const version = await imageVersion(opts.serverDir, await nodeVersion(nodeBin), LAYOUT)
  const tag = opts.tag ?? `${NODE_IMAGE_REPO}:${version}`
  const [repo, imageTag] = splitTag(tag)
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), 'kindling-image-'))
  try {
    log('assembling runtime image root filesystem', { tag, nodeBin })
    const root = join(work, 'rootfs')
    const bytes = await assembleNodeRootfs(root, { nodeBin, serverDir: opts.serverDir })
    log('importing runtime image', { tag, mb: Math.round(bytes / 1048576) })
    // The top-level entries (not "."), so the image root keeps the engine's own mode.
    const tarStream = Readable.from(createTar({ cwd: root, portable: false }, await readdir(root)))
    const importErr = new Promise<never>((_resolve, reject) => { tarStream.on('error', reject) })
    importErr.catch(() => {})
    try {
      const res = await Promise.race([docker.importImage(tarStream, { repo, tag: imageTag, changes: imageChanges(version) }), importErr])
      await Promise.race([followProgress(docker, res), importErr])
    } catch (err) {
      throw new KdlError('KDL_ERR_BACKEND', `cannot import runtime image ${tag}: ${(err as Error).message}`, { cause: err })
    }
    const size = await imageSize(docker, tag)
    if (size === undefined) throw new KdlError('KDL_ERR_BACKEND', `runtime image ${tag} is missing after import`)
    const ms = Math.round(performance.now() - t0)
    log('runtime image built', { tag, ms, mb: Math.round(size / 1048576) })
    return { tag, built: true, ms, size }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/** Returns the node runtime image for these inputs, building it only when its tag is missing. */
export async function ensureNodeImage(opts: NodeImageOptions): Promise<NodeImageResult> {
  const tag = opts.tag ?? await nodeImageTag(opts.serverDir, opts.nodeBin ?? process.execPath)
  const size = await imageSize(opts.docker, tag)
  if (size !== undefined) {
    opts.log?.('runtime image present', { tag })
    return { tag, built: false, ms: 0, size }
  }
  return buildNodeImage({ ...opts, tag })
}

/**
 * Removes the images of `repo` other than `keep` (earlier server versions), leaving any a container still uses.
 * Returns the tags removed.
 */
export async function removeStaleNodeImages(opts: { docker: Dockerode; keep: string; repo?: string | undefined; log?: ImageLog | undefined }): Promise<string[]> {
  const repo = opts.repo ?? NODE_IMAGE_REPO
  const removed: string[] = []
  let images: Dockerode.ImageInfo[]
  try {
    images = await opts.docker.listImages({ filters: { reference: [repo] } })
  } catch (err) {
    throw new KdlError('KDL_ERR_BACKEND', `cannot list ${repo} images`, { cause: err })
  }
  for (const img of images) {
    for (const tag of img.RepoTags ?? []) {
      if (tag === opts.keep || !tag.startsWith(`${repo}:`)) continue
      try {
        await opts.docker.getImage(tag).remove()
        removed.push(tag)
        opts.log?.('removed stale runtime image', { tag })
      } catch (err) {
        // 409: a container (running or not) still uses it; it goes once the container does.
        if ((err as { statusCode?: number }).statusCode !== 409 && (err as { statusCode?: number }).statusCode !== 404) {
          throw new KdlError('KDL_ERR_BACKEND', `cannot remove image ${tag}`, { cause: err })
        }
      }
    }
  }
  return removed
}

function splitTag(tag: string): [string, string] {
  const colon = tag.lastIndexOf(':')
  // A colon before the last "/" belongs to a registry host:port, not to the tag.
  if (colon <= tag.lastIndexOf('/')) return [tag, 'latest']
  return [tag.slice(0, colon), tag.slice(colon + 1)]
}
