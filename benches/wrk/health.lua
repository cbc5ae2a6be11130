-- wrk script for plain GETs of the URL given to wrk (/health, GET /inventory/{skuId}) in
-- scripts/bench-http.sh and scripts/bench-reads.sh: wrk builds no request in Lua and parses
-- no body. Prints (or appends to $REPORT) "RESULT key=value ..." like reserve.lua.
-- RATE (requests/s over all connections, optional) paces the connections with delay(), for
-- a steady load beside another run instead of as much as the machine gives.
dofile("benches/wrk/result.lua")

local rate = tonumber(os.getenv("RATE") or "")
local connections = tonumber(os.getenv("CONNECTIONS_PER_RUN") or "")
if rate and connections and rate > 0 then
  local pause_ms = math.floor(1000 * connections / rate)
  function delay()
    return pause_ms
  end
end

function done(summary, latency, requests)
  report_result(summary, latency)
end
