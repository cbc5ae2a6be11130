-- Load one position from the DB into Redis at start-up, only if Redis does not have it:
-- an existing Redis value is newer than (or equal to) the DB's and is never overwritten.
-- lua/lib.lua is prepended.
--
-- KEYS[1] stock hash, KEYS[2] the group's position registry
-- ARGV: 1 available, 2 reserved, 3 confirmed, 4 version (the DB row's; becomes seq),
--       5 the registry member ('w:s')
-- Reply: one item, LOADED | KEPT
local out = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  reply(out, 'KEPT')
  return out
end
redis.call('HSET', KEYS[1], 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
reply(out, 'LOADED')
return out
