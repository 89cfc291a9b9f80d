"""An HTTP server that logs like an uninstrumented application, for ztrace's log tests.

    python3 log_app.py   -> serves GET on 127.0.0.1, prints "PORT <n>" once listening, then
                            "handling <path>" on stdout for every request, "warning while serving
                            <path>" on stderr for /warn*, a 1000-character line for /long*, and
                            "tick" from a background thread (outside any request) every 0.3 s.
"""

import http.server
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        print(f"handling {self.path}", flush=True)
        if self.path.startswith("/warn"):
            print(f"warning while serving {self.path}", file=sys.stderr, flush=True)
        if self.path.startswith("/long"):
            print("L" * 1000, flush=True)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def tick():
    while True:
        print("tick", flush=True)
        time.sleep(0.3)


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("PORT", server.server_address[1], flush=True)
    threading.Thread(target=tick, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
