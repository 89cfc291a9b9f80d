#!/usr/bin/env bash
# Live demo for `cargo xtask run` without arguments: two small Python services, ztrace attached to
# both by PID printing linked spans to the terminal, and curl driving traffic for a few seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${ZTRACE_BIN:?ZTRACE_BIN must point at the ztrace binary}"
work="$(mktemp -d)"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
pids=()
trap cleanup EXIT

wait_port() { for _ in $(seq 50); do grep -q PORT "$1" 2>/dev/null && { awk '/PORT/{print $2}' "$1"; return; }; sleep 0.1; done; echo "service did not start" >&2; exit 1; }

python3 "$here/two_tier.py" backend >"$work/backend" & pids+=($!); backend_pid=$!
backend_port=$(wait_port "$work/backend")
python3 "$here/two_tier.py" frontend "$backend_port" >"$work/frontend" & pids+=($!); frontend_pid=$!
frontend_port=$(wait_port "$work/frontend")
echo "demo: frontend pid $frontend_pid on :$frontend_port calls backend pid $backend_pid on :$backend_port"

"$bin" --pid "$frontend_pid,$backend_pid" --duration 8s & ztrace=$!
sleep 2
for i in $(seq 1 5); do
  curl -s -o /dev/null -o /dev/null "http://127.0.0.1:$frontend_port/api/$i" "http://127.0.0.1:$frontend_port/api/$i-again"
  sleep 0.3
done
curl -s -o /dev/null -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' "http://127.0.0.1:$frontend_port/api/with-context"
curl -s -o /dev/null "http://127.0.0.1:$frontend_port/api/fail"
wait "$ztrace"
