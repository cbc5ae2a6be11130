-- Repair one position found different by reconciliation: set its counters to the values
-- the ledger and the lines say, as a journalled RECONCILE change (so the DB row follows and
-- the ledger records the correction), never a silent overwrite. Only if the position has
-- not changed since it was compared (seq CAS); otherwise nothing happens and the next run
-- compares again.
--
-- KEYS[1] stock hash, KEYS[2] journal
-- ARGV[1] expected seq, ARGV[2] available, ARGV[3] reserved, ARGV[4] confirmed,
-- ARGV[5] warehouseId, ARGV[6] skuId, ARGV[7] now (ms), ARGV[8] remark, ARGV[9] trace id
-- Returns {'OK', seq} or {'CHANGED', seq}
local v = redis.call('HMGET', KEYS[1], 'avail', 'reserved', 'seq')
local seq = tonumber(v[3] or '-1')
if seq ~= tonumber(ARGV[1]) then
  return {'CHANGED', seq}
end
local a, r = tonumber(ARGV[2]), tonumber(ARGV[3])
local da, dr = a - tonumber(v[1] or 0), r - tonumber(v[2] or 0)
redis.call('HSET', KEYS[1], 'avail', a, 'reserved', r, 'confirmed', ARGV[4])
local new_seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local event = {
  k = 'ADJ', w = ARGV[5], s = ARGV[6], da = da, dr = dr, a = a, r = r, v = new_seq,
  rs = 'RECONCILE', o = '', tr = ARGV[9], ts = tonumber(ARGV[7]), rm = ARGV[8],
}
redis.call('XADD', KEYS[2], '*', 'e', cjson.encode({event}))
return {'OK', new_seq}
