-- Load one position from the DB into Redis at start-up, only if Redis does not have it:
-- an existing Redis value is newer than (or equal to) the DB's and is never overwritten.
--
-- KEYS[1] stock hash
-- ARGV: 1 available, 2 reserved, 3 confirmed, 4 version (the DB row's; becomes seq)
-- Returns 1 when loaded, 0 when Redis already had the position.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
return 1
