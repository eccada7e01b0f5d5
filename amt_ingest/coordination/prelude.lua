-- Prepended to every script of the gateway (coordination/scripts.py).
--
-- KEY: the fixed key names (coordination/keys.py names the same ones).
-- arq_job(id), arq_in_progress(id), arq_retry(id): arq's keys of a job (arq 0.28's
--   layout, written and read here only, and by coordination/arqjobs.py).
-- now_ms(): Redis server time in milliseconds, as a string of digits.
-- enqueue(queue, job_id, ttl_ms, fn, args[, now[, due]]): queue an arq job (JSON
--   serializer), to run at ``due`` (ms) or at once.
-- next_job_id(): a fresh job id.
-- start_job(job_id, recs, ids, queue, ttl_ms, fn[, now[, due]]): the job owns the
--   records (keys ``recs``, ``ids`` = {{topic, record id}, ...}), they count as
--   pending (KEY.pending), and its arq job is queued: state change and enqueue
--   are one atomic step.
-- new_job(rec, queue, ttl_ms, fn, topic, record_id[, now]): start_job for one record.
-- merge_pending(rec, args, from, org, queue, ttl_ms, fn, topic, record_id): merge the
--   triples args[from..] (pending field name, position, JSON value) into the record's
--   pending changes, newest position wins per field; if any was newer, count a
--   change, give the record its org if it has none, and a job if none owns it.
--   Returns how many triples were merged.

local KEY = {
  pending = 'amt:pending',
  jobseq = 'amt:jobseq',
  openjob = 'amt:openjob',
  fenceseq = 'amt:fenceseq',
  stats = 'amt:stats',
  retrying = 'amt:retrying',
  onepath = 'amt:onepath',
  lags = 'amt:lags',
  leader_ws = 'amt:leader:ws',
}

local function arq_job(job_id)
  return 'arq:job:' .. job_id
end

local function arq_in_progress(job_id)
  return 'arq:in-progress:' .. job_id
end

local function arq_retry(job_id)
  return 'arq:retry:' .. job_id
end

local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end

local function enqueue(queue, job_id, ttl_ms, fn, args, at, due)
  local now = at or now_ms()
  redis.call('PSETEX', arq_job(job_id), ttl_ms,
    '{"t":null,"f":' .. cjson.encode(fn) .. ',"a":' .. cjson.encode(args) ..
    ',"k":{},"et":' .. now .. '}')
  redis.call('ZADD', queue, due or now, job_id)
end

local function next_job_id()
  return 'r:' .. redis.call('INCR', KEY.jobseq)
end

local function start_job(job_id, recs, ids, queue, ttl_ms, fn, at, due)
  for i = 1, #recs do
    redis.call('HSET', recs[i], 'job', job_id)
  end
  redis.call('SADD', KEY.pending, unpack(recs))
  enqueue(queue, job_id, ttl_ms, fn, {ids}, at, due)
end

local function new_job(rec, queue, ttl_ms, fn, topic, record_id, at)
  local job_id = next_job_id()
  start_job(job_id, {rec}, {{topic, record_id}}, queue, ttl_ms, fn, at)
  return job_id
end

local function merge_pending(rec, args, from, org, queue, ttl_ms, fn, topic, record_id)
  local merged = 0
  for i = from, #args, 3 do
    local hk = 'f:' .. args[i]
    local pos = args[i + 1]
    local cur = redis.call('HGET', rec, hk)
    if (not cur) or string.sub(cur, 1, string.len(pos)) < pos then
      redis.call('HSET', rec, hk, pos .. args[i + 2])
      merged = merged + 1
    end
  end
  if merged > 0 then
    redis.call('HINCRBY', rec, 'ver', 1)
    redis.call('HSETNX', rec, 'org', org)
    if not redis.call('HGET', rec, 'job') then
      new_job(rec, queue, ttl_ms, fn, topic, record_id)
    end
  end
  return merged
end
