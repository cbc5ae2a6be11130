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
-- Then one LEVELS item per position read (lib.lua, report_levels).
local now = tonumber(ARGV[1])
local hold_ms = tonumber(ARGV[2])
local max_journal = tonumber(ARGV[3])
local ngroups = tonumber(ARGV[4])
local npositions = tonumber(ARGV[5])
local groups = call_groups(1, ngroups)
local positions, _, at = call_positions(6, npositions, 1 + 3 * ngroups)

-- Orders stay in ARGV; only where each starts is kept. This script runs once per batch
-- and its per-order work is what a hot SKU pays for: no tables, no number formatting that
-- can be avoided (quantities stay the strings they came as).
local norders = tonumber(ARGV[at])
at = at + 1
local starts = {}
local names = {}
for i = 1, norders do
  starts[i] = at
  names[i] = ARGV[at]
  at = at + 3 + 2 * NUM[ARGV[at + 2]]
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
for from = 1, #names, SLICE do
  local to = math.min(from + SLICE - 1, #names)
  local values = redis.call('HMGET', KEYS[1], unpack(names, from, to))
  for i = from, to do
    if values[i - from + 1] then
      directory[names[i]] = values[i - from + 1]
    end
  end
end

-- The lines of the order that starts at ARGV[a]: {p = position, q = qty}.
local function lines_at(a)
  local lines = {}
  for j = 1, NUM[ARGV[a + 2]] do
    local b = a + 1 + 2 * j
    lines[j] = {p = positions[NUM[ARGV[b]]], q = NUM[ARGV[b + 1]]}
  end
  return lines
end

-- Orders seen before: their records, for the state a repeat reports.
do
  local asked = false
  for i = 1, norders do
    if directory[names[i]] then
      for _, line in ipairs(lines_at(starts[i])) do
        local g = groups[line.p.g]
        if not g.asked[names[i]] then
          g.asked[names[i]] = true
          g.reads[#g.reads + 1] = names[i]
          asked = true
        end
      end
    end
  end
  if asked then
    read_records(groups)
  end
end

-- The same lines with the same quantities is a repeat (its state now), anything else a
-- conflict.
local function repeat_of(order_no, lines, entry)
  if #entry.lines ~= #lines then
    return 'CONFLICT', 0
  end
  for j, line in ipairs(lines) do
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
  for _, line in ipairs(lines) do
    local rec = parse_record(groups[line.p.g].records[order_no])
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
local x = int(expire_at)
local tail = ' ' .. x .. ' ' .. int(now) .. ' RESERVE '
local dir_writes = {}
local n = 0
for i = 1, norders do
  local a = starts[i]
  local order_no, trace, nlines = names[i], ARGV[a + 1], NUM[ARGV[a + 2]]
  local listed = directory[order_no]
  if listed then
    local entry = parse_directory(listed)
    if entry.tomb then
      reply(out, 'CANCELLED')
    else
      local st, n1 = repeat_of(order_no, lines_at(a), entry)
      reply(out, st, n1)
    end
  else
    -- Check every line first: all or nothing.
    local short, short_at, short_available = first_short(a + 3, nlines, positions)
    if short then
      reply(out, short, short_at, short_available)
    else
      local value = x
      for j = 1, nlines do
        local b = a + 1 + 2 * j
        local p = positions[NUM[ARGV[b]]]
        local qs = ARGV[b + 1]
        value = value .. ' ' .. hold_units(groups, p, NUM[qs], qs, x, tail, order_no, trace)
      end
      directory[order_no] = value
      n = n + 2
      dir_writes[n - 1] = order_no
      dir_writes[n] = value
      reply(out, 'RESERVED', expire_at)
    end
  end
end

for from = 1, #dir_writes, SLICE do
  redis.call('HSET', KEYS[1], unpack(dir_writes, from, math.min(from + SLICE - 1, #dir_writes)))
end
flush(groups, positions)
report_levels(out, positions)
return out
