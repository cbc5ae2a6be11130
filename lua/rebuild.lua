-- Rebuild one position in Redis from the DB after Redis lost data: the stock hash (only if
-- missing or behind the DB), and the orders with lines in it (directory entries and this
-- group's records, only those missing), with the holds of RESERVED lines. Nothing is
-- journalled: the DB already has all of it. lua/lib.lua is prepended.
--
-- KEYS[1] stock hash, KEYS[2] the order directory (on a cluster: any key of the group, unused),
-- KEYS[3] the group's orders,
-- KEYS[4] the group's holds, KEYS[5] the group's position registry
-- ARGV[1] available, ARGV[2] reserved, ARGV[3] confirmed, ARGV[4] version,
-- ARGV[5] number of orders, ARGV[6] the registry member ('w:s'), ARGV[7] the supervisor
-- lease token of a leader-only rebuild (0: none; lib.lua fence_refuses), then per order:
-- orderNo, directory entry, the record of its lines in this group, expireAt (ms), '1' when a line of it in this group is RESERVED
-- Reply: one item, LOADED | KEPT (the stock hash) | FENCED (nothing written), orders restored
local out = {}
if fence_refuses(KEYS[3], ARGV[7]) then
  reply(out, 'FENCED', 0)
  return out
end
local status = 'KEPT'
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if redis.call('EXISTS', KEYS[1]) == 0 or seq < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
  redis.call('SADD', KEYS[5], ARGV[6])
  status = 'LOADED'
end
local restored = 0
local at = 8
for _ = 1, tonumber(ARGV[5]) do
  local order_no, listed, record, expire_at, held = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  at = at + 5
  -- The DB has this order, so a tombstone is wrong (a cancel that came while Redis had
  -- lost the order): the order replaces it.
  -- On a cluster the entry ('' here) goes to its directory shard separately.
  if listed ~= '' then
    local entry = parse_directory(redis.call('HGET', KEYS[2], order_no) or nil)
    if not entry or entry.tomb then
      redis.call('HSET', KEYS[2], order_no, listed)
    end
  end
  if redis.call('HSETNX', KEYS[3], order_no, record) == 1 then
    restored = restored + 1
    if held == '1' then
      redis.call('ZADD', KEYS[4], expire_at, order_no)
    end
  end
end
reply(out, status, restored)
return out
