"""The thread-pool fan-out tier of the linking evaluation (tests/src/topology.rs): standard
library only.

    python3 eval_fanout_pool.py LEAF_PORT

Serves GET /r/<id> from a ThreadingHTTPServer (a thread per connection): the handler thread
hands GET /b/<id> and GET /t/<id> on the Python leaf service to one ThreadPoolExecutor shared
by every handler, waits for both, and answers 200 "ok <id>". Each pool thread keeps its own
keep-alive connection to the leaf, so a call is written by a pool thread whose last socket
input was the answer to an earlier, unrelated request's call. Binds an ephemeral port on
127.0.0.1 and prints "PORT <n>" once listening. Nothing here knows about tracing.
"""

import concurrent.futures
import http.client
import http.server
import sys
import threading

LEAF = int(sys.argv[1])
POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8)
LOCAL = threading.local()


def get(path):
    conn = getattr(LOCAL, "conn", None)
    if conn is None:
        conn = LOCAL.conn = http.client.HTTPConnection("127.0.0.1", LEAF, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
    except Exception:
        LOCAL.conn = None
        conn.close()
        raise
    if r.status != 200:
        raise RuntimeError("GET %s: %d" % (path, r.status))
    return body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) != 3 or parts[1] != "r" or not parts[2]:
            return self.reply(404, b"no such path\n")
        rid = parts[2]
        calls = [POOL.submit(get, "/b/" + rid), POOL.submit(get, "/t/" + rid)]
        try:
            for c in calls:
                c.result()
        except Exception as e:  # noqa: BLE001 - answered as a 502 with the reason
            return self.reply(502, ("%s\n" % e).encode())
        self.reply(200, b"ok " + rid.encode() + b"\n")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
