-- Release every held line of one order: RESERVED -> RELEASED, the units go back to
-- `available`. Used by cancellation, manual release and expiry. A confirmed line is never
-- released: it fails the whole order and nothing changes. Releasing a released order is
-- EXISTS. Releasing an order we never saw leaves a tombstone ('!' as its order index) so
-- that its late reservation is refused instead of leaking stock.
--
-- KEYS[1] journal, KEYS[2] holds, KEYS[3] the order's index, then per line: stock
-- hash, line marker (the string '<state> <qty> <expireAt ms>', see reserve.lua)
-- ARGV[1] now (ms), ARGV[2] orderNo, ARGV[3] trace id, ARGV[4] max journal entries,
-- ARGV[5] ledger reason (RELEASE | EXPIRED), ARGV[6] remark, ARGV[7] tombstone ttl (ms),
-- ARGV[8] '1' = only if every held line has expired (the expiry scan),
-- ARGV[9..] per line: warehouseId, skuId
--
-- Returns JSON {st = RELEASED | EXISTS | TOMBSTONE | RETRY | CONFIRMED | NOT_EXPIRED |
-- JOURNAL_FULL, i = line#}; RETRY: called without lines, but the order has some by now
-- (its reservation overtook this call): read its lines again.
local now = tonumber(ARGV[1])
local lines = (#KEYS - 3) / 2
if lines < 1 then
  -- The expiry scan found a hold whose order Redis does not know (lost or rebuilt data):
  -- no tombstone from it; reconciliation restores the order from the DB.
  if ARGV[8] == '1' then
    return cjson.encode({st = 'NOT_FOUND', i = 0})
  end
  local index = redis.call('GET', KEYS[3])
  if index and index ~= '!' then
    return cjson.encode({st = 'RETRY'})
  end
  redis.call('SET', KEYS[3], '!', 'PX', tonumber(ARGV[7]))
  return cjson.encode({st = 'TOMBSTONE'})
end

local states = {}
local held = 0
for j = 1, lines do
  local raw = redis.call('GET', KEYS[3 + 2 * j])
  local m = {}
  if raw then
    m = {string.match(raw, '^(%S+) (%S+) (%S+)$')}
  end
  if m[1] == 'CONFIRMED' then
    return cjson.encode({st = 'CONFIRMED', i = j})
  end
  if m[1] == 'RESERVED' then
    if ARGV[8] == '1' and tonumber(m[3]) > now then
      return cjson.encode({st = 'NOT_EXPIRED', i = j})
    end
    held = held + 1
  end
  states[j] = m
end
if held == 0 then
  return cjson.encode({st = 'EXISTS'})
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return cjson.encode({st = 'JOURNAL_FULL'})
end

local events = {}
for j = 1, lines do
  if states[j][1] == 'RESERVED' then
    local stock, marker = KEYS[2 + 2 * j], KEYS[3 + 2 * j]
    local q = tonumber(states[j][2])
    local a = redis.call('HINCRBY', stock, 'avail', q)
    local r = redis.call('HINCRBY', stock, 'reserved', -q)
    local v = redis.call('HINCRBY', stock, 'seq', 1)
    redis.call('SET', marker, 'RELEASED ' .. states[j][2] .. ' ' .. states[j][3], 'KEEPTTL')
    events[#events + 1] = {
      k = 'REL', w = ARGV[7 + 2 * j], s = ARGV[8 + 2 * j], da = q, dr = -q, a = a, r = r, v = v,
      rs = ARGV[5], o = ARGV[2], tr = ARGV[3], ts = now, rm = ARGV[6], q = q,
      x = tonumber(states[j][3]),
    }
  end
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'e', cjson.encode(events))
return cjson.encode({st = 'RELEASED'})
