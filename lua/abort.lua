-- Cluster mode: abort an order spanning groups in one group: its PENDING lines give their
-- units back (journal REL, ledger reason ABORT) and its record goes, so the orderNo may be
-- reserved again. Refused when a line of it here is past PENDING: then the order was
-- decided (committed) and is not aborted. lua/lib.lua is prepended.
--
-- KEYS: the group's orders, holds, journal; then the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] positions in the call, then per position: 1, warehouseId,
-- skuId; then the number of orders, then per order: orderNo, traceId.
-- Reply items: ABORTED | NONE (no record) | COMMITTED | RETRY (a line names a position not
-- in the call). Then LEVELS items (lib.lua).
local now = tonumber(ARGV[1])
local groups = call_groups(0, 1)
local g = groups[1]
local positions, by_id, at = call_positions(3, tonumber(ARGV[2]), 3)
local orders = {}
for i = 1, tonumber(ARGV[at]) do
  orders[i] = {no = ARGV[at + 2 * i - 1], tr = ARGV[at + 2 * i]}
end
local out = {}
for _, o in ipairs(orders) do
  local rec = parse_record(redis.call('HGET', g.o, o.no) or nil)
  if not rec then
    reply(out, 'NONE')
  else
    local verdict = nil
    for _, l in ipairs(rec.lines) do
      l.p = by_id[l.w .. ':' .. l.s]
      if l.st ~= 'PENDING' then
        verdict = 'COMMITTED'
      elseif not l.p then
        verdict = verdict or 'RETRY'
      end
    end
    if verdict then
      reply(out, verdict)
    else
      for _, l in ipairs(rec.lines) do
        local p = load_position(l.p)
        p.a = p.a + l.q
        p.r = p.r - l.q
        p.v = p.v + 1
        touch(p)
        g.lines[#g.lines + 1] = journal_line('REL', p.w, p.s, l.q, -l.q, p.a, p.r, p.v, l.q, rec.x, now,
          'ABORT', o.no, o.tr, 'order not held in every slot group')
      end
      redis.call('HDEL', g.o, o.no)
      g.removes[#g.removes + 1] = o.no
      reply(out, 'ABORTED')
    end
  end
end
flush(groups, positions)
report_levels(out, positions)
return out
