-- Expire the due holds of one group (single Redis, no order-status hook): takes the due
-- orders from the group's holds index and releases them in the same call, so an expiry
-- step costs one call per group and no per-order arguments (the general path,
-- lua/release.lua through the shards, reads the directory first and sends every order's
-- lines). An order is released here only when all its lines are in this group (its
-- directory entry has as many lines as its record here) and all are still held and due;
-- anything else (a multi-group order, a position Redis lacks, an odd record) is passed
-- over: left in the index and named in the reply, and the caller hands it to the general
-- path before this group's next call. Orders that are no longer held (confirmed or
-- released meanwhile, or forgotten) leave the index. lua/lib.lua is prepended.
--
-- KEYS: the group's orders, holds, journal; the directory.
-- ARGV[1] now (ms), ARGV[2] max entries of the journal stream, ARGV[3] most due orders to
-- read, ARGV[4] due orders to skip first (passed over earlier in this run and still held:
-- the general path could not settle them either), ARGV[5] the fencing token of the leader's run ('0': none; lib.lua,
-- fence_refuses), ARGV[6] traceId, ARGV[7] the group's stock key prefix
-- ('<p>inv:{gN}:s:'; a position's hash is that followed by 'w:s', in the group's slot).
--
-- Reply: one item 'EXPIRED released passed_over read forgotten' (read: due orders read, as
-- many as ARGV[3] means more may be due; forgotten: orders that left the index unreleased,
-- as nothing of them was held any more), or 'FENCED' or 'JOURNAL_FULL' (nothing changed;
-- only when something is due); then one 'PASSED:<orderNo>' item per order passed over,
-- then one 'LEVELS:<w>:<s> 0 avail reserved seq' item per position released into.
local now = tonumber(ARGV[1])
local max_journal = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local offset = tonumber(ARGV[4])
local fence = ARGV[5]
local trace = ARGV[6]
local stock_prefix = ARGV[7]
local groups = call_groups(0, 1)
local g = groups[1]
local out = {}

if fence_refuses(g.o, fence) then
  reply(out, 'FENCED')
  return out
end
local due = redis.call('ZRANGEBYSCORE', g.h, '-inf', now, 'LIMIT', offset, limit)
if #due == 0 then
  reply(out, 'EXPIRED', 0, 0, 0, 0)
  return out
end
-- Only a group with something due is refused: the others go on while this one drains.
if journal_full(g, max_journal) then
  reply(out, 'JOURNAL_FULL')
  return out
end
local records = redis.call('HMGET', g.o, unpack(due))
local entries = redis.call('HMGET', KEYS[4], unpack(due))

local positions, by_key = {}, {}
local function position(w, s)
  local key = stock_prefix .. w .. ':' .. s
  local p = by_key[key]
  if not p then
    p = load_position({g = 1, w = w, s = s, key = key})
    by_key[key] = p
    if p.loaded then
      positions[#positions + 1] = p
    end
  end
  return p
end

local now_text = ARGV[1]
local released, forgotten = 0, 0
local passed = {}
local function pass(order_no)
  passed[#passed + 1] = order_no
end

-- Releases a held line of position p (q units, qs as text, x_text the order's expiry as
-- the record writes it). Counters and stock levels are written as plain '..' numbers, as
-- lib.lua's hold_units does: far below 1e14, so never in exponent form.
local function release_line(p, q, qs, x_text, order_no)
  p.a = p.a + q
  p.r = p.r - q
  p.v = p.v + 1
  p.dirty = true
  g.lines[#g.lines + 1] = 'REL ' .. p.w .. ' ' .. p.s .. ' ' .. qs .. ' -' .. qs .. ' ' .. p.a .. ' ' ..
    p.r .. ' ' .. p.v .. ' ' .. qs .. ' ' .. x_text .. ' ' .. now_text .. ' EXPIRED ' .. order_no .. ' ' ..
    trace .. ' hold expired'
end

for i, order_no in ipairs(due) do
  local raw = records[i]
  -- The common record: one line, held. Its directory entry is the same text without the
  -- state when the order has no line in another group.
  local x_text, w, s, qs
  if raw then
    x_text, w, s, qs = string.match(raw, '^(%d+) ([^: ]+):([^: ]+):(%d+):RESERVED$')
  end
  local p = x_text and tonumber(x_text) <= now and entries[i] == string.sub(raw, 1, -10) and position(w, s)
  if x_text then
    if not (p and p.loaded) then
      pass(order_no)
    else
      release_line(p, tonumber(qs), qs, x_text, order_no)
      set_record(g, order_no, (string.gsub(raw, ':RESERVED$', ':RELEASED')))
      g.removes[#g.removes + 1] = order_no
      released = released + 1
    end
  else
    local rec = parse_record(raw)
    local entry = parse_directory(entries[i])
    if not rec then
      -- No record in this group: nothing of it is held here (the general path would find
      -- it NOT_FOUND and forget it too).
      g.removes[#g.removes + 1] = order_no
      forgotten = forgotten + 1
    else
      local held, settled = 0, false
      for _, l in ipairs(rec.lines) do
        if l.st == 'RESERVED' then
          held = held + 1
        else
          settled = true
        end
      end
      if held == 0 then
        g.removes[#g.removes + 1] = order_no
        forgotten = forgotten + 1
      elseif settled or rec.token or rec.x > now or not entry or entry.tomb or #entry.lines ~= #rec.lines then
        -- Partly settled, claimed, not due by its record, or with lines in other groups:
        -- the general path decides.
        pass(order_no)
      else
        local ok = true
        for _, l in ipairs(rec.lines) do
          l.p = position(l.w, l.s)
          ok = ok and l.p.loaded
        end
        if not ok then
          pass(order_no)
        else
          local x_rec = int(rec.x)
          for _, l in ipairs(rec.lines) do
            release_line(l.p, l.q, int(l.q), x_rec, order_no)
            l.st = 'RELEASED'
          end
          set_record(g, order_no, format_record(rec))
          g.removes[#g.removes + 1] = order_no
          released = released + 1
        end
      end
    end
  end
end
flush(groups, positions)
reply(out, 'EXPIRED', released, #passed, #due, forgotten)
for _, order_no in ipairs(passed) do
  reply(out, 'PASSED:' .. order_no)
end
for _, p in ipairs(positions) do
  if p.dirty then
    reply(out, 'LEVELS:' .. p.w .. ':' .. p.s, 0, p.a, p.r, p.v)
  end
end
return out
