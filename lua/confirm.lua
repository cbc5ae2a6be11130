-- Confirm a batch of orders: every line RESERVED -> CONFIRMED (the units leave `reserved`
-- for `confirmed`; `available` does not change). All-or-nothing per order: a released or
-- expired line fails the whole order and nothing of it changes. Confirming a confirmed
-- order is EXISTS. lua/lib.lua is prepended.
--
-- KEYS: per group of the call: orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] max entries per journal stream, ARGV[3] groups in the call,
-- ARGV[4] positions in the call, then per position: group#, warehouseId, skuId; then the
-- number of orders, then per order: orderNo, traceId, '1' = confirm even if the hold
-- expired (the order service says it was paid), the number of its groups, their group#s.
--
-- Reply items, one per order: CONFIRMED | EXISTS | NOT_FOUND | MISSING w s (a position
-- Redis lacks) | RETRY | JOURNAL_FULL |
-- RELEASED w s | EXPIRED w s (the line that refused).
-- Then one LEVELS item per position read (lib.lua, report_levels).
local now = tonumber(ARGV[1])
local max_journal = tonumber(ARGV[2])
local ngroups = tonumber(ARGV[3])
local groups = call_groups(0, ngroups)
local positions, by_id, at = call_positions(5, tonumber(ARGV[4]), 3 * ngroups)
local orders = transition_orders(at, groups, 1)

local out = {}
for _, o in ipairs(orders) do
  local lines, x = order_lines(o, groups, by_id)
  if lines == nil then
    reply(out, 'NOT_FOUND')
  elseif lines == false then
    reply(out, 'RETRY')
  else
    local refused, done = nil, 0
    for _, l in ipairs(lines) do
      if l.st == 'RELEASED' then
        refused = 'RELEASED'
      elseif l.st == 'RESERVED' and x <= now and o.args[1] ~= '1' then
        refused = 'EXPIRED'
      elseif l.st == 'CONFIRMED' then
        done = done + 1
      end
      if refused then
        reply(out, refused, tonumber(l.w), tonumber(l.s))
        break
      end
    end
    if not refused then
      local blocked, bw, bs = cannot_change(lines, groups, max_journal)
      if done == #lines then
        reply(out, 'EXISTS')
      elseif blocked then
        reply(out, blocked, bw, bs)
      else
        for _, l in ipairs(lines) do
          if l.st == 'RESERVED' then
            local p = l.p
            p.r = p.r - l.q
            p.c = p.c + l.q
            p.v = p.v + 1
            touch(p)
            l.st = 'CONFIRMED'
            local g = groups[p.g]
            g.lines[#g.lines + 1] = journal_line('CNF', p.w, p.s, 0, -l.q, p.a, p.r, p.v, l.q, x, now,
              'CONFIRM', o.no, o.tr, '')
          end
        end
        store_order(o, groups, lines, x)
        reply(out, 'CONFIRMED')
      end
    end
  end
end
flush(groups, positions)
report_levels(out, positions)
return out
