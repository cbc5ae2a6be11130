-- Cluster mode, reserve step 3 (orders spanning groups): every group held its lines, so
-- the order is decided: PENDING -> RESERVED in this group. No stock moves (the hold already
-- moved it) and nothing is journalled. Refused after the claim's deadline unless forced:
-- past it only the resolver decides (docs/redis-layout.md). lua/lib.lua is prepended.
--
-- KEYS[1] the group's orders. ARGV[1] unused (Redis' clock is used), ARGV[2] '1' = forced
-- (the resolver saw a line of the order past PENDING), ARGV[3] number of orders, then per
-- order: orderNo, the claim's token (a record of another claim is not touched).
-- Reply items: OK | LATE | NOT_FOUND | STALE.
local now, forced = redis_now(), ARGV[2] == '1'
local out = {}
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  local order_no, token = ARGV[at], ARGV[at + 1]
  at = at + 2
  local raw = redis.call('HGET', KEYS[1], order_no)
  local rec = parse_record(raw or nil)
  if not raw then
    reply(out, 'NOT_FOUND')
  elseif rec.token ~= token then
    reply(out, 'STALE')
  elseif now > token_deadline(token) and not forced then
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
