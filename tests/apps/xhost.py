"""Services for ztrace's cross-host test (tests/tests/e2e_crosshost.rs). Nothing here knows
about tracing.

    BIND=ADDR [CALLBACK=HOST:PORT] python3 xhost.py server
                                            -> thread-per-request HTTP/1.1 server with keep-alive,
                                               GET /item/<id>; GET /call/<id> first calls
                                               CALLBACK's /item/<id>-cb (one keep-alive connection
                                               per handler thread); prints "PORT <n>" once listening
    python3 xhost.py clients HOST PORT PATH CLIENTS REQUESTS
                                            -> CLIENTS threads, each one keep-alive connection
                                               making REQUESTS GETs of <PATH><c>-<i>;
                                               exit status 1 if any failed
"""

import http.client
import http.server
import json
import os
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    local = threading.local()

    def callback(self, name):
        host, port = os.environ["CALLBACK"].rsplit(":", 1)
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            self.local.conn = conn
        conn.request("GET", f"/item/{name}-cb")
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/call/") and self.callback(name) != 200:
            self.send_error(502)
            return
        data = json.dumps({"item": name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def server():
    srv = http.server.ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), 0), Handler)
    srv.daemon_threads = True
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


def clients(host, port, path, n, requests):
    failed = []

    def run(c):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for i in range(requests):
            try:
                conn.request("GET", f"{path}{c}-{i}")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failed.append(resp.status)
            except Exception as e:  # noqa: BLE001 - any failure fails the run
                failed.append(repr(e))
                conn = http.client.HTTPConnection(host, port, timeout=10)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print("failed:", failed[:5], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        host, port, path, n, requests = sys.argv[2:7]
        clients(host, int(port), path, int(n), int(requests))
