-- Drop a dead-lettered record only if it is still the one that was read (same
-- ``at``): a newer dead letter of the same record, written meanwhile, stays.
--
-- KEYS[1]    the dead-records hash
-- ARGV[1]    field of the dead letter (<topic>:<record_id>)
-- ARGV[2]    its ``at`` (ms) as read
--
-- Returns 1 if it was dropped, else 0.

local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and cjson.decode(held)['at'] == tonumber(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
