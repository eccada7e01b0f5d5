-- A lease that one holder at a time has (the WebSocket subscription), with a fencing
-- token that grows with every new holder.
--
-- KEYS[1]    the lease key (value "<holder> <token>", expires)
-- KEYS[2]    the token counter
-- ARGV[1]    "acquire", "renew" or "release"
-- ARGV[2]    the holder (a replica id)
-- ARGV[3]    the lease ttl (ms)
-- ARGV[4]    renew, release: the token the holder was given
--
-- Returns, for acquire: the holder's token (a new one when the lease was free, its
-- own when it already held it), or 0 when another holds it; for renew and release:
-- 1 when the holder still held the lease with that token, else 0.

local op, holder, ttl = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('GET', KEYS[1])
if op == 'acquire' then
  if not held then
    local token = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], holder .. ' ' .. token, 'PX', ttl)
    return token
  end
  local sep = string.find(held, ' ', 1, true)
  if string.sub(held, 1, sep - 1) == holder then
    redis.call('PEXPIRE', KEYS[1], ttl)
    return tonumber(string.sub(held, sep + 1))
  end
  return 0
end
if held ~= holder .. ' ' .. ARGV[4] then
  return 0
end
if op == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('DEL', KEYS[1])
end
return 1
