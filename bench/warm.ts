import { helloCode } from './bare.js'
import { runLoad, type LoadResult } from './load.js'
import type { BenchPlatform } from './platform.js'

/** What every load measurement needs: durations, and the bare reference measured once per connection count. */
export interface LoadContext {
  durationS: number
  warmupS: number
  bareSocket: string
  /** Longest wait for a quiet machine before each run, ms. */
  quietMs: number
  /** The bare server at `connections`, measured on first use and reused (the same run's reference). */
  bareRef(connections: number): Promise<LoadResult>
  progress(message: string): void
}

export interface WarmRow {
  target: string
  connections: number
  result: LoadResult
}

/** `hello` as the warm path measures it: code kept loaded, one instance taking every concurrent call like the bare server does. */
export const HELLO_SPEC = { code: helloCode('hello'), mode: 'persistent', prewarm: 1, concurrency: 64, maxInstances: 1 } as const

export function measureBare(ctx: LoadContext, connections: number): Promise<LoadResult> {
  ctx.progress(`bare server @${connections}`)
  return runLoad({
    url: 'http://localhost/',
    socketPath: ctx.bareSocket,
    connections,
    durationS: ctx.durationS,
    warmupS: ctx.warmupS,
    headers: { 'x-kindling-invocation-id': 'bench' },
    quietMs: ctx.quietMs,
  })
}

export function measureRouter(ctx: LoadContext, p: BenchPlatform, fn: string, connections: number, warmupS = ctx.warmupS): Promise<LoadResult> {
  ctx.progress(`router (${p.backend}) /fn/${fn} @${connections}`)
  return runLoad({ url: `${p.url}/fn/${fn}`, connections, durationS: ctx.durationS, warmupS, quietMs: ctx.quietMs })
}

export function measureNginx(ctx: LoadContext, port: number, connections: number): Promise<LoadResult> {
  ctx.progress(`nginx @${connections}`)
  return runLoad({ url: `http://127.0.0.1:${port}/`, connections, durationS: ctx.durationS, warmupS: ctx.warmupS, quietMs: ctx.quietMs })
}

export function measureFloor(ctx: LoadContext, port: number, connections: number): Promise<LoadResult> {
  ctx.progress(`floor (node:http + undici Pool) @${connections}`)
  return runLoad({ url: `http://127.0.0.1:${port}/`, connections, durationS: ctx.durationS, warmupS: ctx.warmupS, quietMs: ctx.quietMs })
}

export interface ModeRow {
  mode: 'ephemeral' | 'recycle'
  connections: number
  result: LoadResult
}

/**
 * Throughput of the modes that do work between calls, at 4 connections: `ephemeral` (an instance per call,
 * prewarm 4, at most 8 instances) and `recycle` (unload + load after each call, same pool settings).
 */
export async function measureModes(ctx: LoadContext, p: BenchPlatform, connections: number): Promise<ModeRow[]> {
  const rows: ModeRow[] = []
  for (const mode of ['ephemeral', 'recycle'] as const) {
    const name = `bench-${mode}`
    await p.deploy(name, { code: helloCode(name), mode, prewarm: 4, maxInstances: 8 })
    await p.settle()
    ctx.progress(`router (${p.backend}) ${mode} @${connections}`)
    try {
      rows.push({ mode, connections, result: await runLoad({ url: `${p.url}/fn/${name}`, connections, durationS: ctx.durationS, warmupS: ctx.warmupS, quietMs: ctx.quietMs }) })
    } finally {
      await p.remove(name)
      await p.settle()
    }
  }
  return rows
}
