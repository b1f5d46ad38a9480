-- wrk script: POST the captured Alertmanager 0.25 payload (critical beside info) to the webhook.
local f = assert(io.open(os.getenv("PAYLOAD"), "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
