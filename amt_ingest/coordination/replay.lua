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

if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return -1
end
local merged = merge_pending(KEYS[1], ARGV, 8, ARGV[7], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('HDEL', KEYS[2], ARGV[1])
return merged
