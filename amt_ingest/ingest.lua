-- Ingest one event atomically: dedup, merge into each record's pending changes,
-- and hand the record to a fresh arq job when no job owns it.
--
-- KEYS[1]      dedup key of the event (amt:evt:<event_id>)
-- KEYS[2..]    record keys (amt:rec:<topic>:<record_id>), one per record id
-- ARGV[1]      path that delivered it ("ws" or "sqs")
-- ARGV[2]      dedup ttl (seconds)
-- ARGV[3]      trace context of this arrival ("" if none)
-- ARGV[4]      position key (fixed width, string order = time order)
-- ARGV[5]      org id
-- ARGV[6]      topic
-- ARGV[7]      arq queue name
-- ARGV[8]      arq job key ttl (ms)
-- ARGV[9]      arq function name
-- ARGV[10]     "1": both paths run, so track events seen on one path only
-- ARGV[11]     number of pending entries n
-- ARGV[12..]   n pairs: pending field name, JSON value
-- ARGV[12+2n..] the record ids, in KEYS order
--
-- Counts the outcome in amt:stats as <outcome>:<path>:<topic>; a second arrival
-- on the other path also as cross:<first path>:<topic>, its lag kept in amt:lags.
-- Each merged record keeps the trace contexts of its events in field "l" (comma
-- separated, at most LINKS_MAX), for the job span's parent and links.
-- Returns {outcome, first_path, first_ms, first_ctx, jobs_created, lag_ms}
-- outcome: "first", "duplicate" or "stale" (nothing newer than what is pending);
-- lag_ms: the path lag for a first arrival on the second path, else -1.
-- An event without records (GAP_OVERFLOW) queues a resync job of its type.

local LINKS_MAX_CHARS = 64 * 51
local evt = KEYS[1]
local path = ARGV[1]
local now = now_ms()

local first = redis.call('HMGET', evt, 'p', 't', 'c')
if first[1] then
  local lag = -1
  if redis.call('HSETNX', evt, 'seen:' .. path, now) == 1 then
    -- The first arrival on this path, and another path was first.
    lag = now - tonumber(first[2])
    redis.call('HINCRBY', 'amt:stats', 'cross:' .. first[1] .. ':' .. ARGV[6], 1)
    redis.call('LPUSH', 'amt:lags', lag)
    redis.call('LTRIM', 'amt:lags', 0, 999)
    redis.call('ZREM', 'amt:onepath', first[1] .. ':' .. ARGV[6] .. ':' .. string.sub(evt, 9))
  end
  redis.call('HINCRBY', 'amt:stats', 'duplicate:' .. path .. ':' .. ARGV[6], 1)
  return {'duplicate', first[1], first[2], first[3] or '', 0, lag}
end
redis.call('HSET', evt, 'p', path, 't', now, 'c', ARGV[3], 'seen:' .. path, now)
redis.call('EXPIRE', evt, tonumber(ARGV[2]))
if ARGV[10] == '1' then
  redis.call('ZADD', 'amt:onepath', now, path .. ':' .. ARGV[6] .. ':' .. string.sub(evt, 9))
end
local ctx = ARGV[3]

local pos = ARGV[4]
local org = ARGV[5]
local topic = ARGV[6]
local queue = ARGV[7]
local job_ttl = ARGV[8]
local fn = ARGV[9]
local n = tonumber(ARGV[11])
local ids_at = 12 + 2 * n
local width = string.len(pos)
local merged_any = false
local jobs = 0

for k = 2, #KEYS do
  local rec = KEYS[k]
  local merged = false
  for i = 0, n - 1 do
    local hk = 'f:' .. ARGV[12 + 2 * i]
    local cur = redis.call('HGET', rec, hk)
    if (not cur) or string.sub(cur, 1, width) < pos then
      redis.call('HSET', rec, hk, pos .. ARGV[13 + 2 * i])
      merged = true
    end
  end
  if merged then
    merged_any = true
    redis.call('HINCRBY', rec, 'ver', 1)
    redis.call('HSET', rec, 'org', org)
    if ctx ~= '' then
      local links = redis.call('HGET', rec, 'l')
      if not links then
        redis.call('HSET', rec, 'l', ctx)
      elseif string.len(links) < LINKS_MAX_CHARS then
        redis.call('HSET', rec, 'l', links .. ',' .. ctx)
      end
    end
    if not redis.call('HGET', rec, 'job') then
      new_job(rec, queue, job_ttl, fn, topic, ARGV[ids_at + k - 2])
      jobs = jobs + 1
    end
  end
end

if #KEYS == 1 then
  -- GAP_OVERFLOW: no record ids; the whole type is resynced from this position.
  local event_id = string.sub(evt, 9)
  enqueue(queue, 'resync:' .. event_id, job_ttl, 'resync_topic', {topic, pos, org, event_id})
  jobs = 1
end

if merged_any or #KEYS == 1 then
  redis.call('HINCRBY', 'amt:stats', 'first:' .. path .. ':' .. topic, 1)
  return {'first', path, now, '', jobs, -1}
end
redis.call('HINCRBY', 'amt:stats', 'stale:' .. path .. ':' .. topic, 1)
return {'stale', path, now, '', 0, -1}
