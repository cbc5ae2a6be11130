-- Shared by every script: prepended to each one when it is loaded (store/redis.rs), so the
-- layout below is written once. src/store/wire.rs is the Rust half; a test checks that the
-- three constants here match it.
--
-- Layout (docs/redis-layout.md):
--   order record    '<expireAt> <w>:<s>:<qty>:<STATE>[:<sold>] ...'  (an order's lines in one
--                   group; <sold> after a partial confirm)
--   directory entry '<expireAt> <w>:<s>:<qty> ...' or '! <until>' (a tombstone)
--   journal line    'KIND w s da dr a r v q x ts reason orderNo traceId remark'; a r v may
--                   be '. . .': the previous line of the position in the same entry plus
--                   da, dr and 1 (hold_units)
--   reply           a flat array, REPLY_WIDTH values per item: status, then 4 integers;
--                   'AGAIN k' repeats the item before it k times (reply)
local RANK = {RESERVED = 1, CONFIRMED = 2, RELEASED = 2}
local JOURNAL_FIELDS = 15
local REPLY_WIDTH = 5
-- Values per variadic call: Lua's unpack has a stack limit (about 8000).
local SLICE = 4000

-- An item equal to the one before it is not written again: an 'AGAIN k' item after it
-- says that it is repeated k more times (wire::parse_reply expands it). A batch of one
-- hot SKU answers 'RESERVED x' or 'INSUFFICIENT 1 0' to hundreds of orders in a row, and
-- every value of a reply costs Redis an object and the caller a parse. The last item and
-- the place of its AGAIN live in out's hash part, which Redis does not send.
local function reply(out, status, a, b, c, d)
  a, b, c, d = a or 0, b or 0, c or 0, d or 0
  local n = #out
  if status == out.last_status and a == out.last_a and b == out.last_b and c == out.last_c and d == out.last_d then
    local again = out.again
    if again then
      out[again + 1] = out[again + 1] + 1
    else
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = 'AGAIN', 1, 0, 0, 0
      out.again = n + 1
    end
    return
  end
  out.last_status, out.last_a, out.last_b, out.last_c, out.last_d, out.again = status, a, b, c, d, nil
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = status, a, b, c, d
end

-- Integers as text: tostring would write large numbers in exponent form.
local function int(n)
  return string.format('%d', n)
end

-- Small numeric arguments (position numbers, quantities, line counts) as numbers, each
-- distinct text converted once per call: tonumber goes through strtod, about 0.12 us a
-- time here, and a batch of a hot SKU repeats the same few texts for every order. Only
-- for texts that are there (ARGV values): a nil key is an error.
local NUM = setmetatable({}, {__index = function(t, k)
  local n = tonumber(k)
  t[k] = n
  return n
end})

