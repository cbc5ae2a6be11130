-- wrk script for scripts/bench-reads.sh: GET /inventory/{skuId}?warehouseId=1 of a random
-- SKU in [SKU_FROM, SKU_TO] per request (pages polling many products: cache misses).
-- SOURCE=db adds &source=db (the DB's view, the path every read took before).
-- Non-200 answers are counted (wrk counts them as err_status too).
dofile("benches/wrk/result.lua")

function init(args)
  from = tonumber(os.getenv("SKU_FROM") or error("SKU_FROM is not set"))
  to = tonumber(os.getenv("SKU_TO") or error("SKU_TO is not set"))
  suffix = (os.getenv("SOURCE") == "db") and "&source=db" or ""
  math.randomseed(os.time() * 100 + tid)
  bad = 0
end

function request()
  return wrk.format("GET", "/inventory/" .. math.random(from, to) .. "?warehouseId=1" .. suffix)
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  report_result(summary, latency, "not_200=" .. thread_sum("bad"))
end
