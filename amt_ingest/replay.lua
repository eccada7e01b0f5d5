-- Put a dead-lettered record's changes back into its pending changes and give it
-- a job, in one atomic step: an interrupted replay leaves the dead letter in
-- place, and a repeated one is a no-op (merging is newest-wins by position).
--
-- KEYS[1]    record key
-- KEYS[2]    the dead-records hash
-- ARGV[1]    field of the dead letter in that hash (<topic>:<record_id>)
-- ARGV[2]    arq queue name
-- ARGV[3]    arq job key ttl (ms)
-- ARGV[4]    arq function name
-- ARGV[5]    topic
-- ARGV[6]    record id
-- ARGV[7]    org id
-- ARGV[8..]  triples: pending field name, position, JSON value
--
-- Returns the number of entries merged (0 when nothing was newer), or -1 when
-- the dead letter is gone (replayed already).

local rec = KEYS[1]
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return -1
end
local merged = 0
for i = 8, #ARGV, 3 do
  local hk = 'f:' .. ARGV[i]
  local pos = ARGV[i + 1]
  local cur = redis.call('HGET', rec, hk)
  if (not cur) or string.sub(cur, 1, string.len(pos)) < pos then
    redis.call('HSET', rec, hk, pos .. ARGV[i + 2])
    merged = merged + 1
  end
end
if merged > 0 then
  redis.call('HINCRBY', rec, 'ver', 1)
  redis.call('HSET', rec, 'org', ARGV[7])
  if not redis.call('HGET', rec, 'job') then
    new_job(rec, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return merged
