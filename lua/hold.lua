-- Cluster mode, reserve step 2: hold the lines of claimed orders in one slot group,
-- all-or-nothing per order. An order whose lines are all in this group is RESERVED at once;
-- one spanning groups is PENDING until every group held it (lua/commit.lua) or one refused
-- (lua/abort.lua). A hold already present is answered HELD again (a retry after a timeout
-- never holds twice). lua/lib.lua is prepended.
--
-- KEYS: the group's orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms, the ledger's time), ARGV[2] expireAt (ms), ARGV[3] max entries per
-- journal stream, ARGV[4] positions in the call, then per position: 1,
-- warehouseId, skuId; then the number of orders, then per order: orderNo, traceId, the
-- claim's token, RESERVED | PENDING, number of lines, then per line: position#, qty.
-- Nothing is held after the claim's deadline (Redis' clock): the resolver may act then.
-- The record is '<x>@<token> lines', so a commit or abort of another claim cannot touch it.
--
-- Reply items, one per order: HELD | INSUFFICIENT line# available | NOT_FOUND line# |
-- JOURNAL_FULL | LATE (the claim's deadline passed) | STALE (a record of another claim).
-- Then LEVELS items (lib.lua).
local now, max_journal, clock = tonumber(ARGV[1]), tonumber(ARGV[3]), redis_now()
local xs = ARGV[2]
local groups = call_groups(0, 1)
local g = groups[1]
local positions, _, at = call_positions(5, tonumber(ARGV[4]), 3)
local norders = tonumber(ARGV[at])
at = at + 1
local starts = {}
for i = 1, norders do
  starts[i] = at
  if not g.asked[ARGV[at]] then
    g.asked[ARGV[at]] = true
    g.reads[#g.reads + 1] = ARGV[at]
  end
  at = at + 5 + 2 * tonumber(ARGV[at + 4])
end

local out = {}
if journal_full(g, max_journal) then
  for _ = 1, norders do
    reply(out, 'JOURNAL_FULL')
  end
  return out
end
read_records(groups)

local tail = ' ' .. xs .. ' ' .. int(now) .. ' RESERVE '
for i = 1, norders do
  local a = starts[i]
  local order_no, trace, token, state, nlines = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    tonumber(ARGV[a + 4])
  local existing = parse_record(g.records[order_no])
  if existing and existing.token == token then
    reply(out, 'HELD')
  elseif existing then
    reply(out, 'STALE')
  elseif clock > token_deadline(token) then
    reply(out, 'LATE')
  else
    local short, short_at, short_available = first_short(a + 5, nlines, positions)
    if short then
      reply(out, short, short_at, short_available)
    else
      local record = xs .. '@' .. token
      for j = 1, nlines do
        local b = a + 3 + 2 * j
        local p = positions[tonumber(ARGV[b])]
        local qs = ARGV[b + 1]
        local q = tonumber(qs)
        p.a = p.a - q
        p.r = p.r + q
        p.v = p.v + 1
        p.dirty = true
        record = record .. ' ' .. p.w .. ':' .. p.s .. ':' .. qs .. ':' .. state
        g.lines[#g.lines + 1] = 'RES ' .. p.w .. ' ' .. p.s .. ' -' .. qs .. ' ' .. qs .. ' ' .. p.a .. ' ' ..
          p.r .. ' ' .. p.v .. ' ' .. qs .. tail .. order_no .. ' ' .. trace .. ' '
      end
      set_record(g, order_no, record)
      g.adds[#g.adds + 1] = xs
      g.adds[#g.adds + 1] = order_no
      reply(out, 'HELD')
    end
  end
end
flush(groups, positions)
report_levels(out, positions)
return out
