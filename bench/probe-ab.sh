#!/bin/bash
# Probe cost per request, side by side: `bench/probe-ab.sh ROUNDS SECS ZTRACE_A ZTRACE_B...`
# Each ZTRACE is a binary, or a quoted binary with extra flags (`"ztrace --socket-probes raw"`).
# nginx (bench/nginx.conf.template: one worker, 2-byte body) saturated by `wrk -t1 -c32` for
# SECS seconds per run; each binary traces it with `--probe-stats` (the kernel's BPF run-time
# statistics) exporting OTLP to a null collector. The binaries take turns, the order reversed
# every other round. One line per run: requests, ns per run of each socket-layer probe, runs
# per request, ztrace's own CPU per request (its utime + stime from /proc while wrk ran) and
# peak RSS, kernel events lost, load average. Every run of a probe is counted, also those in
# processes ztrace does not trace (wrk's own socket calls: one early-exit run per request and
# direction). `ZTRACE_TARGET=idle` traces an idle process instead of nginx (the filter's cost).
# Needs root, nginx, wrk, python3. Everything started here is stopped on exit.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,12p "$0"; exit 2; }
ROUNDS=$1; SECS=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGX_PORT=$(port); SINK_PORT=$(port)
sed -e "s#{{DIR}}#$DIR#g" -e "s#{{PORT}}#$NGX_PORT#g" "$HERE/nginx.conf.template" > "$DIR/nginx.conf"
nginx -c "$DIR/nginx.conf" -p "$DIR" -e "$DIR/error.log" & PIDS+=($!)
python3 -c '
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$SINK_PORT" & PIDS+=($!)
sleep 1
MASTER=$(cat "$DIR/nginx.pid")
sleep 1000 & IDLE=$!; PIDS+=($IDLE)
TARGET=$MASTER; [ "${ZTRACE_TARGET:-}" = idle ] && TARGET=$IDLE
# utime + stime of process $1, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local bin=$1 log=$DIR/ztrace.log cmd
  read -ra cmd <<< "$bin"
  "${cmd[@]}" --pid "$TARGET" --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol http/protobuf \
    --metric-export-interval 1s --probe-stats 2>"$log" &
  local z=$!
  for _ in $(seq 100); do grep -q "tracing " "$log" && break; sleep 0.1; done
  local req cpu0 cpu1 hwm
  cpu0=$(cpu_ticks "$z")
  req=$(wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:$NGX_PORT/" | awk '/requests in/ {print $1}')
  cpu1=$(cpu_ticks "$z")
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$z/status")
  sleep 0.3; kill -INT "$z"; wait "$z" || true
  local probes lost
  probes=$(sed -n 's/.*probe cost: \(sock_[a-z_]*\) ran \([0-9]*\) times, \([0-9]*\) ns per run.*/\1 \2 \3/p' "$log" |
    awk -v r="$req" '{printf "%s %s ns (%.2f/req) ", $1, $3, $2/r}')
  lost=$(grep -o '([0-9]* lost' "$log" | tr -dc 0-9)
  local us
  us=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$req" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / r}')
  echo "bin=\"$bin\" requests=$req ${probes}ztrace=${us}us/req hwm=${hwm}MiB lost=${lost:-?} load=$(cut -d' ' -f1 /proc/loadavg)"
}
for r in $(seq "$ROUNDS"); do
  bins=("$@"); [ $((r % 2)) = 0 ] && mapfile -t bins < <(printf '%s\n' "$@" | tac)
  for b in "${bins[@]}"; do echo -n "round=$r "; run "$b"; done
done
