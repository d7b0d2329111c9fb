/** Serialises async work per key: in one process (KeyedMutex) or across the replicas of one store (cluster/locks.ts). */
export interface Locks {
  run<T>(key: string, work: () => Promise<T>): Promise<T>
}

/** Serialises async work per key (one deploy of a name at a time), without blocking other keys. */
export class KeyedMutex implements Locks {
  readonly #tails = new Map<string, Promise<unknown>>()

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve()
    const next = prev.then(work, work)
    const tail = next.catch(() => {})
    this.#tails.set(key, tail)
    try {
      return await next
    } finally {
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }
}
