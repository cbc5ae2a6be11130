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
          local available = redis.call('HGET', KEYS[line.s], 'avail')
          if not available then
            short = {'NOT_FOUND', j, -1}
          elseif tonumber(available) < line.q then
            short = {'INSUFFICIENT', j, tonumber(available)}
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
      for _, line in ipairs(order.l) do
        local stock = KEYS[line.s]
        local a = redis.call('HINCRBY', stock, 'avail', -line.q)
        local r = redis.call('HINCRBY', stock, 'reserved', line.q)
        local v = redis.call('HINCRBY', stock, 'seq', 1)
        redis.call('HSET', KEYS[line.m], 'st', 'RESERVED', 'q', line.q, 'x', expire_at)
        redis.call('PEXPIRE', KEYS[line.m], marker_ms)
        redis.call('SADD', KEYS[order.k], line.w .. ':' .. line.k)
        events[#events + 1] = {
          k = 'RES', w = line.w, s = line.k, da = -line.q, dr = line.q, a = a, r = r, v = v,
          rs = 'RESERVE', o = order.o, tr = order.tr, ts = now, q = line.q, x = expire_at,
        }
      end
      redis.call('PEXPIRE', KEYS[order.k], marker_ms)
      redis.call('ZADD', KEYS[2], expire_at, order.o)
      result = {st = 'RESERVED', x = expire_at}
    end
  end
  results[i] = result
end

if #events > 0 then
  redis.call('XADD', KEYS[1], '*', 'e', cjson.encode(events))
end
return cjson.encode(results)
