-- perf/pixel.lua: one fixed, realistic impression-pixel request for wrk.
--
-- Every server under test gets byte-for-byte the same request: a fixed query
-- (no per-request randomness), a fixed Host header (so the port does not leak
-- into the bytes) and a fixed header order (a Lua table's order is not
-- guaranteed, so the raw request is built here as one string).
--
-- No global `request` function is defined on purpose: wrk then treats the
-- script as static, formats the request once per connection and never calls
-- into Lua per request, which keeps wrk's own core as cheap as possible.
--
-- At the end `done` prints one machine-readable line (WRK_RESULT ...) that
-- perf/vs-nginx.sh parses; the usual human report is printed above it.

-- PIXEL_PATH overrides the request target (e.g. a `logged` endpoint in perf/ack-cost.sh).
local path = os.getenv("PIXEL_PATH") or "/i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8f3a2c91d4e7b605"

local headers = {
  { "Host", "t.adserver.example" },
  { "Connection", "keep-alive" },
  { "User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36" },
  { "Accept", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8" },
  { "Sec-Fetch-Site", "cross-site" },
  { "Sec-Fetch-Mode", "no-cors" },
  { "Sec-Fetch-Dest", "image" },
  { "Referer", "https://news.example.com/world/article-1234567" },
  { "Accept-Encoding", "gzip, deflate, br" },
  { "Accept-Language", "en-US,en;q=0.9" },
  { "Cookie", "uid=6f1c2e7a93b44d0e8a552c7d9e01b3fa" },
}

local lines = { "GET " .. path .. " HTTP/1.1" }
for _, h in ipairs(headers) do
  lines[#lines + 1] = h[1] .. ": " .. h[2]
end
local raw = table.concat(lines, "\r\n") .. "\r\n\r\n"

-- wrk.init() builds the per-connection request by calling wrk.format() with
-- no arguments; answer that call with the fixed bytes. Calls with arguments
-- (none in this script) still get wrk's own formatter.
wrk.method = "GET"
wrk.path = path
wrk.headers["Host"] = "t.adserver.example" -- keeps wrk.init from adding host:port
local wrk_format = wrk.format
wrk.format = function(method, p, h, body)
  if method == nil and p == nil and h == nil and body == nil then
    return raw
  end
  return wrk_format(method, p, h, body)
end

-- To see the exact bytes sent: `wrk -s perf/pixel.lua URL -- dump` (printed to stderr).
function init(args)
  if args[1] == "dump" then
    io.stderr:write(raw)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d req_bytes=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status, #raw))
end
