-- wrk script: every request places a new order under a fresh Idempotency-Key.
-- Reads the API key from TALLY_KEY and the SKU from TALLY_SKU.
local threads_started = 0

function setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end

function init(args)
  prefix = string.format("bench-%d-%d-", os.time(), thread_index)
  counter = 0
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TALLY_KEY")
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = string.format([[{"channel":"web","customer":{"id":"bench-customer","email":"bench@example.com"},"lines":[{"sku":"%s","quantity":2}],"currency":"USD","shipping_address":{"name":"Ada Lovelace","line1":"12 St James Sq","city":"London","postal_code":"SW1Y 4JH","country":"GB"}}]], os.getenv("TALLY_SKU"))
end

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  return wrk.format(nil, "/v1/orders")
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors_status=%d duration_s=%.2f rps=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    summary.requests, summary.errors.status, summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
