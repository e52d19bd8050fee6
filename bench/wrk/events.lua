-- POST purchase events to /v1/programs/kr-shop/events for wrk, as fast as they are answered for
-- wrk's duration: every request a new event (id WRK_RUN-<thread>-<n>, member
-- m-(n * WRK_THREADS + thread) % WRK_MEMBERS, WRK_AMOUNT won). The admin token is in WRK_TOKEN.
-- wrk counts the answered requests; a few sent as it stops may be accepted too. WRK_DELAY_MS
-- paces the connections instead of posting as fast as they are answered.
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

local token = os.getenv("WRK_TOKEN")
local run = os.getenv("WRK_RUN") or "wrk"
local members = tonumber(os.getenv("WRK_MEMBERS") or "1000")
local amount = os.getenv("WRK_AMOUNT") or "20000"
local total_threads = tonumber(os.getenv("WRK_THREADS") or "1")
local occurred = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - 60)
local sent = 0
local headers
-- WRK_DELAY_MS > 0 paces each connection: it waits that long before each request.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function init(args)
  headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
end

function request()
  local n = sent
  sent = sent + 1
  local id = string.format("%s-%d-%d", run, tid, n)
  local member = string.format("m-%d", (n * total_threads + tid) % members)
  local body = string.format(
    '{"type":"purchase.completed","version":1,"id":"%s","program":"kr-shop","member":"%s","occurred_at":"%s",'
      .. '"data":{"order_id":"%s","currency":"KRW","channel":"online","lines":[{"line_id":"1","sku":"TEE-01",'
      .. '"category":"apparel","quantity":1,"unit_price":"%s"}]}}',
    id, member, occurred, id, amount)
  return wrk.format("POST", "/v1/programs/kr-shop/events", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d seconds=%.3f errors_status=%d p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
