-- Ingest a batch of events; each one atomically: dedup, merge into each record's
-- pending changes, and hand the record to a job when no job owns it. Such
-- records share jobs of at most "b" records: the job left open by the last run
-- while no worker has started it (amt:openjob), then fresh ones. One call per
-- batch (one script run, one argument to encode) is what
-- makes the hand-off cheap; events are taken in order, so a batch may hold the
-- same event or record twice.
--
-- KEYS         per event: its dedup key (amt:evt:<event_id>), then its record
--              keys (amt:rec:<topic>:<record_id>), one per record id
-- ARGV[1]      JSON: {"p": path ("ws" or "sqs"), "ttl": dedup ttl (s),
--                     "q": arq queue, "jt": arq job key ttl (ms), "fn": arq function,
--                     "b": most records per job,
--                     "track": 1 when both paths run (events seen on one path only
--                              are kept in amt:onepath until the other brings them),
--                     "e": [[trace context ("" if none), position key, org id, topic,
--                            number of records, [pending name, JSON value, ...],
--                            [record ids]], ...],
--                     "c": {counter: n, ...} (optional: more counts for amt:stats,
--                          such as the batch's rejected input, counted with it),
--                     "lf": the WebSocket leader's lease "<replica> <token>"
--                           (optional: the batch is taken only while it is the
--                           current lease, else {"fenced"} is returned)}
--
-- Counts each outcome in amt:stats as <outcome>:<path>:<topic>; a second arrival
-- on the other path also as cross:<first path>:<topic>, its lag kept in amt:lags.
-- Each merged record keeps the trace contexts of its events in field "l" (comma
-- separated, at most LINKS_MAX_CHARS), for the job span's parent and links.
-- Returns five values per event: outcome, first_path, first_ctx, scheduled (the
-- records it handed to a job), lag_ms; then the number of records pending
-- (amt:pending), which the capacity check reads. outcome: "first", "duplicate"
-- or "stale" (nothing newer than what is pending); lag_ms: the path lag of a
-- first arrival on the second path, else -1. An event without records (GAP_OVERFLOW) queues a resync job.

local LINKS_MAX_CHARS = 64 * 51
local spec = cjson.decode(ARGV[1])
if spec.lf and redis.call('GET', KEY.leader_ws) ~= spec.lf then
  return {'fenced'}
end
local path = spec.p
local ttl = spec.ttl
local queue = spec.q
local job_ttl = spec.jt
local fn = spec.fn
local track = spec.track == 1
local batch = spec.b
local now = now_ms()
local stats = {}
for key, n in pairs(spec.c or {}) do
  stats[key] = n
end
local out = {}
local k = 1
local open_job, open_recs, open_ids, reopened = nil, {}, {}, nil
local last_open, last_size = nil, 0

-- The job the last hand-off left open takes more records while no worker has
-- started it (no in-progress key, never tried, due): a record that arrives while
-- its job waits for a worker joins it instead of costing a job of its own. A
-- worker reads a job's records only after marking it in progress, so it sees
-- every record that joined before.
local held = redis.call('HGET', KEY.openjob, 'id')
if held and redis.call('EXISTS', arq_in_progress(held)) == 0
    and redis.call('EXISTS', arq_retry(held)) == 0 then
  local score = redis.call('ZSCORE', queue, held)
  local payload = score and tonumber(score) <= tonumber(now) and redis.call('GET', arq_job(held))
  if payload then
    local job = cjson.decode(payload)
    if job.f == fn and #job.a[1] < batch then
      open_job, open_ids, reopened = held, job.a[1], job
    end
  end
end

local function flush()
  if not open_job then
    return
  end
  -- The records already name the job (set as they joined): only the pending
  -- set and the job's payload are left to write.
  if #open_recs > 0 then
    redis.call('SADD', KEY.pending, unpack(open_recs))
    if reopened then
      reopened.a = {open_ids}
      redis.call('SET', arq_job(open_job), cjson.encode(reopened), 'KEEPTTL')
    else
      enqueue(queue, open_job, job_ttl, fn, {open_ids}, now)
    end
  end
  last_open, last_size = open_job, #open_ids
  open_job, open_recs, open_ids, reopened = nil, {}, {}, nil
end

-- The job the next record joins (its id is set on the record at once, so that
-- later events of this run see the record owned).
local function joining(rec, topic, record_id)
  if not open_job then
    open_job = next_job_id()
  end
  open_recs[#open_recs + 1] = rec
  open_ids[#open_ids + 1] = {topic, record_id}
  return open_job
end

local function count(key)
  stats[key] = (stats[key] or 0) + 1
end

local function emit(outcome, first_path, ctx, jobs, lag)
  out[#out + 1] = outcome
  out[#out + 1] = first_path
  out[#out + 1] = ctx
  out[#out + 1] = jobs
  out[#out + 1] = lag
end

for _, e in ipairs(spec.e) do
  local ctx, pos, org, topic, nrec, entries, ids = e[1], e[2], e[3], e[4], e[5], e[6], e[7]
  local evt = KEYS[k]
  local recs_at = k + 1
  k = k + 1 + nrec
  local event_id = string.sub(evt, 9)
  local first = redis.call('HMGET', evt, 'p', 't', 'c')
  if first[1] then
    local lag = -1
    if redis.call('HSETNX', evt, 'seen:' .. path, now) == 1 then
      -- The first arrival on this path, and another path was first.
      lag = tonumber(now) - tonumber(first[2])
      count('cross:' .. first[1] .. ':' .. topic)
      redis.call('LPUSH', KEY.lags, lag)
      redis.call('LTRIM', KEY.lags, 0, 999)
      redis.call('ZREM', KEY.onepath, first[1] .. ':' .. topic .. ':' .. event_id)
    end
    count('duplicate:' .. path .. ':' .. topic)
    emit('duplicate', first[1], first[3] or '', 0, lag)
  else
    redis.call('HSET', evt, 'p', path, 't', now, 'c', ctx, 'seen:' .. path, now)
    redis.call('EXPIRE', evt, ttl)
    if track then
      redis.call('ZADD', KEY.onepath, now, path .. ':' .. topic .. ':' .. event_id)
    end
    local n = #entries / 2
    local width = string.len(pos)
    local fields = {}
    for i = 1, n do
      fields[i] = 'f:' .. entries[2 * i - 1]
    end
    fields[n + 1] = 'l'
    fields[n + 2] = 'job'
    local merged_any = false
    local jobs = 0
    for r = 0, nrec - 1 do
      local rec = KEYS[recs_at + r]
      local cur = redis.call('HMGET', rec, unpack(fields))
      local update = {}
      for i = 1, n do
        local held = cur[i]
        if (not held) or string.sub(held, 1, width) < pos then
          update[#update + 1] = fields[i]
          update[#update + 1] = pos .. entries[2 * i]
        end
      end
      if #update > 0 then
        merged_any = true
        update[#update + 1] = 'org'
        update[#update + 1] = org
        if ctx ~= '' then
          local links = cur[n + 1]
          if not links then
            update[#update + 1] = 'l'
            update[#update + 1] = ctx
          elseif string.len(links) < LINKS_MAX_CHARS then
            update[#update + 1] = 'l'
            update[#update + 1] = links .. ',' .. ctx
          end
        end
        local joined = false
        if not cur[n + 2] then
          update[#update + 1] = 'job'
          update[#update + 1] = joining(rec, topic, ids[r + 1])
          jobs = jobs + 1
          joined = true
        end
        redis.call('HSET', rec, unpack(update))
        redis.call('HINCRBY', rec, 'ver', 1)
        if joined and #open_ids >= batch then
          flush()
        end
      end
    end
    if nrec == 0 then
      -- GAP_OVERFLOW: no record ids; the whole type is resynced from this position.
      enqueue(queue, 'resync:' .. event_id, job_ttl, 'resync_topic',
        {topic, pos, org, event_id}, now)
      jobs = 1
    end
    if merged_any or nrec == 0 then
      count('first:' .. path .. ':' .. topic)
      emit('first', path, '', jobs, -1)
    else
      count('stale:' .. path .. ':' .. topic)
      emit('stale', path, '', 0, -1)
    end
  end
end

flush()
if last_open and last_size < batch then
  redis.call('HSET', KEY.openjob, 'id', last_open)
elseif last_open then
  redis.call('DEL', KEY.openjob)
end
for key, n in pairs(stats) do
  redis.call('HINCRBY', KEY.stats, key, n)
end
out[#out + 1] = redis.call('SCARD', KEY.pending)
return out
