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
. "$(dirname "$0")/lib.sh"
TARGET=$MASTER; [ "${ZTRACE_TARGET:-}" = idle ] && TARGET=$IDLE
run() {
  local bin=$1 log=$DIR/ztrace.log
  start_ztrace "$bin" "$TARGET" --probe-stats
  local z=$Z
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
each_round "$ROUNDS" run "$@"
