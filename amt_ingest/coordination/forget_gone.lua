-- Forget a pending-set member whose record key is gone (deleted by hand).
--
-- KEYS[1]    the pending set
-- KEYS[2]    the record key
--
-- Returns 1 if the member was removed, else 0.

if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], KEYS[2])
end
return 0
