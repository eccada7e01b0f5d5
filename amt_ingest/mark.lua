-- Mark a record for a re-read (a resync found it modified): merge the re-read
-- marker at the resync's position and give the record a job if none owns it.
--
-- KEYS[1]    record key
-- ARGV[1]    position of the marker
-- ARGV[2]    org id
-- ARGV[3]    arq queue name
-- ARGV[4]    arq job key ttl (ms)
-- ARGV[5]    arq function name
-- ARGV[6]    topic
-- ARGV[7]    record id
--
-- Returns 1 if the marker was merged, 0 if a newer one was pending.

local rec = KEYS[1]
local pos = ARGV[1]
local cur = redis.call('HGET', rec, 'f:__reread__')
if cur and string.sub(cur, 1, string.len(pos)) >= pos then
  return 0
end
redis.call('HSET', rec, 'f:__reread__', pos .. 'true')
redis.call('HINCRBY', rec, 'ver', 1)
if not redis.call('HGET', rec, 'org') then
  redis.call('HSET', rec, 'org', ARGV[2])
end
if not redis.call('HGET', rec, 'job') then
  new_job(rec, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
end
return 1
