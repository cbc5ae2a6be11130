-- Rebuild one position in Redis from the DB after Redis lost data: the stock hash (only if
-- missing or behind the DB) and the markers of its lines (only those missing), with the
-- order indexes and the holds of RESERVED lines. Nothing is journalled: the DB already has
-- all of it.
--
-- KEYS[1] stock hash, KEYS[2] holds, then per line: marker, order index (strings, see
-- reserve.lua)
-- ARGV[1] available, ARGV[2] reserved, ARGV[3] confirmed, ARGV[4] version,
-- ARGV[5] marker ttl after the hold (ms), ARGV[6] now (ms), ARGV[7] "warehouseId:skuId",
-- ARGV[8..] per line: orderNo, state, qty, expireAt (ms)
-- Returns {stock loaded (0/1), markers restored}
local stock_loaded = 0
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if redis.call('EXISTS', KEYS[1]) == 0 or seq < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'avail', ARGV[1], 'reserved', ARGV[2], 'confirmed', ARGV[3], 'seq', ARGV[4])
  stock_loaded = 1
end
local marker_ms = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local restored = 0
local lines = (#KEYS - 2) / 2
for j = 1, lines do
  local marker, index = KEYS[1 + 2 * j], KEYS[2 + 2 * j]
  local base = 8 + (j - 1) * 4
  local order_no, state, qty, expire_at = ARGV[base], ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3])
  if redis.call('EXISTS', marker) == 0 then
    local ttl = expire_at + marker_ms - now
    if ttl > 0 then
      redis.call('SET', marker, state .. ' ' .. qty .. ' ' .. string.format('%d', expire_at), 'PX', ttl)
      -- The order index lists the order's positions, space-separated (see reserve.lua).
      -- The DB has this line, so a tombstone here is wrong (a cancel that came while Redis
      -- had lost the order): the order's positions replace it.
      local listed = redis.call('GET', index)
      if not listed or listed == '!' then
        redis.call('SET', index, ARGV[7], 'PX', ttl)
      elseif listed ~= '!' and not string.find(' ' .. listed .. ' ', ' ' .. ARGV[7] .. ' ', 1, true) then
        redis.call('SET', index, listed .. ' ' .. ARGV[7], 'PX', math.max(ttl, redis.call('PTTL', index)))
      end
      if state == 'RESERVED' then
        redis.call('ZADD', KEYS[2], expire_at, order_no)
      end
      restored = restored + 1
    end
  end
end
return {stock_loaded, restored}
