-- Leadership among service instances: take or keep the lease.
-- A new holder gets a fencing token higher than any before it, so work stamped with an
-- older token can be told apart: the counter's next value, or Redis' clock in ms if that is
-- higher, so that tokens keep growing even after Redis lost the counter with its data.
-- lua/lib.lua is prepended.
--
-- KEYS[1] lease key, KEYS[2] fencing counter
-- ARGV[1] this instance's id, ARGV[2] lease ttl (ms), ARGV[3] 'release' to give it up
-- Reply: one item, LEADER token | FOLLOWER
local out = {}
local current = redis.call('GET', KEYS[1])
if current then
  local owner, token = string.match(current, '^(.*)|(%d+)$')
  if owner == ARGV[1] then
    if ARGV[3] == 'release' then
      redis.call('DEL', KEYS[1])
      reply(out, 'FOLLOWER')
      return out
    end
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    reply(out, 'LEADER', tonumber(token))
    return out
  end
  reply(out, 'FOLLOWER')
  return out
end
if ARGV[3] == 'release' then
  reply(out, 'FOLLOWER')
  return out
end
local token = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if clock_ms > token then
  token = clock_ms
  redis.call('SET', KEYS[2], string.format('%d', token))
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', token), 'PX', tonumber(ARGV[2]))
reply(out, 'LEADER', token)
return out
