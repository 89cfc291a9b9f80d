# Shared set-up of the side-by-side scripts (`probe-ab.sh`, `paced-ab.sh`), sourced by them:
# nginx from nginx.conf.template (one worker, 2-byte body) on a free port, a null OTLP/HTTP
# collector (Python) on another, an idle process, and a trap that stops them all and removes
# the temporary directory. Sets DIR, NGX_PORT, SINK_PORT, MASTER (nginx's master PID), IDLE and
# PIDS (what the trap stops); `cpu_ticks PID` is a process's utime + stime in clock ticks.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
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
sleep 100000 & IDLE=$!; PIDS+=($IDLE)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# `start_ztrace "BIN [flags]" TARGET [extra flags]`: starts it exporting to the null collector,
# waits until it traces, sets Z to its PID; its stderr goes to $DIR/ztrace.log.
start_ztrace() {
  local cmd; read -ra cmd <<< "$1"
  "${cmd[@]}" --pid "$2" --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --otlp-protocol http/protobuf \
    --metric-export-interval 1s "${@:3}" 2>"$DIR/ztrace.log" &
  Z=$!
  for _ in $(seq 100); do grep -q "tracing " "$DIR/ztrace.log" && break; sleep 0.1; done
}
# `each_round ROUNDS run COND...`: calls `run COND` for every condition, ROUNDS times, the order
# reversed every other round; each line is prefixed with its round.
each_round() {
  local rounds=$1 fn=$2 r c conds; shift 2
  for r in $(seq "$rounds"); do
    conds=("$@"); [ $((r % 2)) = 0 ] && mapfile -t conds < <(printf '%s\n' "$@" | tac)
    for c in "${conds[@]}"; do echo -n "round=$r "; "$fn" "$c"; done
  done
}
