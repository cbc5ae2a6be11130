-- Cluster mode: settle directory entries whose head is still what the caller saw, in one
-- directory shard. lua/lib.lua is prepended.
--
-- KEYS[1] the directory shard. ARGV[1] number of orders, then per order: orderNo, the head
-- the caller saw, and what to do: COMMIT ('?<d>/<x>' -> '<x>'), DROP (remove the entry),
-- APPLIED ('C<x>' -> 'c<x>', likewise R and E), ABORT:<kind>:<line>:<available>
-- ('?<d>/<x>' -> 'A<x>:...': a repeat gets the same refusal; the ledger keeps the abort),
-- DROP_TOMBSTONE (the head is the whole tombstone '! <until>' seen: it goes only if no
-- release renewed it meanwhile).
-- Reply items: OK | STALE (the head changed meanwhile; nothing done).
local out = {}
local at = 2
for _ = 1, tonumber(ARGV[1]) do
  local order_no, head, action = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  local raw = redis.call('HGET', KEYS[1], order_no)
  local entry = parse_cluster_entry(raw or nil)
  if action == 'DROP_TOMBSTONE' then
    if raw == head then
      redis.call('HDEL', KEYS[1], order_no)
      reply(out, 'OK')
    else
      reply(out, 'STALE')
    end
  elseif not entry or entry.tomb or entry.head ~= head then
    reply(out, 'STALE')
  else
    local abort_as = string.match(action, '^ABORT:(.+)$')
    if action == 'DROP' then
      redis.call('HDEL', KEYS[1], order_no)
    elseif abort_as then
      redis.call('HSET', KEYS[1], order_no, 'A' .. int(entry.x) .. ':' .. abort_as .. ' ' .. entry.rest)
    elseif action == 'COMMIT' then
      redis.call('HSET', KEYS[1], order_no, int(entry.x) .. ' ' .. entry.rest)
    else
      redis.call('HSET', KEYS[1], order_no, string.lower(entry.decision) .. int(entry.x) .. ' ' .. entry.rest)
    end
    reply(out, 'OK')
  end
end
return out
