-- A job finished applying what it read from a record: drop the pending entries
-- it applied (unless a newer change replaced them meanwhile), then release the
-- record, or hand it to a fresh job if changes arrived while it ran.
--
-- KEYS[1]    record key
-- KEYS[2]    lease key of the record (released here)
-- ARGV[1]    the finishing job's id (must still own the record)
-- ARGV[2]    the change counter the job read
-- ARGV[3]    arq queue name
-- ARGV[4]    arq job key ttl (ms)
-- ARGV[5]    arq function name
-- ARGV[6]    topic
-- ARGV[7]    record id
-- ARGV[8]    the run's lease token (the lease is dropped only if it is still this run's)
-- ARGV[9]    the trace contexts ("l") the job read; they are dropped, later ones kept
-- ARGV[10..] pairs: pending hash key, the exact value the job applied
--
-- Returns {status, next_job_id}: status "released", "handed_over" or "not_owner".

local rec = KEYS[1]
if redis.call('GET', KEYS[2]) == ARGV[8] then
  redis.call('DEL', KEYS[2])
end
if redis.call('HGET', rec, 'job') ~= ARGV[1] then
  return {'not_owner', ''}
end
for i = 10, #ARGV, 2 do
  if redis.call('HGET', rec, ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', rec, ARGV[i])
  end
end
if redis.call('HGET', rec, 'ver') == ARGV[2] then
  redis.call('DEL', rec)
  redis.call('ZREM', 'amt:retrying', rec)
  return {'released', ''}
end
redis.call('HDEL', rec, 'fail', 'failed_at', 'retry_delay')
redis.call('ZREM', 'amt:retrying', rec)
local read = ARGV[9]
local links = redis.call('HGET', rec, 'l')
if links and read ~= '' and string.sub(links, 1, string.len(read)) == read then
  local rest = string.sub(links, string.len(read) + 2)
  if rest == '' then
    redis.call('HDEL', rec, 'l')
  else
    redis.call('HSET', rec, 'l', rest)
  end
end
return {'handed_over', new_job(rec, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])}
