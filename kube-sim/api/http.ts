import type { IncomingMessage, ServerResponse } from 'node:http'
import YAML from 'yaml'
import { ApiError, type KubeObject } from '../types.js'

/** The request and response plumbing of the stand-in's API server (issue 10). */
export const MAX_BODY_BYTES = 3 * 1024 * 1024

export async function readBody(req: IncomingMessage): Promise<string> {
  return (await readRaw(req)).toString('utf8')
}

export async function readRaw(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new ApiError(413, 'RequestEntityTooLarge', 'Request entity too large: limit is 3145728')
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}

/**
 * Bodies are JSON or YAML, or protobuf for the few kinds api/protobuf.ts knows (kubectl's generators send it).
 * CBOR is refused with 415 (clients only send it when their CBOR feature gate is on).
 */
export function checkBodyType(req: IncomingMessage): void {
  const ct = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
  if (ct === 'application/cbor' || ct === 'application/apply-patch+cbor' || (ct === 'application/vnd.kubernetes.protobuf' && req.method === 'PATCH')) {
    throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (the kindling stand-in does not decode ${ct}; use a manifest with kubectl apply -f or create -f)`)
  }
}

export function parseJson(text: string, yaml = false): unknown {
  if (text.trim() === '') return undefined
  try {
    return yaml ? YAML.parse(text) : JSON.parse(text)
  } catch (err) {
    throw new ApiError(400, 'BadRequest', `couldn't get version/kind; ${yaml ? 'yaml' : 'json'} parse error: ${(err as Error).message.split('\n')[0]}`)
  }
}

export function sendJson(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-cache, private' })
  res.end(text)
}

export function sendError(res: ServerResponse, err: unknown): void {
  const e = err instanceof ApiError ? err : new ApiError(500, 'InternalError', `Internal error occurred: ${(err as Error)?.message ?? String(err)}`)
  if (res.headersSent) { res.destroy(); return }
  sendJson(res, e.code, e.status())
}

export function success(name: string, kind: string, group?: string): KubeObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, ...(group ? { group } : {}), kind } }
}

/** `?x=1` / `?x=true` as the API reads booleans. */
export function flag(q: URLSearchParams, name: string): boolean {
  const v = q.get(name)
  return v === '1' || v === 'true'
}

export function intParam(q: URLSearchParams, name: string): number | undefined {
  const v = q.get(name)
  if (v === null || v === '') return undefined
  const n = Number(v)
  if (!Number.isInteger(n)) throw new ApiError(400, 'BadRequest', `invalid ${name}: ${v}`)
  return n
}
