-- A job run finished applying what it read from its records: for each record,
-- drop the pending entries it applied (unless a newer change replaced them
-- meanwhile), then release the record, or, if changes arrived while it ran,
-- hand it over: every record handed over goes to one fresh job.
--
-- KEYS       per record: record key, lease key of the record (released here)
-- ARGV[1]    the finishing job's id (must still own each record)
-- ARGV[2]    arq queue name
-- ARGV[3]    arq job key ttl (ms)
-- ARGV[4]    arq function name
-- ARGV[5..]  per record: the change counter the run read, the run's lease token
--            (the lease is dropped only if it is still this run's), the trace
--            contexts ("l") it read (dropped; later ones kept), topic, record id,
--            and the applied entries as one JSON array [pending hash key, the
--            exact value applied, ...] (decoded only when the record changed
--            while the run applied it: otherwise the whole record goes)
--
-- Returns {next_job_id ("" if none), status per record}: status "released",
-- "handed_over" or "not_owner".

local job = ARGV[1]
local out = {''}
local next_recs, next_ids = {}, {}
local a = 5
for i = 1, #KEYS / 2 do
  local rec, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local version, token, read = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local topic, record_id, entries = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  a = a + 6
  if redis.call('GET', lease) == token then
    redis.call('DEL', lease)
  end
  if redis.call('HGET', rec, 'job') ~= job then
    out[#out + 1] = 'not_owner'
  else
    redis.call('ZREM', KEY.retrying, rec)
    if redis.call('HGET', rec, 'ver') == version then
      redis.call('DEL', rec)
      redis.call('SREM', KEY.pending, rec)
      out[#out + 1] = 'released'
    else
      local applied = cjson.decode(entries)
      for j = 1, #applied, 2 do
        if redis.call('HGET', rec, applied[j]) == applied[j + 1] then
          redis.call('HDEL', rec, applied[j])
        end
      end
      redis.call('HDEL', rec, 'fail', 'failed_at', 'retry_delay')
      local links = redis.call('HGET', rec, 'l')
      if links and read ~= '' and string.sub(links, 1, string.len(read)) == read then
        local rest = string.sub(links, string.len(read) + 2)
        if rest == '' then
          redis.call('HDEL', rec, 'l')
        else
          redis.call('HSET', rec, 'l', rest)
        end
      end
      next_recs[#next_recs + 1] = rec
      next_ids[#next_ids + 1] = {topic, record_id}
      out[#out + 1] = 'handed_over'
    end
  end
end
if #next_recs > 0 then
  out[1] = next_job_id()
  start_job(out[1], next_recs, next_ids, ARGV[2], ARGV[3], ARGV[4])
end
return out
