-- Reserve a batch of orders in one call (TryReserve). Each order is all-or-nothing; orders
-- are decided one after the other, so each sees the stock the ones before it left.
--
-- KEYS[1] journal stream, KEYS[2] holds (sorted set: orderNo by expiry ms),
-- KEYS[3..] stock hashes, line markers, order indexes and tombstones, referenced by index
--           from the batch description.
-- ARGV[1] now (ms), ARGV[2] hold (ms), ARGV[3] marker ttl after the hold (ms),
-- ARGV[4] max journal entries,
-- ARGV[5] batch: JSON [{o: orderNo, tr: traceId, k: order index key#, t: tombstone key#,
--                       l: [{s: stock key#, m: marker key#, w: "warehouseId", k: "skuId", q: qty}]}]
--         (the lines of one order name distinct positions: duplicates are summed before).
--
-- Returns JSON, one result per order, in order:
--   {st = 'RESERVED', x = expireAt}                    held now
--   {st = 'EXISTS', ls = {{state, expireAt}, ...}}     the same order was reserved before
--   {st = 'INSUFFICIENT', i = line#, a = available}    nothing held
--   {st = 'NOT_FOUND', i = line#}                      no such position in Redis
--   {st = 'CONFLICT', i = line# (0: other lines)}      same order, other content
--   {st = 'CANCELLED'}                                 released before it was reserved
--   {st = 'JOURNAL_FULL'}                              backpressure, nothing done
local now = tonumber(ARGV[1])
local hold_ms = tonumber(ARGV[2])
local marker_ms = hold_ms + tonumber(ARGV[3])
local batch = cjson.decode(ARGV[5])
local results = {}

if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  for i = 1, #batch do results[i] = {st = 'JOURNAL_FULL'} end
  return cjson.encode(results)
end

local expire_at = now + hold_ms
local events = {}
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
local holds = {}

for i, order in ipairs(batch) do
  local result
  if redis.call('EXISTS', KEYS[order.t]) == 1 then
    result = {st = 'CANCELLED'}
  else
    local existing, fresh, conflict, short = 0, 0, nil, nil
    local states = {}
    for j, line in ipairs(order.l) do
      local m = redis.call('HMGET', KEYS[line.m], 'st', 'q', 'x')
      if m[1] then
        if tonumber(m[2]) ~= line.q then
          conflict = j
          break
        end
        existing = existing + 1
        states[#states + 1] = {m[1], tonumber(m[3])}
      else
        fresh = fresh + 1
        if not short then
          local p = position(KEYS[line.s])
          if p.missing then
            short = {'NOT_FOUND', j, -1}
          elseif p.a < line.q then
            short = {'INSUFFICIENT', j, p.a}
          end
        end
      end
    end
    if conflict then
      result = {st = 'CONFLICT', i = conflict}
    elseif existing > 0 and fresh > 0 then
      result = {st = 'CONFLICT', i = 0}
    elseif existing > 0 then
      result = {st = 'EXISTS', ls = states}
    elseif short then
      result = {st = short[1], i = short[2], a = short[3]}
    else
      local index = {}
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
        redis.call('HSET', KEYS[line.m], 'st', 'RESERVED', 'q', line.q, 'x', expire_at)
        redis.call('PEXPIRE', KEYS[line.m], marker_ms)
        index[#index + 1] = line.w .. ':' .. line.k
        events[#events + 1] = {
          k = 'RES', w = line.w, s = line.k, da = -line.q, dr = line.q, a = p.a, r = p.r, v = p.v,
          rs = 'RESERVE', o = order.o, tr = order.tr, ts = now, q = line.q, x = expire_at,
        }
      end
      redis.call('SADD', KEYS[order.k], unpack(index))
      redis.call('PEXPIRE', KEYS[order.k], marker_ms)
      holds[#holds + 1] = expire_at
      holds[#holds + 1] = order.o
      result = {st = 'RESERVED', x = expire_at}
    end
  end
  results[i] = result
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
if #events > 0 then
  redis.call('XADD', KEYS[1], '*', 'e', cjson.encode(events))
end
return cjson.encode(results)
