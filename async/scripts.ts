import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'

/**
 * A Lua script run by its SHA (EVALSHA), loaded on first use and again after a Redis restart (NOSCRIPT).
 * Every step of a job that touches more than one key is one of these: Redis runs a script atomically.
 */
export class Script {
  readonly #text: string
  readonly #sha: string

  constructor(text: string) {
    this.#text = text
    this.#sha = createHash('sha1').update(text).digest('hex')
  }

  async run(redis: Redis, keys: readonly string[], args: ReadonlyArray<string | number | Buffer>): Promise<unknown> {
    try {
      return await redis.evalsha(this.#sha, keys.length, ...keys, ...args)
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
      return redis.eval(this.#text, keys.length, ...keys, ...args)
    }
  }
}

/**
 * Enqueue. KEYS: job, stream[, idempotency key]. ARGV: id, idempotency TTL (s), then the job's field/value pairs.
 * With an idempotency key already set, nothing is written and the earlier id is returned.
 */
export const ENQUEUE = new Script(`
if #KEYS == 3 then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {prior, 1} end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
return {ARGV[1], 0}
`)

/** Moves a job onto the dead-letter stream (shared by START and SETTLE). Needs jk, dlq, now, jobId, error JSON. */
const DEAD = `
local function dead(jk, dlq, now, jobId, err)
  local fn = redis.call('HGET', jk, 'function')
  local eid = redis.call('XADD', dlq, '*', 'job', jobId, 'function', fn, 'error', err, 'at', now)
  redis.call('HSET', jk, 'state', 'dead', 'finishedAt', now, 'error', err, 'dlqEntry', eid)
  redis.call('HDEL', jk, 'nextAttemptAt')
end
`

/**
 * Start of a delivery. KEYS: stream, dlq. ARGV: group, entry id, consumer, job key, now, job id, error JSON (if it is
 * out of attempts), error JSON (if it is past its max age).
 * Returns {'run', deliveryCount, attempt, readyAt} | {'lost'} (not this consumer's any more) | {'gone'} (settled or
 * expired: the entry is dropped) | {'dead'}.
 */
export const START = new Script(DEAD + `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return {'lost'} end
local jk = ARGV[4]
local state = redis.call('HGET', jk, 'state')
if state ~= 'queued' and state ~= 'running' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  return {'gone'}
end
local now = tonumber(ARGV[5])
local attempts = tonumber(redis.call('HGET', jk, 'attempts'))
local maxAttempts = tonumber(redis.call('HGET', jk, 'maxAttempts'))
local deadline = tonumber(redis.call('HGET', jk, 'deadline'))
if attempts >= maxAttempts or now > deadline then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  local err = ARGV[7]
  if attempts < maxAttempts then err = ARGV[8] end
  local last = redis.call('HGET', jk, 'lastError')
  if last and attempts >= maxAttempts then err = last end
  dead(jk, KEYS[2], ARGV[5], ARGV[6], err)
  return {'dead'}
end
attempts = attempts + 1
redis.call('HSET', jk, 'state', 'running', 'attempts', attempts, 'startedAt', ARGV[5], 'worker', ARGV[3])
local readyAt = redis.call('HGET', jk, 'readyAt') or ARGV[5]
return {'run', p[1][4], attempts, readyAt}
`)

/**
 * Settle of a delivery, only by its current owner: XPENDING must show the entry still pending, owned by this
 * consumer, with the delivery count this worker saw at its start. Else 'lost', and nothing changes.
 * KEYS: stream, delayed, dlq. ARGV: group, entry id, consumer, delivery count, job key, now, kind
 * (succeeded|failed|retry), result JSON, error JSON, due time (retry), retention (s), job id.
 * Returns 'succeeded' | 'failed' | 'retried' | 'dead' | 'lost'.
 */
export const SETTLE = new Script(DEAD + `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then return 'lost' end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local jk = ARGV[5]
if redis.call('EXISTS', jk) == 0 then return 'lost' end
local kind = ARGV[7]
if kind == 'succeeded' or kind == 'failed' then
  redis.call('HSET', jk, 'state', kind, 'finishedAt', ARGV[6], 'result', ARGV[8])
  if kind == 'failed' then redis.call('HSET', jk, 'error', ARGV[9]) end
  redis.call('EXPIRE', jk, ARGV[11])
  return kind
end
local attempts = tonumber(redis.call('HGET', jk, 'attempts'))
local maxAttempts = tonumber(redis.call('HGET', jk, 'maxAttempts'))
local deadline = tonumber(redis.call('HGET', jk, 'deadline'))
local due = tonumber(ARGV[10])
if attempts < maxAttempts and due <= deadline then
  redis.call('HSET', jk, 'state', 'queued', 'lastError', ARGV[9], 'nextAttemptAt', ARGV[10], 'readyAt', ARGV[10])
  if ARGV[8] ~= '' then redis.call('HSET', jk, 'result', ARGV[8]) end
  redis.call('ZADD', KEYS[2], due, ARGV[12])
  return 'retried'
end
if ARGV[8] ~= '' then redis.call('HSET', jk, 'result', ARGV[8]) end
dead(jk, KEYS[3], ARGV[6], ARGV[12], ARGV[9])
return 'dead'
`)

/** Due retries back onto the stream. KEYS: delayed, stream. ARGV: now, limit. A job moves once: ZREM decides. */
export const PROMOTE = new Script(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], id) == 1 then redis.call('XADD', KEYS[2], '*', 'job', id) end
end
return #due
`)

/**
 * Reclaims deliveries idle past their job's own reclaim time. KEYS: stream. ARGV: group, consumer, smallest
 * reclaim time (ms), job key prefix, count. Returns {entry id, job id, ...} now owned by `consumer`.
 * XCLAIM with the job's own min-idle re-checks the idle time (and bumps the delivery count) atomically.
 */
export const RECLAIM = new Script(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[3]), '-', '+', tonumber(ARGV[5]))
local out = {}
for _, e in ipairs(p) do
  local eid = e[1]
  local r = redis.call('XRANGE', KEYS[1], eid, eid)
  local jobId = r[1] and r[1][2][2]
  local reclaimMs = jobId and tonumber(redis.call('HGET', ARGV[4] .. jobId, 'reclaimMs'))
  if not reclaimMs then
    redis.call('XACK', KEYS[1], ARGV[1], eid)
    redis.call('XDEL', KEYS[1], eid)
  elseif tonumber(e[3]) >= reclaimMs then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], reclaimMs, eid)
    if #c > 0 then
      table.insert(out, eid)
      table.insert(out, jobId)
    end
  end
end
return out
`)

