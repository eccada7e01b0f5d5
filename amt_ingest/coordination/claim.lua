-- A job run claims its records: each must be owned by the job, and no other run
-- of the same job (arq reruns a job whose in-progress key lapsed) may hold any
-- of their leases.
--
-- KEYS       per record: record key, lease key of the record
-- ARGV[1]    job id
-- ARGV[2]    this run's token
-- ARGV[3]    lease ttl (ms)
--
-- Returns {"busy", ttl_ms} when another run holds a lease (nothing is claimed),
-- else {"ok", fence, per record: its hash as a flat list, or 0 when the job does
-- not own it}. The fence is a number that grows with every claim, store-wide:
-- the store refuses a write whose fence is below the last one it took for the
-- record, so a run that lost its lease (a frozen process) can never write after
-- its successor.

local job, token, ttl = ARGV[1], ARGV[2], ARGV[3]
local n = #KEYS / 2
local owned = {}
local busy = 0
for i = 1, n do
  if redis.call('HGET', KEYS[2 * i - 1], 'job') == job then
    owned[i] = true
    local holder = redis.call('GET', KEYS[2 * i])
    if holder and holder ~= token then
      busy = math.max(busy, redis.call('PTTL', KEYS[2 * i]), 1)
    end
  end
end
if busy > 0 then
  return {'busy', busy}
end
local out = {'ok', redis.call('INCR', KEY.fenceseq)}
for i = 1, n do
  if owned[i] then
    redis.call('SET', KEYS[2 * i], token, 'PX', ttl)
    out[#out + 1] = redis.call('HGETALL', KEYS[2 * i - 1])
  else
    out[#out + 1] = 0
  end
end
return out
