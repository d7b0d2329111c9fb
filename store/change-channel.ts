import type { Redis } from 'ioredis'
import { redisCall } from './redis-conn.js'

export interface ChangeChannelOptions<T> {
  /** A connection of its own: a subscribed connection takes no other command. */
  subscriber: Redis
  /** The full channel name (prefix included). */
  channel: string
  /** A message as a change, or undefined to drop it (malformed, or one this replica ignores). */
  parse: (text: string) => T | undefined
  /** A resync is asked this often even without a reconnect. @default 30000 */
  resyncEveryMs?: number | undefined
}

/**
 * One Redis pub/sub channel of changes (issue 11), as every shared store listens to one: each message parsed and
 * handed on, and `resync` asked after every reconnect of the subscription (ioredis subscribes again by itself,
 * but what was published meanwhile is lost) and periodically, so a missed message is never missed for long.
 */
export class ChangeChannel<T> {
  readonly #o: ChangeChannelOptions<T>
  readonly #listeners = new Set<(c: T | { kind: 'resync' }) => void>()
  readonly #timer: NodeJS.Timeout
  #subscribed = false

  private constructor(o: ChangeChannelOptions<T>) {
    this.#o = o
    o.subscriber.on('message', (channel: string, text: string) => {
      if (channel !== o.channel) return
      const c = o.parse(text)
      if (c !== undefined) this.#tell(c)
    })
    o.subscriber.on('ready', () => {
      // The PING is answered after the renewed SUBSCRIBE: a resync read after it misses nothing published since.
      if (this.#subscribed) void o.subscriber.ping().then(() => this.#tell({ kind: 'resync' }), () => {})
    })
    this.#timer = setInterval(() => this.#tell({ kind: 'resync' }), o.resyncEveryMs ?? 30_000)
    this.#timer.unref()
  }

  /** Resolves once the channel is subscribed. */
  static async open<T>(o: ChangeChannelOptions<T>): Promise<ChangeChannel<T>> {
    const ch = new ChangeChannel(o)
    try {
      await redisCall(`subscribing to ${o.channel}`, () => o.subscriber.subscribe(o.channel))
    } catch (err) {
      ch.close()
      throw err
    }
    ch.#subscribed = true
    return ch
  }

  on(listener: (c: T | { kind: 'resync' }) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Stops the timer and the subscription (its connection is closed). */
  close(): void {
    clearInterval(this.#timer)
    this.#listeners.clear()
    this.#o.subscriber.disconnect()
  }

  #tell(c: T | { kind: 'resync' }): void {
    for (const l of this.#listeners) l(c)
  }
}
