-- Save a WebSocket resume point, and keep the newest position handed off with it
-- (and its org) beside it: where a resync of a lost window starts. With a lease,
-- only while that lease is the current one: a replica that lost the WebSocket
-- lease must not move the cursor its successor reads.
--
-- KEYS[1]    the cursor (string)
-- KEYS[2]    the newest position handed off (hash: "position", "org")
-- KEYS[3]    the WebSocket lease
-- ARGV[1]    the replay id to resume after
-- ARGV[2]    position key of the newest event of the hand-off ("" if none)
-- ARGV[3]    its org id
-- ARGV[4]    the saving replica's lease ("<replica> <token>"), "" for none
--
-- Returns 1 when saved, 0 when the lease is another's (nothing saved).

if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  local held = redis.call('HGET', KEYS[2], 'position')
  if (not held) or held < ARGV[2] then
    redis.call('HSET', KEYS[2], 'position', ARGV[2], 'org', ARGV[3])
  end
end
return 1
