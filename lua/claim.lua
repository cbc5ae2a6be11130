-- Cluster mode, reserve step 1: claim each order's entry in its directory shard, so that
-- one request at a time reserves an orderNo and a repeat with other lines is a conflict even
-- when its lines are in other slot groups. lua/lib.lua is prepended.
--
-- KEYS[1] the directory shard. ARGV[1] the claim's token '<deadline ms>.<nonce>' (the
-- deadline is checked against Redis' own clock), ARGV[2] expireAt (ms) of the holds,
-- ARGV[3] number of orders, then per order: orderNo, its lines as 'w:s:q w:s:q ...'.
--
-- Reply items, one per order:
--   CLAIMED                 the entry is ours ('?<token>/<x> lines'): hold the lines (also
--                           when it already was: the retry of a call whose answer was lost)
--   KNOWN x                 reserved before with the same lines (its state is in the groups)
--   CONFLICT line# (0: other lines)
--   CANCELLED               released before it was reserved (a tombstone)
--   BUSY deadline           another request is reserving it now
--   IN_DOUBT deadline       a claim whose deadline passed: resolve it first
--   ABORTED:<kind> line# available   refused before after a partial hold (the same answer)
local now, token, x = redis_now(), ARGV[1], ARGV[2]
local out = {}
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  local order_no, lines = ARGV[at], ARGV[at + 1]
  at = at + 2
  local entry = parse_cluster_entry(redis.call('HGET', KEYS[1], order_no) or nil)
  if not entry then
    redis.call('HSET', KEYS[1], order_no, '?' .. token .. '/' .. x .. ' ' .. lines)
    reply(out, 'CLAIMED')
  elseif entry.tomb then
    reply(out, 'CANCELLED')
  else
    local conflict = differs(entry, lines)
    if conflict then
      reply(out, 'CONFLICT', conflict)
    elseif entry.token == token then
      -- Our own claim, written by a call whose answer was lost: the retry of that call.
      reply(out, 'CLAIMED')
    elseif entry.deadline and entry.deadline >= now then
      reply(out, 'BUSY', entry.deadline)
    elseif entry.deadline then
      reply(out, 'IN_DOUBT', entry.deadline)
    elseif entry.aborted then
      reply(out, 'ABORTED:' .. entry.aborted.kind, entry.aborted.line, entry.aborted.available)
    else
      reply(out, 'KNOWN', entry.x)
    end
  end
end
return out
