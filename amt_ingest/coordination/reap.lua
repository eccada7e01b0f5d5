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
  if redis.call('EXISTS', arq_job(job)) == 1 or redis.call('EXISTS', arq_in_progress(job)) == 1 then
    return ''
  end
end
return new_job(rec, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
