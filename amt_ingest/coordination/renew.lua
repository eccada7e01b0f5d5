-- Renew leases that their holder still holds: each key whose value is the one
-- expected gets its ttl again. A key that is gone (released, or lapsed) or that
-- holds another value (another run took it) is not renewed.
--
-- KEYS       the lease keys
-- ARGV[1]    the ttl (ms) they get
-- ARGV[2..]  per key: the value its holder set
--
-- Returns, per key not renewed, two values: its 1-based index, then 1 when
-- another holder has it, 0 when it is gone.

local out = {}
for i = 1, #KEYS do
  local held = redis.call('GET', KEYS[i])
  if held == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    out[#out + 1] = i
    out[#out + 1] = held and 1 or 0
  end
end
return out
