-- Records the deployment's layout and number of groups unless another instance recorded
-- them first, and moves a record of the layout with the same keys on to this layout, in
-- one step: an instance of the older version that checks the record meanwhile sees either
-- the old record (and starts before the move, as it would have anyway) or the new one (and
-- refuses), never half of it. lua/lib.lua is prepended.
--
-- KEYS[1] the meta hash. ARGV[1] this layout, ARGV[2] this instance's number of groups,
-- ARGV[3] the older layout with the same keys.
-- Reply: one item 'LAYOUT layout groups moved' (what the record says now; moved: 1 when
-- this call moved it on).
redis.call('HSETNX', KEYS[1], 'groups', ARGV[2])
redis.call('HSETNX', KEYS[1], 'layout', ARGV[1])
local layout, groups = unpack(redis.call('HMGET', KEYS[1], 'layout', 'groups'))
local moved = 0
if layout == ARGV[3] and groups == ARGV[2] then
  redis.call('HSET', KEYS[1], 'layout', ARGV[1])
  layout, moved = ARGV[1], 1
end
local out = {}
reply(out, 'LAYOUT', tonumber(layout) or 0, tonumber(groups) or 0, moved)
return out
