-- Copy the DB's stock of one position to Redis (the reference's POST /{skuId}/sync).
-- lua/lib.lua is prepended.
--
-- The DB row's version is the Redis seq it was written from, so:
--   Redis missing or behind the DB (seq < version): load the DB's values      -> LOADED
--   Redis ahead (seq > version): the journal has not reached the DB yet; copying now
--     would lose changes, the caller waits for the journal and asks again      -> PENDING
--   same version, same values                                                  -> IN_SYNC
--   same version, different available: Redis was changed behind our back; the DB's
--     value wins, as the reference's sync does                                 -> OVERWRITTEN
--
-- KEYS[1] stock hash, KEYS[2] the group's position registry
-- ARGV: 1 available, 2 reserved, 3 confirmed, 4 version, 5 the registry member ('w:s')
-- Reply: one item, status, available before (-1 when missing), available after, seq
local stock = KEYS[1]
local version = tonumber(ARGV[4])
local out = {}
if redis.call('EXISTS', stock) == 0 then
  redis.call('HSET', stock, 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[5])
  reply(out, 'LOADED', -1, tonumber(ARGV[1]), version)
  return out
end
local v = redis.call('HMGET', stock, 'avail', 'reserved', 'seq')
local available, reserved, seq = tonumber(v[1] or 0), tonumber(v[2] or 0), tonumber(v[3] or 0)
if seq < version then
  redis.call('HSET', stock, 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
  reply(out, 'LOADED', available, tonumber(ARGV[1]), version)
elseif seq > version then
  reply(out, 'PENDING', available, available, seq)
elseif available == tonumber(ARGV[1]) and reserved == tonumber(ARGV[2]) then
  reply(out, 'IN_SYNC', available, available, seq)
else
  redis.call('HSET', stock, 'avail', ARGV[1], 'reserved', ARGV[2])
  reply(out, 'OVERWRITTEN', available, tonumber(ARGV[1]), seq)
end
return out
