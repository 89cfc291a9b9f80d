"""Two uninstrumented HTTP/1.1 services for ztrace's end-to-end tests and demo.

    python3 two_tier.py backend            -> serves /item/<id>, /fail (500), POST /echo,
                                              /slow/<ms>/<id> (answers after <ms> ms;
                                              with ?fail=1, a 500)
    python3 two_tier.py frontend PORT      -> serves /api/<id>, /api/fail, POST /api/echo by
                                              calling the backend at 127.0.0.1:PORT, and passes
                                              /api/slow/<ms>/<id>[?fail=1] through

BIND=::1 in the environment makes a service listen on IPv6 loopback instead.
LOG_REQUESTS=1 makes a service's handler write "<role> <METHOD> <path>" to stderr as it starts
serving each request (what an application's request log does).
Both are thread-per-request (ThreadingHTTPServer) with keep-alive, bind an ephemeral port on
127.0.0.1 and print "PORT <n>" on stdout once listening. The frontend keeps one persistent
connection to the backend per handler thread. Nothing here knows about tracing.
"""

import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time

LOG_REQUESTS = os.environ.get("LOG_REQUESTS") == "1"


def log_request(role, method, path):
    if LOG_REQUESTS:
        # The line in one write (stderr writes through: print would make one per piece).
        sys.stderr.write(f"{role} {method} {path}\n")


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        log_request("backend", "GET", self.path)
        if self.path == "/fail":
            self.reply(500, {"error": "backend failure"})
        elif self.path.startswith("/slow/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
            if self.path.endswith("?fail=1"):
                self.reply(500, {"error": "injected failure"})
            else:
                self.reply(200, {"item": self.path.rsplit("/", 1)[-1]})
        else:
            self.reply(200, {"item": self.path.rsplit("/", 1)[-1]})

    def do_POST(self):
        log_request("backend", "POST", self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(200, {"echo": len(body)})


class Frontend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend_port = 0
    local = threading.local()

    def log_message(self, *args):
        pass

    def backend(self, method, path, body=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.backend_port, timeout=10)
            self.local.conn = conn
        headers = {"Content-Length": str(len(body))} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def forward(self, method, path, body=None):
        status, data = self.backend(method, path, body)
        out = data if status == 200 else json.dumps({"upstream": status}).encode()
        self.send_response(200 if status == 200 else 502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        log_request("frontend", "GET", self.path)
        if self.path == "/api/fail":
            self.forward("GET", "/fail")
        elif self.path.startswith("/api/slow/"):
            self.forward("GET", self.path[len("/api"):])
        else:
            self.forward("GET", "/item/" + self.path.rsplit("/", 1)[-1])

    def do_POST(self):
        log_request("frontend", "POST", self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.forward("POST", "/echo", body)


def main():
    role = sys.argv[1]
    handler = Backend
    if role == "frontend":
        Frontend.backend_port = int(sys.argv[2])
        handler = Frontend
    bind = os.environ.get("BIND", "127.0.0.1")

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    server = Server((bind, 0), handler)
    server.daemon_threads = True
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
