-- A release (or cancel) of an order Redis has no record of: leave a tombstone in the
-- directory so that its late reservation is refused instead of leaking stock.
-- lua/lib.lua is prepended.
--
-- KEYS[1] the order directory
-- ARGV[1] orderNo, ARGV[2] until (ms): the tombstone lives as long as a hold plus its
-- markers would
-- Reply: one item, TOMBSTONE | RETRY (the order has been reserved meanwhile: release it)
local out = {}
local entry = parse_directory(redis.call('HGET', KEYS[1], ARGV[1]) or nil)
if entry and not entry.tomb then
  reply(out, 'RETRY')
  return out
end
if not entry or entry.tomb < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], '! ' .. ARGV[2])
end
reply(out, 'TOMBSTONE')
return out
