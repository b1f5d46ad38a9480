#!/usr/bin/env bash
# Scale: N guards with 2 checks each, every window open, polling every 1 s against the real
# Prometheus. Reports, per N: poll rounds (one per interval, all guards) that finished inside the
# interval, Prometheus requests per round (checks are batched), CPU and RSS of the watchdog. Usage: bench/scale.sh [SECONDS] [N ...]   (default: 60 10 100 500)
source "$(dirname "$0")/common.sh"
DURATION=${1:-60}
shift || true
SIZES=("${@:-10 100 500}")
read -r -a SIZES <<< "${SIZES[*]}"
command -v prometheus >/dev/null || { echo "prometheus not found; install it with apt-get install -y prometheus" >&2; exit 1; }

PROM=$(port)
mkdir -p "$WORK/prom"
cat > "$WORK/prom/prometheus.yml" <<YAML
global: {scrape_interval: 1s}
scrape_configs:
- job_name: prometheus
  static_configs: [{targets: ['127.0.0.1:$PROM']}]
YAML
prometheus --config.file="$WORK/prom/prometheus.yml" --storage.tsdb.path="$WORK/prom/data" \
  --web.listen-address="127.0.0.1:$PROM" --log.level=warn 2> "$WORK/prom/log" &
wait_http "http://127.0.0.1:$PROM/-/ready"

metric() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v s="$1" 'index($0, s " ") == 1 {print $2}'; }
for n in "${SIZES[@]}"; do
  rm -f "$WORK/api-url"
  start_watchdog "$n" "http://127.0.0.1:$PROM"
  SANDBOX_PID=$(jobs -p | tail -2 | head -1)
  touch "$WORK/cutover"
  # Wait until every window is open, then measure a steady state.
  for _ in $(seq 600); do
    open=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^cutover_watchdog_window_active/ {s += $2} END {print s + 0}')
    [ "$open" -ge "$n" ] && break; sleep 0.1
  done
  sleep 3
  rounds0=$(metric cutover_watchdog_poll_duration_seconds_count)
  inside0=$(metric 'cutover_watchdog_poll_duration_seconds_bucket{le="1"}')
  queries0=$(metric cutover_watchdog_prometheus_query_duration_seconds_count)
  errors0=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^cutover_watchdog_prometheus_query_errors_total/ {s += $2} END {print s + 0}')
  cpu=$(cpu_percent_over "$WATCHDOG_PID" "$DURATION")
  rounds=$(( $(metric cutover_watchdog_poll_duration_seconds_count) - rounds0 ))
  inside=$(( $(metric 'cutover_watchdog_poll_duration_seconds_bucket{le="1"}') - inside0 ))
  queries=$(( $(metric cutover_watchdog_prometheus_query_duration_seconds_count) - queries0 ))
  errors=$(( $(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^cutover_watchdog_prometheus_query_errors_total/ {s += $2} END {print s + 0}') - errors0 ))
  echo "guards $n ($((2 * n)) checks): $rounds poll rounds in ${DURATION}s (expected $DURATION), $inside inside 1 s; $((queries / (rounds > 0 ? rounds : 1))) Prometheus requests per round; failed requests $errors; watchdog cpu $cpu% of a core, rss $(mib "$(rss_kib "$WATCHDOG_PID")") MiB"
  kill "$WATCHDOG_PID" "$SANDBOX_PID" 2>/dev/null || true
  wait "$WATCHDOG_PID" 2>/dev/null || true
done
