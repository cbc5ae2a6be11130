-- Cluster mode: abort an order spanning groups in one group: its PENDING lines give their
-- units back (journal REL, ledger reason ABORT) and become ABORTED (the record stays until
-- the sweep, so a resolver that comes later still sees that the order was aborted).
-- Refused when a line of it here is RESERVED or later: then the order was decided
-- (committed) and is not aborted. lua/lib.lua is prepended.
--
-- KEYS: the group's orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] positions in the call, then per position: 1, warehouseId,
-- skuId; then the number of orders, then per order: orderNo, traceId, the claim's token.
-- Reply items: ABORTED | NONE (no record) | COMMITTED | STALE (a record of another claim) |
-- RETRY (a line names a position not in the call). Then LEVELS items (lib.lua).
local now = tonumber(ARGV[1])
local groups = call_groups(0, 1)
local g = groups[1]
local positions, by_id, at = call_positions(3, tonumber(ARGV[2]), 3)
local orders = {}
for i = 1, tonumber(ARGV[at]) do
  local b = at + 3 * (i - 1)
  orders[i] = {no = ARGV[b + 1], tr = ARGV[b + 2], token = ARGV[b + 3]}
end
local out = {}
for _, o in ipairs(orders) do
  local rec = parse_record(redis.call('HGET', g.o, o.no) or nil)
  if not rec then
    reply(out, 'NONE')
  elseif rec.token ~= o.token then
    reply(out, 'STALE')
  else
    local verdict, aborted = nil, 0
    for _, l in ipairs(rec.lines) do
      l.p = by_id[l.w .. ':' .. l.s]
      if l.st == 'ABORTED' then
        aborted = aborted + 1
      elseif l.st ~= 'PENDING' then
        verdict = 'COMMITTED'
      elseif not l.p then
        verdict = verdict or 'RETRY'
      end
    end
    if verdict then
      reply(out, verdict)
    elseif aborted == #rec.lines then
      reply(out, 'ABORTED')
    else
      local kept = {int(rec.x) .. '@' .. rec.token}
      for _, l in ipairs(rec.lines) do
        if l.st == 'PENDING' then
          local p = load_position(l.p)
          p.a = p.a + l.q
          p.r = p.r - l.q
          p.v = p.v + 1
          touch(p)
          g.lines[#g.lines + 1] = journal_line('REL', p.w, p.s, l.q, -l.q, p.a, p.r, p.v, l.q, rec.x, now,
            'ABORT', o.no, o.tr, 'order not held in every slot group')
        end
        kept[#kept + 1] = l.w .. ':' .. l.s .. ':' .. int(l.q) .. ':ABORTED'
      end
      set_record(g, o.no, table.concat(kept, ' '))
      g.removes[#g.removes + 1] = o.no
      reply(out, 'ABORTED')
    end
  end
end
flush(groups, positions)
report_levels(out, positions)
return out
