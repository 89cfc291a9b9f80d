"""Services for ztrace's cross-host test and evaluation (tests/tests/e2e_crosshost.rs,
tests/src/xeval.rs). Nothing here knows about tracing.

    BIND=ADDR [PORT=N] [CALLBACK=HOST:PORT] [NEXT=HOST:PORT VIA=HOST:PORT VIA_MASQ=HOST:PORT VIA_NODE=HOST:PORT VIA_GW=HOST:PORT POOL=N] python3 xhost.py server
                                            -> thread-per-request HTTP/1.1 server with keep-alive,
                                               GET /item/<id>, /cb/<id>: answered at once;
                                               GET /call/<id> first calls CALLBACK's
                                               /item/<id>-cb (one keep-alive connection per
                                               handler thread). With NEXT, before answering:
                                               /t/<id> and /k/<id> call NEXT's /n/<id> on the handler
                                               thread's own keep-alive connection; /p/<id> the
                                               same through a pool of POOL connections shared by
                                               all handler threads; /v/<id> calls VIA's /n/<id>
                                               (a service address), /m/<id> VIA_MASQ's (one
                                               whose source ports are rewritten), /h/<id>
                                               VIA_NODE's (a node port), /g/<id>
                                               VIA_GW's (through a NAT gateway);
                                               /c/<id> calls NEXT's /c/<id>.
                                               Prints "PORT <n>" once listening
    [PAUSE=SECONDS] python3 xhost.py clients HOST PORT PATH CLIENTS REQUESTS
                                            -> CLIENTS threads, each one keep-alive connection
                                               making REQUESTS GETs of <PATH><c>-<i> (PAUSE
                                               seconds apart); exit status 1 if any failed
    python3 xhost.py drive HOST PORT PATH CLIENTS REQUESTS
                                            -> the same, printing "ok <id>" for each request
                                               answered 200 with its id (the last segment of
                                               <PATH><c>-<i>) in its body and "failed <id> <why>"
                                               for the others (the
                                               evaluation's ground truth); always exit status 0
"""

import http.client
import http.server
import json
import os
import queue
import sys
import threading
import time


def endpoint(var):
    host, port = os.environ[var].rsplit(":", 1)
    return host, int(port)


class Pool:
    """Keep-alive connections shared by every handler thread: a thread takes one for a call and
    puts it back, so one connection carries calls of many threads' requests."""

    def __init__(self, size):
        self.free = queue.LifoQueue()
        for _ in range(size):
            self.free.put(None)

    def get(self, path):
        conn = self.free.get()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(*endpoint("NEXT"), timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except Exception:
            conn.close()
            conn = None
            raise
        finally:
            self.free.put(conn)


POOL = Pool(int(os.environ.get("POOL", "4")))


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

    def call(self, var, path):
        """One call on this handler thread's own keep-alive connection to `var`'s endpoint."""
        conns = self.local.__dict__.setdefault("next", {})
        conn = conns.get(var)
        if conn is None:
            conn = http.client.HTTPConnection(*endpoint(var), timeout=10)
            conns[var] = conn
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except Exception:
            conn.close()
            del conns[var]
            raise

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        op = self.path.split("/")[1] if self.path.count("/") >= 2 else ""
        if op == "call" and self.callback(name) != 200:
            self.send_error(502)
            return
        calls = {
            "t": lambda: self.call("NEXT", f"/n/{name}"),
            "k": lambda: self.call("NEXT", f"/n/{name}"),
            "p": lambda: POOL.get(f"/n/{name}"),
            "v": lambda: self.call("VIA", f"/n/{name}"),
            "m": lambda: self.call("VIA_MASQ", f"/n/{name}"),
            "h": lambda: self.call("VIA_NODE", f"/n/{name}"),
            "g": lambda: self.call("VIA_GW", f"/n/{name}"),
            "c": lambda: self.call("NEXT", f"/c/{name}"),
        }
        if op in calls:
            try:
                status = calls[op]()
            except Exception:  # noqa: BLE001 - the caller sees a 502
                status = 0
            if status != 200:
                self.send_error(502)
                return
        data = json.dumps({"item": name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def server():
    bind = (os.environ.get("BIND", "127.0.0.1"), int(os.environ.get("PORT", "0")))
    srv = http.server.ThreadingHTTPServer(bind, Handler)
    srv.daemon_threads = True
    print("PORT", srv.server_address[1], flush=True)
    srv.serve_forever()


def drive(host, port, path, n, requests):
    lines = []
    lock = threading.Lock()

    def run(c):
        conn = http.client.HTTPConnection(host, port, timeout=15)
        for i in range(requests):
            target = f"{path}{c}-{i}"
            rid = target.rsplit("/", 1)[-1]
            try:
                conn.request("GET", target)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and rid.encode() in body:
                    line = f"ok {rid}"
                else:
                    line = f"failed {rid} status {resp.status}"
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                line = f"failed {rid} {e!r}"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=15)
            with lock:
                lines.append(line)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(lines), flush=True)


def clients(host, port, path, n, requests):
    failed = []
    pause = float(os.environ.get("PAUSE", "0"))

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
            if pause:
                time.sleep(pause)

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
        run = drive if sys.argv[1] == "drive" else clients
        run(host, int(port), path, int(n), int(requests))
