-- Shared by the scripts that hand a record to a job (prepended to each of them).
--
-- now_ms(): Redis server time in milliseconds, as a string of digits.
-- enqueue(queue, job_id, ttl_ms, fn, args[, now]): queue an arq job (JSON serializer).
-- new_job(rec, queue, ttl_ms, fn, topic, record_id[, now]): a fresh job id owns the
-- record and an arq job for it is queued (arq's job key and queue entry,
-- written here so that state change and enqueue are one atomic step).

local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end

local function enqueue(queue, job_id, ttl_ms, fn, args, at)
  local now = at or now_ms()
  redis.call('PSETEX', 'arq:job:' .. job_id, ttl_ms,
    '{"t":null,"f":' .. cjson.encode(fn) .. ',"a":' .. cjson.encode(args) ..
    ',"k":{},"et":' .. now .. '}')
  redis.call('ZADD', queue, now, job_id)
end

local function new_job(rec, queue, ttl_ms, fn, topic, record_id, at)
  local job_id = 'r:' .. redis.call('INCR', 'amt:jobseq')
  redis.call('HSET', rec, 'job', job_id)
  enqueue(queue, job_id, ttl_ms, fn, {topic, record_id}, at)
  return job_id
end

