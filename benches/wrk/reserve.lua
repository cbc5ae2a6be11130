-- wrk script for scripts/bench-http.sh: POST /inventory/reserve, every request a new order.
-- The orderNo is unique per run, per wrk thread and per request: W<RUN>-<thread>-<n>.
--
-- Environment:
--   TOKEN      service (or admin) bearer token                       (required)
--   SKU        skuId of every order                                  (required)
--   RUN        run id, part of every orderNo                         (default: os.time())
--   QTY        units per order                                       (default 1)
--   WAREHOUSE  warehouseId                                           (default 1)
--   LOG_DIR    when set, each thread writes "<orderNo> <status>" of every response to
--              LOG_DIR/responses-<thread>.txt, so that the 200s can be matched with the
--              RESERVED rows afterwards (requests still in flight when wrk stops are never
--              answered: wrk abandons them, the service may still hold them)
--   REPORT     when set, done() appends its key=value line there (else to stdout)
--
-- done() prints one line "RESULT key=value ..." with wrk's totals and latency percentiles
-- (ms) and the outcomes counted by response(): held (200), repeat (200 with existed),
-- refused (409 INSUFFICIENT_STOCK), conflict (other 409), overloaded (503), other; sent
-- (requests built) and answered (responses seen).

dofile("benches/wrk/result.lua")

function init(args)
  run = os.getenv("RUN") or tostring(os.time())
  sku = os.getenv("SKU") or error("SKU is not set")
  qty = os.getenv("QTY") or "1"
  warehouse = os.getenv("WAREHOUSE") or "1"
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or error("TOKEN is not set")),
  }
  n, sent, answered = 0, 0, 0
  held, repeats, refused, conflict, overloaded, other = 0, 0, 0, 0, 0, 0
  local dir = os.getenv("LOG_DIR")
  if dir and dir ~= "" then
    -- Buffered; stdio flushes it when wrk exits.
    log = assert(io.open(string.format("%s/responses-%d.txt", dir, tid), "w"))
  end
end

function request()
  n = n + 1
  sent = sent + 1
  local body = string.format('{"orderNo":"W%s-%d-%d","skuId":%s,"warehouseId":%s,"qty":%s}',
    run, tid, n, sku, warehouse, qty)
  return wrk.format("POST", "/inventory/reserve", headers, body)
end

function response(status, hdrs, body)
  answered = answered + 1
  body = body or ""
  if status == 200 then
    if string.find(body, '"existed":true', 1, true) then
      repeats = repeats + 1
    else
      held = held + 1
    end
  elseif status == 409 then
    if string.find(body, "INSUFFICIENT_STOCK", 1, true) then
      refused = refused + 1
    else
      conflict = conflict + 1
    end
  elseif status == 503 then
    overloaded = overloaded + 1
  else
    other = other + 1
  end
  if log then
    log:write(string.match(body, '"orderNo":"([^"]*)"') or "?", " ", status, "\n")
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, name in ipairs({"sent", "answered", "held", "repeats", "refused", "conflict",
                         "overloaded", "other"}) do
    counts[#counts + 1] = name .. "=" .. thread_sum(name)
  end
  report_result(summary, latency, table.concat(counts, " "))
end
