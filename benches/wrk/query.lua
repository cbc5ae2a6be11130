-- wrk script for scripts/bench-reads.sh: POST /inventory/query with QUERY_SIZE random
-- positions in [SKU_FROM, SKU_TO] (a cart page). Counts answers that are not 200 or whose
-- notFound list is not empty (every SKU in the range is stocked). The bodies are built once,
-- 1000 per thread, and cycled: the load generator shares the machine with the service, and
-- building a 20-position body in Lua per request took CPU the service then lacked.
dofile("benches/wrk/result.lua")

function init(args)
  from = tonumber(os.getenv("SKU_FROM") or error("SKU_FROM is not set"))
  to = tonumber(os.getenv("SKU_TO") or error("SKU_TO is not set"))
  size = tonumber(os.getenv("QUERY_SIZE") or "20")
  headers = {["Content-Type"] = "application/json"}
  math.randomseed(os.time() * 100 + tid)
  bad = 0
  requests = {}
  for r = 1, 1000 do
    local parts = {}
    for i = 1, size do
      parts[i] = '{"skuId":' .. math.random(from, to) .. ',"warehouseId":1}'
    end
    requests[r] = wrk.format("POST", "/inventory/query", headers,
      '{"positions":[' .. table.concat(parts, ",") .. ']}')
  end
  next_request = 0
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body or "", '"notFound":[]', 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  report_result(summary, latency, "bad=" .. thread_sum("bad"))
end
