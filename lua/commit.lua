-- Cluster mode, reserve step 3 (orders spanning groups): every group held its lines, so
-- the order is decided: PENDING -> RESERVED in this group. No stock moves (the hold already
-- moved it) and nothing is journalled. Refused after the claim's deadline unless forced:
-- past it only the resolver decides (docs/redis-layout.md). lua/lib.lua is prepended.
--
-- KEYS[1] the group's orders. ARGV[1] now (ms), ARGV[2] '1' = forced (the resolver saw a
-- RESERVED line of the order), ARGV[3] number of orders, then per order: orderNo, deadline.
-- Reply items: OK | LATE | NOT_FOUND.
local now, forced = tonumber(ARGV[1]), ARGV[2] == '1'
local out = {}
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  local order_no, deadline = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local raw = redis.call('HGET', KEYS[1], order_no)
  if not raw then
    reply(out, 'NOT_FOUND')
  elseif now > deadline and not forced then
    reply(out, 'LATE')
  else
    local changed = string.gsub(raw, ':PENDING', ':RESERVED')
    if changed ~= raw then
      redis.call('HSET', KEYS[1], order_no, changed)
    end
    reply(out, 'OK')
  end
end
return out
