-- GET /v1/programs/kr-shop/me for wrk, cycling through member tokens (one per line in the file
-- named by WRK_TOKENS). With WRK_DELAY_MS set, each connection waits that long after every answer,
-- so C connections give about C * 1000 / (WRK_DELAY_MS + latency) requests a second: a paced
-- load, not wrk2's fixed rate (a slow answer delays the next request: coordinated omission).
local tokens = {}
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
local i = 0

function init(args)
  for line in io.lines(os.getenv("WRK_TOKENS")) do
    tokens[#tokens + 1] = line
  end
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", "/v1/programs/kr-shop/me", { ["Authorization"] = "Bearer " .. tokens[i] })
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d seconds=%.2f errors_status=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
