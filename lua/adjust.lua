-- Adjust the available stock of one position (inbound, write-off, manual adjustment),
-- atomically with its idempotency marker and its journal line. lua/lib.lua is prepended.
--
-- KEYS[1] stock hash {avail, reserved, confirmed, seq}, KEYS[2] the position's group
-- journal, KEYS[3] adjustment marker (only used when ARGV[7] ~= ''), KEYS[4] the group's
-- position registry (a created position joins it)
-- ARGV: 1 warehouseId, 2 skuId, 3 delta, 4 max available, 5 ledger reason, 6 trace id,
--       7 request id ('' = none), 8 marker ttl seconds, 9 max journal entries,
--       10 now (ms), 11 remark, 12 '1' = create the position when it does not exist
--
-- Reply: one item, status available reserved confirmed seq; status is OK, EXISTS (same
-- request id, same delta: nothing changed), CONFLICT (same request id, other delta; the
-- first number is the first delta), MISSING (no position and ARGV[12] ~= '1'),
-- INSUFFICIENT, LIMIT, JOURNAL_FULL.
local stock, journal, marker = KEYS[1], KEYS[2], KEYS[3]
local delta = tonumber(ARGV[3])
local request_id = ARGV[7]
local now = tonumber(ARGV[10])
local out = {}

local function levels(status)
  local v = redis.call('HMGET', stock, 'avail', 'reserved', 'confirmed', 'seq')
  reply(out, status, tonumber(v[1] or 0), tonumber(v[2] or 0), tonumber(v[3] or 0), tonumber(v[4] or 0))
  return out
end

if request_id ~= '' then
  local previous = redis.call('HGET', marker, 'delta')
  if previous then
    if tonumber(previous) == delta then
      return levels('EXISTS')
    end
    reply(out, 'CONFLICT', tonumber(previous))
    return out
  end
end

if redis.call('EXISTS', stock) == 0 then
  if ARGV[12] ~= '1' then
    reply(out, 'MISSING')
    return out
  end
  redis.call('HSET', stock, 'avail', 0, 'reserved', 0, 'confirmed', 0, 'seq', 0)
  redis.call('SADD', KEYS[4], ARGV[1] .. ':' .. ARGV[2])
end

if redis.call('XLEN', journal) >= tonumber(ARGV[9]) then
  return levels('JOURNAL_FULL')
end

local v = redis.call('HMGET', stock, 'avail', 'reserved', 'seq')
local after = tonumber(v[1] or 0) + delta
if after < 0 then
  return levels('INSUFFICIENT')
end
if after > tonumber(ARGV[4]) then
  return levels('LIMIT')
end
local reserved, seq = tonumber(v[2] or 0), tonumber(v[3] or 0) + 1
redis.call('HSET', stock, 'avail', int(after), 'seq', int(seq))
if request_id ~= '' then
  redis.call('HSET', marker, 'delta', ARGV[3])
  redis.call('EXPIRE', marker, tonumber(ARGV[8]))
end
redis.call('XADD', journal, '*', 'e', journal_line('ADJ', ARGV[1], ARGV[2], delta, 0, after, reserved, seq,
  0, 0, now, ARGV[5], request_id, ARGV[6], ARGV[11]))
return levels('OK')
