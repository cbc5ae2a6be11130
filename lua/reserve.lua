-- Reserve a batch of orders in one call (TryReserve). Each order is all-or-nothing; orders
-- are decided one after the other, so each sees the stock the ones before it left.
-- lua/lib.lua is prepended.
--
-- KEYS[1] the order directory; then per group of the call: orders, holds, journal; then
--         the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] hold (ms), ARGV[3] max entries per journal stream,
-- ARGV[4] groups in the call, ARGV[5] positions in the call, then per position:
--   group#, warehouseId, skuId; then the number of orders, then per order:
--   orderNo, traceId, number of lines, then per line: position#, qty
--   (the lines of one order name distinct positions: duplicates are summed before).
--
-- Cost: one XLEN per group, one HMGET of the directory, per position one HMGET and one
-- HSET, per group one HSET of records, one ZADD and one XADD; whatever the number of
-- orders. Orders seen before cost one HMGET per group more (their state).
--
-- Reply items, one per order, in order:
--   RESERVED expireAt                        held now
--   EXISTS:<state> expireAt                  the same order was reserved before; its state now
--   INSUFFICIENT line# available             nothing held
--   NOT_FOUND line#                          no such position in Redis
--   CONFLICT line# (0: other lines)          same order, other content
--   CANCELLED                                released before it was reserved
--   JOURNAL_FULL                             backpressure, nothing done
local now = tonumber(ARGV[1])
local hold_ms = tonumber(ARGV[2])
local max_journal = tonumber(ARGV[3])
local ngroups = tonumber(ARGV[4])
local npositions = tonumber(ARGV[5])
local groups = call_groups(1, ngroups)
local positions, _, at = call_positions(6, npositions, 1 + 3 * ngroups)

local orders = {}
local norders = tonumber(ARGV[at])
at = at + 1
for i = 1, norders do
  local order = {no = ARGV[at], tr = ARGV[at + 1], lines = {}}
  local nlines = tonumber(ARGV[at + 2])
  at = at + 3
  for j = 1, nlines do
    order.lines[j] = {p = positions[tonumber(ARGV[at])], q = tonumber(ARGV[at + 1])}
    at = at + 2
  end
  orders[i] = order
end

local out = {}
for _, g in ipairs(groups) do
  if journal_full(g, max_journal) then
    for _ = 1, norders do
      reply(out, 'JOURNAL_FULL')
    end
    return out
  end
end

-- One directory read for the whole batch.
local directory = {}
do
  local names = {}
  for i, order in ipairs(orders) do
    names[i] = order.no
  end
  for from = 1, #names, SLICE do
    local to = math.min(from + SLICE - 1, #names)
    local values = redis.call('HMGET', KEYS[1], unpack(names, from, to))
    for i = from, to do
      if values[i - from + 1] then
        directory[names[i]] = values[i - from + 1]
      end
    end
  end
end

-- Orders seen before: their records, for the state a repeat reports.
do
  local asked = {}
  for _, order in ipairs(orders) do
    if directory[order.no] then
      for _, line in ipairs(order.lines) do
        local g = groups[line.p.g]
        local key = line.p.g .. ' ' .. order.no
        if not asked[key] then
          asked[key] = true
          g.reads[#g.reads + 1] = order.no
        end
      end
    end
  end
  read_records(groups)
end

-- The same lines with the same quantities is a repeat (its state now), anything else a
-- conflict.
local function repeat_of(order, entry)
  if #entry.lines ~= #order.lines then
    return 'CONFLICT', 0
  end
  for j, line in ipairs(order.lines) do
    local found = nil
    for _, d in ipairs(entry.lines) do
      if d.w == line.p.w and d.s == line.p.s then
        found = d
      end
    end
    if not found then
      return 'CONFLICT', 0
    end
    if found.q ~= line.q then
      return 'CONFLICT', j
    end
  end
  local state = nil
  for _, line in ipairs(order.lines) do
    local rec = parse_record(groups[line.p.g].records[order.no])
    if rec then
      for _, l in ipairs(rec.lines) do
        if l.w == line.p.w and l.s == line.p.s and (not state or RANK[l.st] > RANK[state]) then
          state = l.st
        end
      end
    end
  end
  return 'EXISTS:' .. (state or 'RESERVED'), entry.x
end

local expire_at = now + hold_ms
local dir_writes = {}
for _, order in ipairs(orders) do
  local entry = parse_directory(directory[order.no])
  if entry and entry.tomb then
    reply(out, 'CANCELLED')
  elseif entry then
    local st, n1 = repeat_of(order, entry)
    reply(out, st, n1)
  else
    local short = nil
    for j, line in ipairs(order.lines) do
      local p = load_position(line.p)
      if not p.loaded then
        short = {'NOT_FOUND', j, 0}
      elseif p.a < line.q then
        short = {'INSUFFICIENT', j, p.a}
      end
      if short then
        break
      end
    end
    if short then
      reply(out, short[1], short[2], short[3])
    else
      local listed = {int(expire_at)}
      local per_group = {}
      for _, line in ipairs(order.lines) do
        local p = line.p
        p.a = p.a - line.q
        p.r = p.r + line.q
        p.v = p.v + 1
        touch(p)
        listed[#listed + 1] = p.w .. ':' .. p.s .. ':' .. int(line.q)
        local parts = per_group[p.g]
        if not parts then
          parts = {int(expire_at)}
          per_group[p.g] = parts
        end
        parts[#parts + 1] = p.w .. ':' .. p.s .. ':' .. int(line.q) .. ':RESERVED'
        local g = groups[p.g]
        g.lines[#g.lines + 1] = journal_line('RES', p.w, p.s, -line.q, line.q, p.a, p.r, p.v, line.q,
          expire_at, now, 'RESERVE', order.no, order.tr, '')
      end
      local value = table.concat(listed, ' ')
      directory[order.no] = value
      dir_writes[#dir_writes + 1] = order.no
      dir_writes[#dir_writes + 1] = value
      for gi, parts in pairs(per_group) do
        local g = groups[gi]
        set_record(g, order.no, table.concat(parts, ' '))
        g.adds[#g.adds + 1] = int(expire_at)
        g.adds[#g.adds + 1] = order.no
      end
      reply(out, 'RESERVED', expire_at)
    end
  end
end

for from = 1, #dir_writes, SLICE do
  redis.call('HSET', KEYS[1], unpack(dir_writes, from, math.min(from + SLICE - 1, #dir_writes)))
end
flush(groups, positions)
return out
