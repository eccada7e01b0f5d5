-- Drop a lease only if this run still holds it.
--
-- KEYS[1]    lease key
-- ARGV[1]    the run's lease token
--
-- Returns 1 if the lease was dropped, 0 if another run (or nobody) holds it.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
