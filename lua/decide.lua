-- Cluster mode: decide a confirm or release of held orders in their directory shard, so
-- that of a confirm and a release racing on one order (possibly on two instances, possibly
-- over several slot groups) exactly one wins. The decision is then applied in the order's
-- groups (lua/confirm.lua, lua/release.lua) and marked applied (lua/settle.lua); a decision
-- not yet applied is completed by a repeat or by the supervisor. lua/lib.lua is prepended.
--
-- KEYS[1] the directory shard. ARGV[1] now (ms), ARGV[2] number of orders, then per order:
-- orderNo, C (confirm) | R (release) | E (expiry), '1' = confirm even if the hold expired.
--
-- Reply items, one per order (n1: the hold's expireAt):
--   DECIDED x           this call decided; apply it
--   SAME x applied letter  the same kind (confirm; release or expiry) was decided before;
--                       letter as below (a release finishing an expiry applies it as one)
--   OTHER x letter      the other kind was decided before (letter: 1 C, 2 R, 3 E)
--   EXPIRED x           confirm refused: the hold expired (nothing decided)
--   NOT_EXPIRED x       expiry refused: the hold has not expired
--   PENDING             the order is still being reserved
--   NOT_FOUND           no entry (or a tombstone)
local now = tonumber(ARGV[1])
local LETTER = {C = 1, R = 2, E = 3}
local out = {}
local at = 3
for _ = 1, tonumber(ARGV[2]) do
  local order_no, kind, paid = ARGV[at], ARGV[at + 1], ARGV[at + 2] == '1'
  at = at + 3
  local entry = parse_cluster_entry(redis.call('HGET', KEYS[1], order_no) or nil)
  if not entry or entry.tomb or entry.aborted then
    reply(out, 'NOT_FOUND')
  elseif entry.deadline then
    reply(out, 'PENDING', entry.deadline)
  elseif entry.decision ~= '' then
    local d = string.upper(entry.decision)
    local applied = (d ~= entry.decision) and 1 or 0
    if (d == 'C') == (kind == 'C') then
      reply(out, 'SAME', entry.x, applied, LETTER[d])
    else
      reply(out, 'OTHER', entry.x, LETTER[d])
    end
  elseif kind == 'C' and not paid and entry.x <= now then
    reply(out, 'EXPIRED', entry.x)
  elseif kind == 'E' and entry.x > now then
    reply(out, 'NOT_EXPIRED', entry.x)
  else
    redis.call('HSET', KEYS[1], order_no, kind .. int(entry.x) .. ' ' .. entry.rest)
    reply(out, 'DECIDED', entry.x)
  end
end
return out
