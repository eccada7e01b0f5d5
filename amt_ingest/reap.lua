-- Recover a record whose owning job no longer exists in arq (a job that failed
-- outside our code, expired, or was lost): give it a fresh job.
--
-- KEYS[1]    record key
-- ARGV[1]    arq queue name
-- ARGV[2]    arq job key ttl (ms)
-- ARGV[3]    arq function name
-- ARGV[4]    topic
-- ARGV[5]    record id
--
-- Returns the new job id, or "" when the record is fine (or gone).

local rec = KEYS[1]
if redis.call('EXISTS', rec) == 0 then
  return ''
end
local job = redis.call('HGET', rec, 'job')
if job then
  if redis.call('EXISTS', 'arq:job:' .. job) == 1 or redis.call('EXISTS', 'arq:in-progress:' .. job) == 1 then
    return ''
  end
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local job_id = 'r:' .. redis.call('INCR', 'amt:jobseq')
redis.call('HSET', rec, 'job', job_id)
redis.call('PSETEX', 'arq:job:' .. job_id, ARGV[2],
  '{"t":null,"f":' .. cjson.encode(ARGV[3]) .. ',"a":' .. cjson.encode({ARGV[4], ARGV[5]}) ..
  ',"k":{},"et":' .. now .. '}')
redis.call('ZADD', ARGV[1], now, job_id)
return job_id
