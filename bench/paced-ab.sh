#!/bin/bash
# Paced latency, side by side: `bench/paced-ab.sh ROUNDS SECS COND...`
# The load of `cargo xtask bench`'s paced rows: `wrk -t1 -c4 -s bench/paced.lua` (each
# connection pauses 1 ms after every response) against nginx (bench/nginx.conf.template, one
# worker, 2-byte body), SECS seconds per run. A COND is one of:
#   none               no ztrace at all
#   "BIN [flags]"      ztrace traces nginx, exporting OTLP to a null collector
#   idle:BIN           ztrace traces an idle process (its probes only filter nginx's calls out)
#   stopped:BIN        ztrace traces nginx and is then stopped (SIGSTOP) while wrk runs: the
#                      probes run as traced, the daemon does nothing (its ring fills; with SECS
#                      up to ~8 nothing is lost at this rate)
# The conditions take turns, the order reversed every other round. One line per run: requests,
# wrk's latency p50/p90/p99. CONNS=N changes wrk's connections (default 4); PIN="C1 C2" pins
# nginx's worker to CPU C1 and wrk to CPU C2; SCHED=1 adds the scheduler's counts for the run
# (`perf stat -a`: context switches, migrations, wake-ups).
# Needs root, nginx, wrk, python3 (and perf for SCHED=1). Everything started here is stopped on exit.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,17p "$0"; exit 2; }
ROUNDS=$1; SECS=$2; shift 2
. "$(dirname "$0")/lib.sh"
WRK=(wrk)
if [ -n "${PIN:-}" ]; then
  read -r NGX_CPU WRK_CPU <<< "$PIN"
  for p in $(pgrep -P "$MASTER"); do taskset -pc "$NGX_CPU" "$p" >/dev/null; done
  WRK=(taskset -c "$WRK_CPU" wrk)
fi
PERF=()
[ -n "${SCHED:-}" ] && PERF=(perf stat -a -x, -o "$DIR/sched.txt" -e context-switches,cpu-migrations,sched:sched_wakeup --)
run() {
  local cond=$1 z="" target=$MASTER bin=$1 stop=0
  case $cond in
    idle:*) target=$IDLE; bin=${cond#idle:} ;;
    stopped:*) stop=1; bin=${cond#stopped:} ;;
  esac
  if [ "$cond" != none ]; then
    start_ztrace "$bin" "$target"
    z=$Z
    [ $stop = 1 ] && { sleep 0.5; kill -STOP "$z"; }
  fi
  local out
  out=$("${PERF[@]}" "${WRK[@]}" -t1 -c"${CONNS:-4}" -d"${SECS}s" --latency -s "$HERE/paced.lua" \
    "http://127.0.0.1:$NGX_PORT/")
  if [ -n "$z" ]; then kill -CONT "$z"; kill -INT "$z"; wait "$z" || true; fi
  local sched=""
  [ -n "${SCHED:-}" ] && sched=$(grep -v '^#' "$DIR/sched.txt" | awk -F, 'NF > 2 {printf "%s=%s ", $3, $1}')
  echo "$out" | awk -v c="$cond" -v s="$sched" \
    '/requests in/ {r = $1} /^ +50%/ {p50 = $2} /^ +90%/ {p90 = $2} /^ +99%/ {p99 = $2}
     END {printf "cond=\"%s\" requests=%s p50=%s p90=%s p99=%s %s\n", c, r, p50, p90, p99, s}'
}
each_round "$ROUNDS" run "$@"
