-- A job run ends without applying some of its records (the write failed, or the
-- operator's throttle holds their retry): count a failure on each (unless only
-- throttled), drop this run's leases, and either leave them with the job (arq
-- reruns it) or hand them to one fresh job due after the delay.
--
-- KEYS       per record: record key, lease key of the record
-- ARGV[1]    the job's id (must still own each record)
-- ARGV[2]    the run's lease token
-- ARGV[3]    "1" to count a failure, "0" not to
-- ARGV[4]    retry delay (s) kept with the failure (the throttle scales it)
-- ARGV[5]    "" to leave the records with this job, else the arq queue name of
--            the fresh job
-- ARGV[6]    arq job key ttl (ms)
-- ARGV[7]    arq function name
-- ARGV[8]    the fresh job's delay (ms)
-- ARGV[9..]  per record: topic, record id
--
-- Returns {next_job_id ("" if none), failures per record (-1: not owned)}.

local job, token, count = ARGV[1], ARGV[2], ARGV[3] == '1'
local queue = ARGV[5]
local now = now_ms()
local out = {''}
local moved_recs, moved_ids = {}, {}
for i = 1, #KEYS / 2 do
  local rec, lease = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('GET', lease) == token then
    redis.call('DEL', lease)
  end
  if redis.call('HGET', rec, 'job') ~= job then
    out[#out + 1] = -1
  else
    local failures = tonumber(redis.call('HGET', rec, 'fail') or '0')
    if count then
      failures = redis.call('HINCRBY', rec, 'fail', 1)
      redis.call('HSET', rec, 'failed_at', now, 'retry_delay', ARGV[4])
      redis.call('ZADD', KEY.retrying, now, rec)
    end
    out[#out + 1] = failures
    if queue ~= '' then
      moved_recs[#moved_recs + 1] = rec
      moved_ids[#moved_ids + 1] = {ARGV[7 + 2 * i], ARGV[8 + 2 * i]}
    end
  end
end
if #moved_recs > 0 then
  out[1] = next_job_id()
  start_job(out[1], moved_recs, moved_ids, queue, ARGV[6], ARGV[7], now,
    string.format('%d', tonumber(now) + tonumber(ARGV[8])))
end
return out
