"""The thread-per-request tier of the linking evaluation (tests/src/eval.rs): standard library only.

    python3 eval_threaded.py REDIS_PORT

Serves GET /b/<id> and GET /t/<id> from a ThreadingHTTPServer (one thread per connection,
HTTP/1.1 keep-alive). Each request runs exactly one Redis command through a pool of raw RESP
connections shared by every handler thread:

    /b/<id>  ->  SET kb:<id> v
    /t/<id>  ->  GET kt:<id>

The pool is a FIFO of idle connections: a thread takes whichever connection has been idle
longest and puts it back at the end, so the consecutive commands of one thread go out on
different connections, and one connection carries commands of many threads. That is the shape
that defeats "one connection = one caller" linking. Connections are opened lazily (after the
tracer attached). Binds an ephemeral port on 127.0.0.1 and prints "PORT <n>" once listening.
Nothing here knows about tracing.
"""

import http.server
import queue
import socket
import sys
import threading

POOL_SIZE = 4


class RedisPool:
    def __init__(self, port, size):
        self.port = port
        self.idle = queue.Queue()
        self.lock = threading.Lock()
        self.opened = 0
        self.size = size

    def take(self):
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            if self.opened < self.size:
                self.opened += 1
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return (sock, sock.makefile("rb"))
        return self.idle.get(timeout=10)

    def give(self, conn):
        self.idle.put(conn)

    def command(self, *args):
        conn = self.take()
        try:
            sock, reader = conn
            wire = [b"*%d\r\n" % len(args)]
            for a in args:
                a = a.encode()
                wire.append(b"$%d\r\n%s\r\n" % (len(a), a))
            sock.sendall(b"".join(wire))
            reply = read_reply(reader)
        except Exception:
            # A broken connection leaves the pool; a later take() opens a new one.
            with self.lock:
                self.opened -= 1
            conn[0].close()
            raise
        self.give(conn)
        return reply


def read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b":"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return reader.read(n + 2)[:-2]
    raise RuntimeError("unexpected redis reply %r" % line)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pool = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) != 3 or parts[1] not in ("b", "t") or not parts[2]:
            return self.reply(404, b"no such path\n")
        rid = parts[2]
        if parts[1] == "b":
            self.pool.command("SET", "kb:" + rid, "v")
        else:
            self.pool.command("GET", "kt:" + rid)
        self.reply(200, b"ok " + rid.encode() + b"\n")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    Handler.pool = RedisPool(int(sys.argv[1]), POOL_SIZE)
    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
