-- Reserve one order by warehouse routing (single Redis; a cluster refuses routing). The caller (engine::routing::plans) sends the plans in preference order; the
-- first plan whose lines all have the stock is held, in this call, so the choice is atomic
-- with the hold. The hold itself is written exactly as reserve.lua writes a RESERVED order
-- (directory value, records per group, holds, RES journal lines). lua/lib.lua is prepended.
--
-- KEYS[1] the order directory; then per group of the call: orders, holds, journal; then
--         the stock hash of each position.
-- ARGV[1] now (ms), ARGV[2] hold (ms), ARGV[3] max entries per journal stream,
-- ARGV[4] groups in the call, ARGV[5] positions in the call, then per position:
--   group#, warehouseId, skuId; then orderNo, traceId, number of plans, then per plan:
--   kind (F: each line from its one candidate; W: each line wholly from the first
--   candidate that has it; S: each line filled over its candidates in order), number of
--   lines, then per line: qty, number of candidates, then the candidates' position#s.
--
-- Reply: the status item, then one LINE item per line held (or listed, for a repeat):
--   RESERVED expireAt plan#   held now by that plan
--   EXISTS:<state> expireAt   reserved before with the same SKUs and quantities
--   CONFLICT                  reserved before with other SKUs or quantities
--   CANCELLED                 released before it was reserved
--   INSUFFICIENT skuId qty offered   no plan has the stock (nothing held); the first line
--                             the last plan could not fill, and the most its candidates
--                             offered (a split: their sum)
--   JOURNAL_FULL              backpressure, nothing done
--   LINE warehouseId skuId qty
-- Then one LEVELS item per position read (lib.lua, report_levels).
local now = tonumber(ARGV[1])
local hold_ms = tonumber(ARGV[2])
local max_journal = tonumber(ARGV[3])
local ngroups = tonumber(ARGV[4])
local groups = call_groups(1, ngroups)
local positions, _, at = call_positions(6, tonumber(ARGV[5]), 1 + 3 * ngroups)
local order_no, trace = ARGV[at], ARGV[at + 1]
local nplans = tonumber(ARGV[at + 2])
at = at + 3

local plans = {}
for i = 1, nplans do
  local plan = {kind = ARGV[at], lines = {}}
  local nlines = tonumber(ARGV[at + 1])
  at = at + 2
  for j = 1, nlines do
    local line = {q = tonumber(ARGV[at]), cands = {}}
    local ncands = tonumber(ARGV[at + 1])
    at = at + 2
    for k = 1, ncands do
      line.cands[k] = positions[tonumber(ARGV[at])]
      at = at + 1
    end
    plan.lines[j] = line
  end
  plans[i] = plan
end

local out = {}
for _, g in ipairs(groups) do
  if journal_full(g, max_journal) then
    reply(out, 'JOURNAL_FULL')
    return out
  end
end

-- Units per SKU the order asks for (every plan asks the same).
local function asked()
  local per_sku = {}
  for _, line in ipairs(plans[1] and plans[1].lines or {}) do
    local s = line.cands[1].s
    per_sku[s] = (per_sku[s] or 0) + line.q
  end
  return per_sku
end

local listed = redis.call('HGET', KEYS[1], order_no)
if listed then
  local entry = parse_directory(listed)
  if entry.tomb then
    reply(out, 'CANCELLED')
    return out
  end
  local held = {}
  for _, d in ipairs(entry.lines) do
    held[d.s] = (held[d.s] or 0) + d.q
  end
  local want = asked()
  local same = true
  for s, q in pairs(want) do
    if held[s] ~= q then
      same = false
    end
  end
  for s, q in pairs(held) do
    if want[s] ~= q then
      same = false
    end
  end
  if not same then
    reply(out, 'CONFLICT')
    return out
  end
  reply(out, 'EXISTS:RESERVED', entry.x)
  for _, d in ipairs(entry.lines) do
    reply(out, 'LINE', tonumber(d.w), tonumber(d.s), d.q)
  end
  return out
end

-- The allocation of a plan: {p = position, q = qty} per held piece; or nil and the first
-- line that could not be filled (its SKU, quantity, and the units its candidates offered).
local function allocate(plan)
  local pieces = {}
  -- Units this plan already takes from a position (two lines may name the same one).
  local taken = {}
  for _, line in ipairs(plan.lines) do
    local left = line.q
    local offered = 0
    for _, cand in ipairs(line.cands) do
      local p = load_position(cand)
      local free = p.loaded and (p.a - (taken[p] or 0)) or 0
      if plan.kind == 'S' then
        offered = offered + math.max(free, 0)
      else
        offered = math.max(offered, free)
      end
      if left > 0 and free > 0 and (plan.kind == 'S' or free >= left) then
        local take = math.min(free, left)
        -- One piece per position: an order holds a position on one line.
        if taken[p] then
          for _, piece in ipairs(pieces) do
            if piece.p == p then
              piece.q = piece.q + take
            end
          end
        else
          pieces[#pieces + 1] = {p = p, q = 0 + take}
        end
        taken[p] = (taken[p] or 0) + take
        left = left - take
      end
    end
    if left > 0 then
      return nil, {s = line.cands[1].s, q = line.q, a = offered}
    end
  end
  return pieces
end

local short = nil
for i, plan in ipairs(plans) do
  local pieces, failed = allocate(plan)
  short = failed or short
  if pieces then
    local expire_at = now + hold_ms
    local x = int(expire_at)
    local tail = ' ' .. x .. ' ' .. int(now) .. ' RESERVE '
    local value = x
    for _, piece in ipairs(pieces) do
      value = value .. ' ' .. hold_units(groups, piece.p, piece.q, int(piece.q), x, tail, order_no, trace)
    end
    redis.call('HSET', KEYS[1], order_no, value)
    flush(groups, positions)
    reply(out, 'RESERVED', expire_at, i)
    for _, piece in ipairs(pieces) do
      reply(out, 'LINE', tonumber(piece.p.w), tonumber(piece.p.s), piece.q)
    end
    report_levels(out, positions)
    return out
  end
end
if short then
  reply(out, 'INSUFFICIENT', tonumber(short.s), short.q, short.a)
else
  reply(out, 'INSUFFICIENT')
end
report_levels(out, positions)
return out
