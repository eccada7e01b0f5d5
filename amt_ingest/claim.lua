-- A job run claims its record: it must own it, and no other run of the same job
-- (arq reruns a job whose in-progress key lapsed) may hold the lease.
--
-- KEYS[1]    record key
-- KEYS[2]    lease key of the record
-- ARGV[1]    job id
-- ARGV[2]    this run's token
-- ARGV[3]    lease ttl (ms)
--
-- Returns {"ok", <record hash as a flat list>, fence}, {"not_owner"} or {"busy", ttl_ms}.
-- The fence is a number that grows with every claim, store-wide: the store
-- refuses a write whose fence is below the last one it took for the record, so
-- a run that lost its lease (a frozen process) can never write after its successor.

if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then
  return {'not_owner'}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then
  return {'busy', redis.call('PTTL', KEYS[2])}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('INCR', 'amt:fenceseq')}
