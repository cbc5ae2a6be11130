-- Shared by the wrk scripts of scripts/bench-http.sh and scripts/bench-reads.sh (loaded
-- with dofile from the repository root).

-- Numbers each wrk thread (`tid`, from 1) and keeps them, so that done() can add up what
-- the threads counted (thread_sum).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- The sum of a global counter over every thread.
function thread_sum(name)
  local sum = 0
  for _, t in ipairs(threads) do
    sum = sum + (t:get(name) or 0)
  end
  return sum
end

-- Prints (or appends to $REPORT) one line "RESULT key=value ..." with wrk's totals and
-- latency percentiles in ms, plus `extra` (already "k=v ..." text).
function report_result(summary, latency, extra)
  local e = summary.errors
  local line = string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f " ..
    "p999_ms=%.3f max_ms=%.3f mean_ms=%.3f err_connect=%d err_read=%d err_write=%d " ..
    "err_status=%d err_timeout=%d%s",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    latency.mean / 1000, e.connect, e.read, e.write, e.status, e.timeout,
    extra and (" " .. extra) or "")
  local report = os.getenv("REPORT")
  if report and report ~= "" then
    local f = assert(io.open(report, "a"))
    f:write(line, "\n")
    f:close()
  else
    print(line)
  end
end
