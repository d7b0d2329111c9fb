import type { PersistenceMode } from './types.js'

/** What a function's persistence mode needs to know to decide an instance's fate after a call. */
export interface ModeLimits {
  mode: PersistenceMode
  /** Recycle mode: calls an instance serves, and how long it lives, before it is retired. */
  maxInvocations: number
  maxAgeMs: number
}

/** After a call that ended well: the instance takes the next call (`keep`), or goes, and why. */
export type AfterCall = 'keep' | 'ephemeral' | 'max-invocations' | 'max-age'

/**
 * The one place the persistence modes are decided (issue 8): `ephemeral` instances go after their call;
 * `persistent` ones stay; `recycle` ones stay — their runtime renews the function by itself (PROTOCOL
 * §4.4) — until they have served `maxInvocations` calls or lived `maxAgeMs`. The router applies the
 * answer; the executor destroys what the router gives back.
 */
export function afterCall(limits: ModeLimits, calls: number, ageMs: number): AfterCall {
  switch (limits.mode) {
    case 'ephemeral':
      return 'ephemeral'
    case 'recycle':
      if (calls >= limits.maxInvocations) return 'max-invocations'
      if (ageMs >= limits.maxAgeMs) return 'max-age'
      return 'keep'
    case 'persistent':
      return 'keep'
  }
}
