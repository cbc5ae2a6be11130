-- Confirm one order with the quantities the order service ships (single Redis): each line
-- sells the units asked (0..held) and gives the rest back to sale, as TigerBeetle posts a
-- pending transfer for a smaller amount. All-or-nothing, as confirm.lua: a released or
-- expired line refuses the order and nothing changes. lua/lib.lua is prepended.
--
-- KEYS: per group of the call: orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] max entries per journal stream, ARGV[3] groups in the call,
-- ARGV[4] positions in the call, then per position: group#, warehouseId, skuId; then 1
-- (one order): orderNo, traceId, '1' = confirm even if the hold expired, then the units to
-- confirm of each position of the call in order, then the number of its groups and their
-- group#s.
--
-- Per line: a PRL journal line for the units given back (ledger reason RELEASE, remark
-- PARTIAL_CONFIRM; the row keeps its state), then the CNF line whose reserved delta is the
-- units sold. The record keeps the units held and adds the units sold ('w:s:q:CONFIRMED:c')
-- when fewer.
--
-- Reply item: CONFIRMED | EXISTS (confirmed before with these quantities) | CONFLICT
-- (confirmed before with others) | NOT_FOUND | MISSING w s | RETRY | JOURNAL_FULL | RELEASED w s |
-- EXPIRED w s | TOO_MANY w s (more units than the line holds). Then LEVELS items.
local now = tonumber(ARGV[1])
local max_journal = tonumber(ARGV[2])
local ngroups = tonumber(ARGV[3])
local npositions = tonumber(ARGV[4])
local groups = call_groups(0, ngroups)
local positions, by_id, at = call_positions(5, npositions, 3 * ngroups)
local o = transition_orders(at, groups, 1 + npositions)[1]
local want = {}
for k, p in ipairs(positions) do
  want[p] = tonumber(o.args[1 + k])
end

local out = {}
local function decide()
  local lines, x = order_lines(o, groups, by_id)
  if lines == nil then
    return reply(out, 'NOT_FOUND')
  elseif lines == false then
    return reply(out, 'RETRY')
  end
  local done = 0
  for _, l in ipairs(lines) do
    if l.st == 'RELEASED' then
      return reply(out, 'RELEASED', tonumber(l.w), tonumber(l.s))
    elseif l.st == 'RESERVED' and x <= now and o.args[1] ~= '1' then
      return reply(out, 'EXPIRED', tonumber(l.w), tonumber(l.s))
    elseif l.st == 'CONFIRMED' then
      done = done + 1
    end
    if want[l.p] > l.q or want[l.p] < 0 then
      return reply(out, 'TOO_MANY', tonumber(l.w), tonumber(l.s))
    end
  end
  if done > 0 then
    -- A repeat: the same units sold per line, or a different confirm.
    for _, l in ipairs(lines) do
      if l.st ~= 'CONFIRMED' or (l.c or l.q) ~= want[l.p] then
        return reply(out, 'CONFLICT')
      end
    end
    return reply(out, 'EXISTS')
  end
  local blocked, bw, bs = cannot_change(lines, groups, max_journal)
  if blocked then
    return reply(out, blocked, bw, bs)
  end
  for _, l in ipairs(lines) do
    local p, q, c = l.p, l.q, want[l.p]
    local g = groups[p.g]
    local back = q - c
    if back > 0 then
      p.a = p.a + back
      p.r = p.r - back
      p.v = p.v + 1
      g.lines[#g.lines + 1] = journal_line('PRL', p.w, p.s, back, -back, p.a, p.r, p.v, back, x, now,
        'RELEASE', o.no, o.tr, 'PARTIAL_CONFIRM')
    end
    p.r = p.r - c
    p.c = p.c + c
    p.v = p.v + 1
    touch(p)
    g.lines[#g.lines + 1] = journal_line('CNF', p.w, p.s, 0, -c, p.a, p.r, p.v, q, x, now,
      'CONFIRM', o.no, o.tr, '')
    l.st = 'CONFIRMED'
    if c < q then
      l.c = c
    end
  end
  store_order(o, groups, lines, x)
  return reply(out, 'CONFIRMED')
end

decide()
flush(groups, positions)
report_levels(out, positions)
return out