local function parse_record(raw)
  if not raw then
    return nil
  end
  -- Most records hold one line: one match instead of a scan of the fields.
  local x1, w1, s1, q1, st1 = string.match(raw, '^(%d+) ([^: ]+):([^: ]+):(%d+):(%u+)$')
  if x1 then
    return {x = tonumber(x1), lines = {{w = w1, s = s1, q = tonumber(q1), st = st1}}}
  end
  local rec = {lines = {}}
  local first = true
  for field in string.gmatch(raw, '%S+') do
    if first then
      first = false
      -- Cluster mode: '<x>@<claim token>' while the order's claim is open (hold.lua).
      local x, token = string.match(field, '^(%d+)@(.+)$')
      rec.x, rec.token = tonumber(x or field), token
    else
      -- A fifth part, after a partial confirm: the units sold (lua/confirm_partial.lua).
      local w, s, q, st, c = string.match(field, '^([^:]+):([^:]+):([^:]+):([^:]+):?([^:]*)$')
      rec.lines[#rec.lines + 1] = {w = w, s = s, q = tonumber(q), st = st, c = tonumber(c)}
    end
  end
  return rec
end

local function format_record(rec)
  local parts = {int(rec.x)}
  for _, l in ipairs(rec.lines) do
    local part = l.w .. ':' .. l.s .. ':' .. int(l.q) .. ':' .. l.st
    if l.c then
      part = part .. ':' .. int(l.c)
    end
    parts[#parts + 1] = part
  end
  return table.concat(parts, ' ')
end

local function parse_directory(raw)
  if not raw then
    return nil
  end
  local until_ms = string.match(raw, '^! (%d+)$')
  if until_ms then
    return {tomb = tonumber(until_ms)}
  end
  local entry = {lines = {}}
  for field in string.gmatch(raw, '%S+') do
    if not entry.x then
      entry.x = tonumber(field)
    else
      local w, s, q = string.match(field, '^([^:]+):([^:]+):([^:]+)$')
      entry.lines[#entry.lines + 1] = {w = w, s = s, q = tonumber(q)}
    end
  end
  return entry
end

local function journal_line(kind, w, s, da, dr, a, r, v, q, x, ts, reason, order_no, trace, remark)
  return table.concat({kind, w, s, int(da), int(dr), int(a), int(r), int(v), int(q), int(x), int(ts),
    reason, order_no, trace, remark}, ' ')
end

-- The groups of one call: KEYS[base + 1 ..], three keys each (orders, holds, journal).
local function call_groups(base, n)
  local groups = {}
  for i = 1, n do
    local k = base + 3 * (i - 1)
    groups[i] = {o = KEYS[k + 1], h = KEYS[k + 2], j = KEYS[k + 3],
      reads = {}, asked = {}, records = {}, writes = {}, record_writes = {}, adds = {}, removes = {}, lines = {}}
  end
  return groups
end

-- The positions of one call: ARGV triples (group#, w, s) starting at `at`; their stock
-- hashes are KEYS[key_base + k]. Counters are read once, on first use, and written once.
local function call_positions(at, n, key_base)
  local positions, by_id = {}, {}
  for k = 1, n do
    local p = {g = tonumber(ARGV[at]), w = ARGV[at + 1], s = ARGV[at + 2], key = KEYS[key_base + k]}
    positions[k] = p
    by_id[p.w .. ':' .. p.s] = p
    at = at + 3
  end
  return positions, by_id, at
end

local function load_position(p)
  if p.loaded == nil then
    local v = redis.call('HMGET', p.key, 'avail', 'reserved', 'confirmed', 'seq')
    p.loaded = v[1] ~= false
    p.a, p.r, p.c, p.v = tonumber(v[1] or 0), tonumber(v[2] or 0), tonumber(v[3] or 0), tonumber(v[4] or 0)
  end
  return p
end

-- One HMGET per group of every order the call names in it (the only per-batch read of
-- order state).
local function read_records(groups)
  for _, g in ipairs(groups) do
    if #g.reads > 0 then
      for from = 1, #g.reads, SLICE do
        local to = math.min(from + SLICE - 1, #g.reads)
        local values = redis.call('HMGET', g.o, unpack(g.reads, from, to))
        for i = from, to do
          g.records[g.reads[i]] = values[i - from + 1] or nil
        end
      end
    end
  end
end

-- Holds q units (qs: as text) of position p for an order (reserve.lua, route.lua): the
-- counters, the order's record in p's group (a new record is also added to the holds) and
-- the RES journal line. tail is ' <x> <now> RESERVE '. Returns the directory line 'w:s:q'.
-- A journal line's a, r and v are '.' when the call has journalled this position before
-- (docs/redis-layout.md, "Journal lines"): the values after the previous line of the
-- position in the same entry plus this line's deltas, and seq + 1. Writing the numbers
-- costs three number-to-text conversions (sprintf) per order, more than the rest of the
-- line; the persister works them out instead.
local function hold_units(groups, p, q, qs, x, tail, order_no, trace)
  p.a = p.a - q
  p.r = p.r + q
  p.v = p.v + 1
  p.dirty = true
  local line = p.w .. ':' .. p.s .. ':' .. qs
  local g = groups[p.g]
  local record = g.record_writes[order_no]
  if record then
    g.record_writes[order_no] = record .. ' ' .. line .. ':RESERVED'
  else
    g.record_writes[order_no] = x .. ' ' .. line .. ':RESERVED'
    g.writes[#g.writes + 1] = order_no
    g.adds[#g.adds + 1] = x
    g.adds[#g.adds + 1] = order_no
  end
  if p.journalled then
    g.lines[#g.lines + 1] = 'RES ' .. p.w .. ' ' .. p.s .. ' -' .. qs .. ' ' .. qs .. ' . . . ' .. qs .. tail ..
      order_no .. ' ' .. trace .. ' '
  else
    p.journalled = true
    g.lines[#g.lines + 1] = 'RES ' .. p.w .. ' ' .. p.s .. ' -' .. qs .. ' ' .. qs .. ' ' .. p.a .. ' ' ..
      p.r .. ' ' .. p.v .. ' ' .. qs .. tail .. order_no .. ' ' .. trace .. ' '
  end
  return line
end

local function journal_full(g, limit)
  if g.full == nil then
    g.full = redis.call('XLEN', g.j) >= limit
  end
  return g.full
end

local function set_record(g, order_no, raw)
  if g.record_writes[order_no] == nil then
    g.writes[#g.writes + 1] = order_no
  end
  g.record_writes[order_no] = raw
  g.records[order_no] = raw
end

-- Writes what a call changed: per group one HSET of records, one ZADD, one ZREM and one
-- XADD; per position one HSET.
local function flush(groups, positions)
  for _, p in ipairs(positions) do
    if p.dirty then
      redis.call('HSET', p.key, 'avail', int(p.a), 'reserved', int(p.r), 'confirmed', int(p.c), 'seq', int(p.v))
    end
  end
  for _, g in ipairs(groups) do
    if #g.writes > 0 then
      local flat = {}
      for _, order_no in ipairs(g.writes) do
        flat[#flat + 1] = order_no
        flat[#flat + 1] = g.record_writes[order_no]
      end
      for from = 1, #flat, SLICE do
        redis.call('HSET', g.o, unpack(flat, from, math.min(from + SLICE - 1, #flat)))
      end
    end
    for from = 1, #g.adds, SLICE do
      redis.call('ZADD', g.h, unpack(g.adds, from, math.min(from + SLICE - 1, #g.adds)))
    end
    for from = 1, #g.removes, SLICE do
      redis.call('ZREM', g.h, unpack(g.removes, from, math.min(from + SLICE - 1, #g.removes)))
    end
    if #g.lines > 0 then
      redis.call('XADD', g.j, '*', 'e', table.concat(g.lines, '\n'))
    end
  end
end

-- After the per-order items: one item per position the call read (changed or not: a
-- refusal read the counters too), its counters now ('LEVELS position# avail reserved
-- seq'), so the caller's read cache holds what this instance wrote (read-your-writes)
-- without another round trip.
local function report_levels(out, positions)
  for k, p in ipairs(positions) do
    if p.loaded then
      reply(out, 'LEVELS', k, p.a, p.r, p.v)
    end
  end
end

-- Fencing of leader-only writes (expiry releases, reconciliation repairs): each carries
-- the supervisor lease's token ('0': not a leader-only write). A group keeps the highest
-- token it has seen in field FENCE_FIELD of its orders hash (no orderNo has a space, so it
-- names no order) and refuses a lower one: a leader that was paused past its lease, while
-- another instance took over (and raised every group's fence, lua/fence.lua), cannot write.
-- A group's fence is read once per call (this call is its only writer meanwhile): an
-- expiry batch carries the same token for every order.
local FENCE_FIELD = ' fence'
local fence_seen = {}
local function fence_refuses(orders_key, token)
  local t = tonumber(token)
  if not t or t <= 0 then
    return false
  end
  local seen = fence_seen[orders_key]
  if seen == nil then
    seen = tonumber(redis.call('HGET', orders_key, FENCE_FIELD) or '0')
  end
  if t < seen then
    fence_seen[orders_key] = seen
    return true
  end
  if t > seen then
    redis.call('HSET', orders_key, FENCE_FIELD, token)
    seen = t
  end
  fence_seen[orders_key] = seen
  return false
end

-- Marks a position changed (written once by flush).
local function touch(p)
  p.dirty = true
end

-- The orders of a transition call (confirm, release) from ARGV[at]: their count, then per
-- order orderNo, traceId, `extra` fields of the operation, the number of its groups and
-- their group#s. Reads every order's records, one HMGET per group.
local function transition_orders(at, groups, extra)
  local n = tonumber(ARGV[at])
  at = at + 1
  local orders = {}
  for i = 1, n do
    local o = {no = ARGV[at], tr = ARGV[at + 1], args = {}, groups = {}}
    for e = 1, extra do
      o.args[e] = ARGV[at + 1 + e]
    end
    at = at + 2 + extra
    local ng = tonumber(ARGV[at])
    at = at + 1
    for k = 1, ng do
      local gi = tonumber(ARGV[at])
      at = at + 1
      o.groups[k] = gi
      local g = groups[gi]
      if not g.asked[o.no] then
        g.asked[o.no] = true
        g.reads[#g.reads + 1] = o.no
      end
    end
    orders[i] = o
  end
  read_records(groups)
  return orders
end

-- An order's lines across its groups, each with its position (p) and group (g), and its
-- expiry. nil: Redis has no record of it. false: a line names a position the call did not
-- bring (the caller read the order before it changed): the caller reads it again.
local function order_lines(o, groups, by_id)
  local lines, x = {}, nil
  for _, gi in ipairs(o.groups) do
    local rec = parse_record(groups[gi].records[o.no])
    if rec then
      x = rec.x
      for _, l in ipairs(rec.lines) do
        l.p = by_id[l.w .. ':' .. l.s]
        l.g = gi
        if not l.p then
          return false
        end
        lines[#lines + 1] = l
      end
    end
  end
  if #lines == 0 then
    return nil
  end
  return lines, x
end

-- Whether every position of the lines is in Redis and no journal they go to is full:
-- nil when the change may go ahead, else the reply status (and for MISSING the position
-- Redis lacks: the order is known and still held, unlike NOT_FOUND, so the caller must not
-- forget it).
local function cannot_change(lines, groups, max_journal)
  for _, l in ipairs(lines) do
    if not load_position(l.p).loaded then
      return 'MISSING', tonumber(l.w), tonumber(l.s)
    end
    if journal_full(groups[l.p.g], max_journal) then
      return 'JOURNAL_FULL'
    end
  end
  return nil
end

-- Writes an order's records back with its lines' new states (one per group) and drops
-- it from the holds: after a transition no line of it is held.
local function store_order(o, groups, lines, x)
  local per = {}
  for _, l in ipairs(lines) do
    local rec = per[l.g]
    if not rec then
      rec = {x = x, lines = {}}
      per[l.g] = rec
    end
    rec.lines[#rec.lines + 1] = l
  end
  for gi, rec in pairs(per) do
    local g = groups[gi]
    set_record(g, o.no, format_record(rec))
    g.removes[#g.removes + 1] = o.no
  end
end

-- Cluster mode (docs/redis-layout.md, "Orders across slots"). A directory shard's entry:
--   '<head> <w>:<s>:<qty> ...' or '! <until>' (a tombstone), where head is
--   '<x>'             held (committed), no confirm or release decided
--   '?<deadline>.<nonce>/<x>'  claimed: being reserved, outcome not yet settled; the
--                     claim's token '<deadline>.<nonce>' is in the records it holds
--   'C<x>' 'R<x>' 'E<x>'  confirm / release / expiry decided, not yet applied everywhere
--   'c<x>' 'r<x>' 'e<x>'  decided and applied
--   'A<x>:<kind>:<line>:<available>'  refused after a partial hold and aborted; a repeat
--                     gets the same refusal (kind I insufficient, N not found, X other)
-- Lines as the directory writes them, 'w:s:q w:s:q ...'.
local function directory_lines(text)
  local lines = {}
  for field in string.gmatch(text, '%S+') do
    local w, s, q = string.match(field, '^([^:]+):([^:]+):([^:]+)$')
    lines[#lines + 1] = {w = w, s = s, q = tonumber(q)}
  end
  return lines
end

local function parse_cluster_entry(raw)
  if not raw then
    return nil
  end
  local until_ms = string.match(raw, '^! (%d+)$')
  if until_ms then
    return {tomb = tonumber(until_ms)}
  end
  local head, rest = string.match(raw, '^(%S+) ?(.*)$')
  local e = {head = head, rest = rest, lines = {}}
  local d, nonce, x = string.match(head, '^%?(%d+)%.(%d+)/(%d+)$')
  local ax, ak, al, aa = string.match(head, '^A(%d+):(%a):(%d+):(%-?%d+)$')
  if d then
    e.deadline, e.token, e.x = tonumber(d), d .. '.' .. nonce, tonumber(x)
  elseif ax then
    e.x, e.aborted = tonumber(ax), {kind = ak, line = tonumber(al), available = tonumber(aa)}
  else
    local k, x2 = string.match(head, '^([CREcre]?)(%d+)$')
    e.decision, e.x = k, tonumber(x2)
  end
  e.lines = directory_lines(rest)
  return e
end

-- Whether `lines` (the text 'w:s:q ...' of a request) are the entry's: nil when they are,
-- else the CONFLICT line number (0: other positions).
local function differs(entry, lines)
  local asked = directory_lines(lines)
  if #asked ~= #entry.lines then
    return 0
  end
  for j, a in ipairs(asked) do
    local found = nil
    for _, l in ipairs(entry.lines) do
      if l.w == a.w and l.s == a.s then
        found = l
      end
    end
    if not found then
      return 0
    end
    if found.q ~= a.q then
      return j
    end
  end
  return nil
end

-- Redis' clock in ms: deadlines are checked against it, not against the caller's.
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The deadline (ms) in a claim token '<deadline>.<nonce>'.
local function token_deadline(token)
  return tonumber(string.match(token, '^(%d+)%.') or '0')
end

-- All or nothing: the first of `n` lines (their (position#, qty) pairs from ARGV[at]) that
-- Redis lacks ('NOT_FOUND', line#) or cannot cover ('INSUFFICIENT', line#, available); nil
-- when every line can be held.
local function first_short(at, n, positions)
  for j = 1, n do
    local b = at + 2 * (j - 1)
    local p = load_position(positions[NUM[ARGV[b]]])
    if not p.loaded then
      return 'NOT_FOUND', j, 0
    end
    if p.a < NUM[ARGV[b + 1]] then
      return 'INSUFFICIENT', j, p.a
    end
  end
  return nil, 0, 0
end
