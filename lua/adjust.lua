-- Adjust the available stock of one position (inbound, write-off, manual adjustment),
-- atomically with its idempotency marker and its journal entry.
--
-- KEYS[1] stock hash  {avail, reserved, confirmed, seq}
-- KEYS[2] journal stream
-- KEYS[3] adjustment marker (only used when ARGV[7] ~= '')
-- ARGV: 1 warehouseId, 2 skuId, 3 delta, 4 max available, 5 ledger reason, 6 trace id,
--       7 request id ('' = none), 8 marker ttl seconds, 9 max journal entries,
--       10 now (ms), 11 remark, 12 '1' = create the position when it does not exist
--
-- Returns {status, available, reserved, confirmed, seq, journalId}; status is one of
-- OK, EXISTS (same request id, same delta: nothing changed), CONFLICT (same request id,
-- other delta; the 2nd value is the first delta), MISSING (no position and ARGV[12] ~= '1'),
-- INSUFFICIENT, LIMIT, JOURNAL_FULL.
local stock, journal, marker = KEYS[1], KEYS[2], KEYS[3]
local delta = tonumber(ARGV[3])
local request_id = ARGV[7]

local function levels(status, id)
  local v = redis.call('HMGET', stock, 'avail', 'reserved', 'confirmed', 'seq')
  return {status, tonumber(v[1] or 0), tonumber(v[2] or 0), tonumber(v[3] or 0), tonumber(v[4] or 0), id or ''}
end

if request_id ~= '' then
  local previous = redis.call('HGET', marker, 'delta')
  if previous then
    if tonumber(previous) == delta then
      return levels('EXISTS')
    end
    return {'CONFLICT', tonumber(previous), 0, 0, 0, ''}
  end
end

if redis.call('EXISTS', stock) == 0 then
  if ARGV[12] ~= '1' then
    return {'MISSING', 0, 0, 0, 0, ''}
  end
  redis.call('HSET', stock, 'avail', 0, 'reserved', 0, 'confirmed', 0, 'seq', 0)
end

if redis.call('XLEN', journal) >= tonumber(ARGV[9]) then
  return levels('JOURNAL_FULL')
end

local available = tonumber(redis.call('HGET', stock, 'avail'))
local after = available + delta
if after < 0 then
  return levels('INSUFFICIENT')
end
if after > tonumber(ARGV[4]) then
  return levels('LIMIT')
end

redis.call('HSET', stock, 'avail', after)
local seq = redis.call('HINCRBY', stock, 'seq', 1)
local reserved = tonumber(redis.call('HGET', stock, 'reserved') or 0)
if request_id ~= '' then
  redis.call('HSET', marker, 'delta', ARGV[3])
  redis.call('EXPIRE', marker, tonumber(ARGV[8]))
end

local event = {
  k = 'ADJ', w = ARGV[1], s = ARGV[2], da = delta, dr = 0, a = after, r = reserved,
  v = seq, rs = ARGV[5], o = request_id, tr = ARGV[6], ts = tonumber(ARGV[10]), rm = ARGV[11],
}
local id = redis.call('XADD', journal, '*', 'e', cjson.encode({event}))
return levels('OK', id)
