-- Release a batch of orders: every held line RESERVED -> RELEASED, the units go back to
-- `available`. Used by cancellation, manual release and expiry. A confirmed line is never
-- released: it fails the whole order and nothing of it changes. Releasing a released
-- order is EXISTS. An order Redis has no record of is NOT_FOUND here; the caller leaves a
-- tombstone for it with lua/tombstone.lua. lua/lib.lua is prepended.
--
-- KEYS: per group of the call: orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] max entries per journal stream, ARGV[3] groups in the call,
-- ARGV[4] positions in the call, then per position: group#, warehouseId, skuId; then the
-- number of orders, then per order: orderNo, traceId, ledger reason (RELEASE | EXPIRED),
-- remark, '1' = only if every held line has expired (the expiry scan), the fencing token of
-- a leader-only release ('0': none; lib.lua, fence_refuses), the number of its groups,
-- their group#s.
--
-- Reply items, one per order: RELEASED | EXISTS | NOT_FOUND | MISSING w s (a position Redis
-- lacks; the order is kept) | RETRY | JOURNAL_FULL |
-- NOT_EXPIRED | FENCED (a newer leader's token was seen) | CONFIRMED w s (the line that
-- refused).
-- Then one LEVELS item per position read (lib.lua, report_levels).
local now = tonumber(ARGV[1])
local max_journal = tonumber(ARGV[2])
local ngroups = tonumber(ARGV[3])
local groups = call_groups(0, ngroups)
local positions, by_id, at = call_positions(5, tonumber(ARGV[4]), 3 * ngroups)
local orders = transition_orders(at, groups, 4)

local out = {}
for _, o in ipairs(orders) do
  local reason, remark, only_expired, fence = o.args[1], o.args[2], o.args[3] == '1', o.args[4]
  local stale = false
  for _, gi in ipairs(o.groups) do
    stale = stale or fence_refuses(groups[gi].o, fence)
  end
  local lines, x = order_lines(o, groups, by_id)
  if stale then
    reply(out, 'FENCED')
  elseif lines == nil then
    reply(out, 'NOT_FOUND')
  elseif lines == false then
    reply(out, 'RETRY')
  else
    local refused, held = nil, 0
    for _, l in ipairs(lines) do
      if l.st == 'CONFIRMED' then
        refused = 'CONFIRMED'
        reply(out, refused, tonumber(l.w), tonumber(l.s))
        break
      elseif l.st == 'RESERVED' then
        held = held + 1
      end
    end
    if not refused then
      local blocked, bw, bs = cannot_change(lines, groups, max_journal)
      if held == 0 then
        reply(out, 'EXISTS')
      elseif only_expired and x > now then
        reply(out, 'NOT_EXPIRED')
      elseif blocked then
        reply(out, blocked, bw, bs)
      else
        for _, l in ipairs(lines) do
          if l.st == 'RESERVED' then
            local p = l.p
            p.a = p.a + l.q
            p.r = p.r - l.q
            p.v = p.v + 1
            touch(p)
            l.st = 'RELEASED'
            local g = groups[p.g]
            g.lines[#g.lines + 1] = journal_line('REL', p.w, p.s, l.q, -l.q, p.a, p.r, p.v, l.q, x, now,
              reason, o.no, o.tr, remark)
          end
        end
        store_order(o, groups, lines, x)
        reply(out, 'RELEASED')
      end
    end
  end
end
flush(groups, positions)
report_levels(out, positions)
return out
