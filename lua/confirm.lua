-- Confirm every line of one order: RESERVED -> CONFIRMED (the units leave `reserved` for
-- `confirmed`; `available` does not change). All-or-nothing: a released or expired line
-- fails the whole order and nothing changes. Confirming a confirmed order is EXISTS.
--
-- KEYS[1] journal, KEYS[2] holds, then per line: stock hash, line marker
--   (a marker is the string '<state> <qty> <expireAt ms>', see reserve.lua)
-- ARGV[1] now (ms), ARGV[2] orderNo, ARGV[3] trace id, ARGV[4] max journal entries,
-- ARGV[5] '1' = confirm even if the hold expired (the order service says it was paid),
-- ARGV[6..] per line: warehouseId, skuId
--
-- Returns JSON {st = CONFIRMED | EXISTS | NOT_FOUND | RELEASED | EXPIRED | JOURNAL_FULL, i = line#}
local now = tonumber(ARGV[1])
local lines = (#KEYS - 2) / 2
if lines < 1 then
  return cjson.encode({st = 'NOT_FOUND', i = 0})
end

local states = {}
local done = 0
for j = 1, lines do
  local raw = redis.call('GET', KEYS[2 + 2 * j])
  local m = {}
  if raw then
    m = {string.match(raw, '^(%S+) (%S+) (%S+)$')}
  end
  if not m[1] then
    return cjson.encode({st = 'NOT_FOUND', i = j})
  end
  if m[1] == 'RELEASED' then
    return cjson.encode({st = 'RELEASED', i = j})
  end
  if m[1] == 'RESERVED' and tonumber(m[3]) <= now and ARGV[5] ~= '1' then
    return cjson.encode({st = 'EXPIRED', i = j})
  end
  if m[1] == 'CONFIRMED' then
    done = done + 1
  end
  states[j] = m
end
if done == lines then
  return cjson.encode({st = 'EXISTS'})
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return cjson.encode({st = 'JOURNAL_FULL'})
end

local events = {}
for j = 1, lines do
  if states[j][1] == 'RESERVED' then
    local stock, marker = KEYS[1 + 2 * j], KEYS[2 + 2 * j]
    local q = tonumber(states[j][2])
    local r = redis.call('HINCRBY', stock, 'reserved', -q)
    redis.call('HINCRBY', stock, 'confirmed', q)
    local v = redis.call('HINCRBY', stock, 'seq', 1)
    local a = tonumber(redis.call('HGET', stock, 'avail'))
    redis.call('SET', marker, 'CONFIRMED ' .. states[j][2] .. ' ' .. states[j][3], 'KEEPTTL')
    events[#events + 1] = {
      k = 'CNF', w = ARGV[4 + 2 * j], s = ARGV[5 + 2 * j], da = 0, dr = -q, a = a, r = r, v = v,
      rs = 'CONFIRM', o = ARGV[2], tr = ARGV[3], ts = now, q = q, x = tonumber(states[j][3]),
    }
  end
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'e', cjson.encode(events))
return cjson.encode({st = 'CONFIRMED'})
