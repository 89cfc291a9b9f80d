#!/bin/bash
# ztrace's userspace CPU per nginx request, by pipeline stage: `bench/stages.sh ZTRACE [SECS]`.
# nginx (nginx.conf.template) saturated by `wrk -t1 -c32`; ZTRACE traces it exporting OTLP to a
# null collector (lib.sh) while `perf record --call-graph dwarf` samples it for SECS seconds
# (default 5); stages.py then puts each sample in the stage of its innermost frame that names
# one. ns per request = the stage's share of ztrace's CPU per request measured without perf
# (a first run of the same load), so perf's own cost does not inflate it. Build ZTRACE with line
# tables for inlined frames (see docs/benchmarks.md); a plain dist build attributes coarser.
# Needs root, nginx, wrk, perf, python3. With KEEP=DIR, perf.data and its script output
# (perf.txt) are copied to DIR for a closer look (`perf report -i DIR/perf.data`, `perf annotate`).
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,10p "$0"; exit 2; }
BIN=$1; SECS=${2:-5}
. "$(dirname "$0")/lib.sh"
load() { wrk -t1 -c32 -d"$1s" "http://127.0.0.1:$NGX_PORT/" | awk '/requests in/ {print $1}'; }
start_ztrace "$BIN" "$MASTER"
z=$Z
c0=$(cpu_ticks "$z"); req=$(load "$SECS"); c1=$(cpu_ticks "$z")
us=$(awk -v a="$c0" -v b="$c1" -v r="$req" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / r}')
echo "without perf: $req requests in ${SECS}s, ztrace ${us} µs of CPU per request"
load $((SECS + 2)) > /dev/null &
w=$!
sleep 1
perf record -q -F 2999 --call-graph dwarf,16384 -p "$z" -o "$DIR/perf.data" -- sleep "$SECS" 2>/dev/null
wait "$w"
kill -INT "$z"; wait "$z" || true
perf script -i "$DIR/perf.data" -F comm,ip,sym 2>/dev/null > "$DIR/perf.txt"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$DIR/perf.data" "$DIR/perf.txt" "$KEEP/"; fi
python3 "$(dirname "$0")/stages.py" "$DIR/perf.txt" "$us"
