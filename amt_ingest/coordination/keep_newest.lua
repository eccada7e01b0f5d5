-- Keep the newest position seen (and its org) in a hash: where a resync of a lost
-- window starts.
--
-- KEYS[1]    the hash (fields "position", "org")
-- ARGV[1]    position key of the newest event of a hand-off
-- ARGV[2]    its org id
--
-- Returns 1.

local held = redis.call('HGET', KEYS[1], 'position')
if (not held) or held < ARGV[1] then
  redis.call('HSET', KEYS[1], 'position', ARGV[1], 'org', ARGV[2])
end
return 1
