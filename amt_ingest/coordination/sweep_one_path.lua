-- Pop the events seen on one path only for longer than the grace window and count
-- them per path and topic; each is returned (and so logged) once, by one caller.
--
-- KEYS[1]    the one-path sorted set (<path>:<topic>:<event_id> by first arrival)
-- KEYS[2]    the counters hash (counted as onepath:<path>:<topic>)
-- ARGV[1]    cutoff: first arrivals at or before it (ms) are popped
-- ARGV[2]    most members popped
--
-- Returns a flat list: member, first arrival (ms), ...

local cutoff = tonumber(ARGV[1])
local found = redis.call(
  'ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #found, 2 do
  redis.call('ZREM', KEYS[1], found[i])
  local sep = string.find(found[i], ':', string.find(found[i], ':', 1, true) + 1, true)
  redis.call('HINCRBY', KEYS[2], 'onepath:' .. string.sub(found[i], 1, sep - 1), 1)
end
return found
