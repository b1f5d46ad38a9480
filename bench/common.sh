# Shared by bench/*.sh: build, free ports, process measurements, cleanup.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin cutover-watchdog --example bench_sandbox >&2
BIN=target/release/cutover-watchdog
SANDBOX=target/release/examples/bench_sandbox
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
CLK_TCK=$(getconf CLK_TCK)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# CPU percent of one core used by PID over SECONDS, measured now.
cpu_percent_over() {
  local pid=$1 seconds=$2 t0 t1
  t0=$(cpu_ticks "$pid"); sleep "$seconds"; t1=$(cpu_ticks "$pid")
  awk -v a="$t0" -v b="$t1" -v s="$seconds" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", (b - a) / hz / s * 100}'
}
wait_http() { # URL, up to 30 s
  for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}
# Starts the API double with N guards and the watchdog binary against it; sets WATCHDOG_PID,
# MAIN, ADMIN. $1 = guards, $2 = Prometheus URL.
start_watchdog() {
  MAIN=$(port); ADMIN=$(port)
  "$SANDBOX" sandbox "$WORK" "$1" "$2" "$MAIN" "$ADMIN" > "$WORK/sandbox.log" &
  for _ in $(seq 300); do [ -s "$WORK/api-url" ] && break; sleep 0.1; done
  KUBECONFIG="$WORK/kubeconfig" RUST_LOG=warn "$BIN" serve --config "$WORK/config.yaml" 2> "$WORK/watchdog.log" &
  WATCHDOG_PID=$!
  wait_http "http://127.0.0.1:$ADMIN/readyz"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