/**
 * Redrive of a dead job: back onto the stream with its attempts reset and a new max-age window; same id.
 * KEYS: job, stream, dlq. ARGV: now, job id. Returns 1, or 0 when the job is not dead.
 */
export const REDRIVE = new Script(`
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
local e = redis.call('HGET', KEYS[1], 'dlqEntry')
if e then redis.call('XDEL', KEYS[3], e) end
local maxAge = tonumber(redis.call('HGET', KEYS[1], 'maxAgeMs'))
redis.call('HDEL', KEYS[1], 'finishedAt', 'error', 'result', 'startedAt', 'dlqEntry', 'nextAttemptAt', 'lastError', 'worker')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'redrivenAt', ARGV[1], 'readyAt', ARGV[1], 'deadline', tonumber(ARGV[1]) + maxAge)
redis.call('PERSIST', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
return 1
`)

/** Purge of a dead job: its record and its DLQ entry. KEYS: job, dlq. Returns 1, or 0 when the job is not dead. */
export const PURGE = new Script(`
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
local e = redis.call('HGET', KEYS[1], 'dlqEntry')
if e then redis.call('XDEL', KEYS[2], e) end
redis.call('DEL', KEYS[1])
return 1
`)

/** Removes a consumer from the group when it holds no pending entry (a stopping replica). KEYS: stream. ARGV: group, consumer. */
export const LEAVE = new Script(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`)
