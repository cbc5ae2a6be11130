-- Reserve a batch of orders in one call (TryReserve). Each order is all-or-nothing; orders
-- are decided one after the other, so each sees the stock the ones before it left.
--
-- KEYS[1] journal stream, KEYS[2] holds (sorted set: orderNo by expiry ms),
-- KEYS[3..] stock hashes, line markers and order indexes, referenced by index from the
--           batch description.
-- ARGV[1] now (ms), ARGV[2] hold (ms), ARGV[3] marker ttl after the hold (ms),
-- ARGV[4] max journal entries, ARGV[5] number of orders, then per order:
--   orderNo, traceId, order index key#, number of lines,
--   then per line: stock key#, marker key#, warehouseId, skuId, qty
--   (the lines of one order name distinct positions: duplicates are summed before).
-- Positional arguments rather than JSON: decoding is most of a script's cost per order.
--
-- Keys are strings with a PX expiry, so writing one is one command:
--   order index  'w:s w:s ...' (the order's positions), or '!' when a release came first
--                (a tombstone: the late reservation is refused)
--   line marker  '<state> <qty> <expireAt ms>'
-- A new order costs one GET (its index) and two SETs per single-line order; markers are
-- read only when the index says the order was seen before.
--
-- Returns a flat array, three values per order, in order:
--   'RESERVED', expireAt, 0                 held now
--   'EXISTS:<state>', expireAt, 0           the same order was reserved before; its state now
--   'INSUFFICIENT', line#, available        nothing held
--   'NOT_FOUND', line#, 0                   no such position in Redis
--   'CONFLICT', line# (0: other lines), 0   same order, other content
--   'CANCELLED', 0, 0                       released before it was reserved
--   'JOURNAL_FULL', 0, 0                    backpressure, nothing done
-- The journal entry holds one line per reservation:
--   'RES <warehouseId> <skuId> <qty> <available> <reserved> <seq> <expireAt> <orderNo> <traceId>'
local now = tonumber(ARGV[1])
local hold_ms = tonumber(ARGV[2])
local marker_ms = hold_ms + tonumber(ARGV[3])
local count = tonumber(ARGV[5])
local results = {}

if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  for _ = 1, count do
    results[#results + 1] = 'JOURNAL_FULL'
    results[#results + 1] = 0
    results[#results + 1] = 0
  end
  return results
end

local orders = {}
local at = 6
for i = 1, count do
  local order = {o = ARGV[at], tr = ARGV[at + 1], k = tonumber(ARGV[at + 2]), l = {}}
  local lines = tonumber(ARGV[at + 3])
  at = at + 4
  for j = 1, lines do
    order.l[j] = {s = tonumber(ARGV[at]), m = tonumber(ARGV[at + 1]), w = ARGV[at + 2], k = ARGV[at + 3], q = tonumber(ARGV[at + 4])}
    at = at + 5
  end
  orders[i] = order
end

local expire_at = now + hold_ms
local journal = {}
-- Counters of the positions this batch touches, read once and written once at the end
-- (the script is atomic, so keeping them here is the same as writing each change).
local positions = {}
local touched = {}
local function position(stock)
  local p = positions[stock]
  if not p then
    local v = redis.call('HMGET', stock, 'avail', 'reserved', 'seq')
    if v[1] then
      p = {a = tonumber(v[1]), r = tonumber(v[2] or 0), v = tonumber(v[3] or 0), dirty = false}
    else
      p = {missing = true}
    end
    positions[stock] = p
  end
  return p
end
local rank = {RESERVED = 1, CONFIRMED = 2, RELEASED = 2}
local holds = {}

-- An order seen before: the same lines with the same quantities is a repeat (its state
-- now), anything else a conflict.
local function repeat_of(order, index)
  local listed = 1
  for _ in string.gmatch(index, ' ') do
    listed = listed + 1
  end
  if listed ~= #order.l then
    return 'CONFLICT', 0
  end
  local state, state_expire = nil, 0
  for j, line in ipairs(order.l) do
    local m = redis.call('GET', KEYS[line.m])
    if not m then
      -- A position the order does not have: other lines, not another quantity.
      return 'CONFLICT', 0
    end
    local st, q, x = string.match(m, '^(%S+) (%S+) (%S+)$')
    if tonumber(q) ~= line.q then
      return 'CONFLICT', j
    end
    if not state or rank[st] > rank[state] then
      state = st
    end
    if state_expire == 0 then
      state_expire = tonumber(x)
    end
  end
  return 'EXISTS:' .. state, state_expire
end

for _, order in ipairs(orders) do
  local st, n1, n2 = nil, 0, 0
  local index = redis.call('GET', KEYS[order.k])
  if index == '!' then
    st = 'CANCELLED'
  elseif index then
    st, n1 = repeat_of(order, index)
  else
    local short = nil
    for j, line in ipairs(order.l) do
      local p = position(KEYS[line.s])
      if p.missing then
        short = {'NOT_FOUND', j, 0}
      elseif p.a < line.q then
        short = {'INSUFFICIENT', j, p.a}
      end
      if short then
        break
      end
    end
    if short then
      st, n1, n2 = short[1], short[2], short[3]
    else
      local positions_held = {}
      local marker = 'RESERVED %d ' .. string.format('%d', expire_at)
      for _, line in ipairs(order.l) do
        local stock = KEYS[line.s]
        local p = position(stock)
        p.a = p.a - line.q
        p.r = p.r + line.q
        p.v = p.v + 1
        if not p.dirty then
          p.dirty = true
          touched[#touched + 1] = stock
        end
        redis.call('SET', KEYS[line.m], string.format(marker, line.q), 'PX', marker_ms)
        positions_held[#positions_held + 1] = line.w .. ':' .. line.k
        journal[#journal + 1] = table.concat(
          {'RES', line.w, line.k, line.q, p.a, p.r, p.v, expire_at, order.o, order.tr}, ' ')
      end
      redis.call('SET', KEYS[order.k], table.concat(positions_held, ' '), 'PX', marker_ms)
      holds[#holds + 1] = expire_at
      holds[#holds + 1] = order.o
      st, n1 = 'RESERVED', expire_at
    end
  end
  results[#results + 1] = st
  results[#results + 1] = n1
  results[#results + 1] = n2
end

for _, stock in ipairs(touched) do
  local p = positions[stock]
  redis.call('HSET', stock, 'avail', p.a, 'reserved', p.r, 'seq', p.v)
end
-- One ZADD for the whole batch (in slices: Lua's unpack has a stack limit).
for from = 1, #holds, 1000 do
  local to = math.min(from + 999, #holds)
  redis.call('ZADD', KEYS[2], unpack(holds, from, to))
end
if #journal > 0 then
  redis.call('XADD', KEYS[1], '*', 'e', table.concat(journal, '\n'))
end
return results
