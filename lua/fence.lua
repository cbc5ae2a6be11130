-- Raises a group's fence to a new leader's token before it runs any leader-only job, so
-- that writes of an older leader are refused from then on (lib.lua, fence_refuses).
-- lua/lib.lua is prepended.
--
-- KEYS[1] the group's orders hash
-- ARGV[1] the token
-- Reply: one item, OK | FENCED (a newer token was seen: this instance no longer leads)
local out = {}
if fence_refuses(KEYS[1], ARGV[1]) then
  reply(out, 'FENCED')
else
  reply(out, 'OK')
end
return out
