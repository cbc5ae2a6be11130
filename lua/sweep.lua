-- Forget orders whose holds and markers have lived out: their directory entry and their
-- records, in bulk (the supervisor's sweep; a record has no expiry of its own). Never an
-- order with a held line: its stock would leak. lua/lib.lua is prepended.
--
-- KEYS[1] the order directory, then per group of the call: orders, holds, journal
-- ARGV[1] now (ms), ARGV[2] marker ttl after the hold (ms), ARGV[3] groups in the call,
-- then the number of orders, then per order: orderNo, '' (no trace id), the number of its
-- groups, group#s (a tombstone names none)
-- Reply: one item, SWEPT orders-removed kept
local now = tonumber(ARGV[1])
local marker_ms = tonumber(ARGV[2])
local groups = call_groups(1, tonumber(ARGV[3]))
local orders = transition_orders(4, groups, 0)
local removed, kept = 0, 0
local drop = {}
for _, o in ipairs(orders) do
  local entry = parse_directory(redis.call('HGET', KEYS[1], o.no) or nil)
  local gone = false
  if entry and entry.tomb then
    gone = entry.tomb <= now
  elseif entry then
    gone = entry.x + marker_ms <= now
    for _, gi in ipairs(o.groups) do
      local rec = parse_record(groups[gi].records[o.no])
      for _, l in ipairs(rec and rec.lines or {}) do
        if l.st == 'RESERVED' then
          gone = false
        end
      end
    end
  end
  if gone then
    drop[#drop + 1] = o.no
    for _, gi in ipairs(o.groups) do
      local g = groups[gi]
      g.removes[#g.removes + 1] = o.no
    end
    removed = removed + 1
  elseif entry then
    kept = kept + 1
  end
end
for from = 1, #drop, SLICE do
  redis.call('HDEL', KEYS[1], unpack(drop, from, math.min(from + SLICE - 1, #drop)))
end
for _, g in ipairs(groups) do
  for from = 1, #g.removes, SLICE do
    redis.call('HDEL', g.o, unpack(g.removes, from, math.min(from + SLICE - 1, #g.removes)))
  end
end
local out = {}
reply(out, 'SWEPT', removed, kept)
return out
