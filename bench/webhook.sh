#!/usr/bin/env bash
# Webhook intake, side by side with a bare axum handler that only parses the same JSON (the
# ceiling for this stack), plus the watchdog's RSS and CPU idle with 10 guards and under load.
# Needs wrk (apt-get install -y wrk). Usage: bench/webhook.sh [ROUNDS] [SECONDS]
source "$(dirname "$0")/common.sh"
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
command -v wrk >/dev/null || { echo "wrk not found; install it with apt-get install -y wrk" >&2; exit 1; }
export PAYLOAD="$PWD/tests/fixtures/alertmanager/firing-critical-and-info.json"

start_watchdog 10 http://127.0.0.1:9
BARE=$(port)
"$SANDBOX" bare "$BARE" &
wait_http "http://127.0.0.1:$ADMIN/healthz"
sleep 2 # let start-up settle before measuring idle

echo "idle (10 guards, 30 s): cpu $(cpu_percent_over "$WATCHDOG_PID" 30)% of a core, rss $(mib "$(rss_kib "$WATCHDOG_PID")") MiB"

run() { # URL -> "rps p50_ms p99_ms"
  wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" --latency -s bench/webhook.lua "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^Requests\/sec/ {rps = $2} /^ +50%/ {p50 = ms($2)} /^ +99%/ {p99 = ms($2)}
    / Non-2xx/ {bad = $NF}
    END {print rps, p50, p99, bad + 0}'
}
: > "$WORK/bare"; : > "$WORK/watchdog"
for round in $(seq "$ROUNDS"); do
  run "http://127.0.0.1:$BARE/webhook/alertmanager" >> "$WORK/bare"
  t0=$(cpu_ticks "$WATCHDOG_PID")
  run "http://127.0.0.1:$MAIN/webhook/alertmanager" >> "$WORK/watchdog"
  t1=$(cpu_ticks "$WATCHDOG_PID")
  awk -v a="$t0" -v b="$t1" -v s="$SECONDS_PER_RUN" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f\n", (b - a) / hz / s * 100}' >> "$WORK/cpu"
  echo "round $round: bare $(tail -1 "$WORK/bare") | watchdog $(tail -1 "$WORK/watchdog") (rps p50_ms p99_ms non2xx)" >&2
done
col() { awk -v c="$1" '{print $c}' "$2" | median; }
bare_rps=$(col 1 "$WORK/bare"); wd_rps=$(col 1 "$WORK/watchdog")
echo "bare handler:  median $bare_rps req/s, p50 $(col 2 "$WORK/bare") ms, p99 $(col 3 "$WORK/bare") ms"
echo "watchdog:      median $wd_rps req/s, p50 $(col 2 "$WORK/watchdog") ms, p99 $(col 3 "$WORK/watchdog") ms, non-2xx $(col 4 "$WORK/watchdog")"
echo "ratio:         $(awk -v a="$wd_rps" -v b="$bare_rps" 'BEGIN {printf "%.0f%%", a / b * 100}') of the bare handler's throughput (target >= 80%)"
echo "under load:    cpu median $(median < "$WORK/cpu")% of a core, peak rss $(mib "$(hwm_kib "$WATCHDOG_PID")") MiB"
