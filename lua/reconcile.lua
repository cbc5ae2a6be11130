-- Repair one position found different by reconciliation: set its counters to the values
-- the ledger and the lines say, as a journalled RECONCILE change (so the DB row follows and
-- the ledger records the correction), never a silent overwrite. Only if the position has
-- not changed since it was compared (seq CAS); otherwise nothing happens and the next run
-- compares again. lua/lib.lua is prepended.
--
-- KEYS[1] stock hash, KEYS[2] the position's group journal, KEYS[3] the group's orders
-- ARGV[1] expected seq, ARGV[2] available, ARGV[3] reserved, ARGV[4] confirmed,
-- ARGV[5] warehouseId, ARGV[6] skuId, ARGV[7] now (ms), ARGV[8] remark, ARGV[9] trace id,
-- ARGV[10] the fencing token of the leader's scheduled run ('0': a run asked for by hand)
-- Reply: one item, OK seq | CHANGED seq | FENCED
local out = {}
if fence_refuses(KEYS[3], ARGV[10]) then
  reply(out, 'FENCED')
  return out
end
local v = redis.call('HMGET', KEYS[1], 'avail', 'reserved', 'seq')
local seq = tonumber(v[3] or '-1')
if seq ~= tonumber(ARGV[1]) then
  reply(out, 'CHANGED', seq)
  return out
end
local a, r = tonumber(ARGV[2]), tonumber(ARGV[3])
local da, dr = a - tonumber(v[1] or 0), r - tonumber(v[2] or 0)
local new_seq = seq + 1
redis.call('HSET', KEYS[1], 'avail', ARGV[2], 'reserved', ARGV[3], 'confirmed', ARGV[4], 'seq', int(new_seq))
redis.call('XADD', KEYS[2], '*', 'e', journal_line('ADJ', ARGV[5], ARGV[6], da, dr, a, r, new_seq, 0, 0,
  tonumber(ARGV[7]), 'RECONCILE', '', ARGV[9], ARGV[8]))
reply(out, 'OK', new_seq)
return out
