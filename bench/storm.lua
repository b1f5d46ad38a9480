-- wrk script: an alert storm. Each request carries one firing critical alert for the app of
-- guard (n mod GUARDS), version v2, starting now; each connection paces itself so that
-- CONNECTIONS connections send about RATE requests per second in all.
local guards = tonumber(os.getenv("GUARDS") or "1000")
local rate = tonumber(os.getenv("RATE") or "10000")
local connections = tonumber(os.getenv("CONNECTIONS") or "50")
-- ms between one connection's requests; the response time (about 1-2 ms) fills the rest
local pause = connections * 1000 / rate * 0.8
local n = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  n = n + 1
  local app = "app-" .. (n % guards)
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local body = '{"receiver":"watchdog","status":"firing","version":"4","groupKey":"storm",'
    .. '"truncatedAlerts":0,"groupLabels":{},"commonLabels":{},"commonAnnotations":{},'
    .. '"externalURL":"http://alertmanager:9093","alerts":[{"status":"firing","labels":'
    .. '{"alertname":"GreenErrorRateHigh","severity":"critical","version":"v2","app":"' .. app
    .. '"},"annotations":{},"startsAt":"' .. now .. '","endsAt":"0001-01-01T00:00:00Z",'
    .. '"generatorURL":"","fingerprint":"' .. app .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end

function delay()
  return pause
end
