"""A load balancer in front of a server, by hand: each connection starts with a PROXY protocol
header naming the real client, then the balancer relays its requests.

    proxy_client.py http1|h2|grpc PORT

nginx behind it answers with the header's client (`$proxy_protocol_addr`, so nginx really parsed
the header), or passes gRPC calls on. Exits non-zero on any answer but the expected one.

- `http1`: a keep-alive connection whose v1 header is written alone at connect (as HAProxy does),
  then GET /lb/v1-1 and /lb/v1-2 (client 203.0.113.7:51234); a connection whose v2 header comes
  in one write with GET /lb/v2-1 (same client); one whose v1 header comes in one write with
  GET /lb/v1-3 (client 203.0.113.7:51235).
- `h2` and `grpc`: HTTP/2 with prior knowledge, frames written by hand. A v1 header in the same
  write as the preface and the request (client 203.0.113.7:51234), then a v2 header alone,
  before the preface (client 203.0.113.8:51235). `h2` GETs /lb/h2-v1 and /lb/h2-v2; `grpc` calls
  demo.Greeter/SayHello, which answers "hello call v1" / "hello call v2".
"""
import socket
import struct
import sys
import time


def v1_header(addr, client_port, port):
    return f"PROXY TCP4 {addr} 127.0.0.1 {client_port} {port}\r\n".encode()


def v2_header(addr, client_port, port):
    addrs = socket.inet_aton(addr) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", client_port, port)
    return b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# --- HTTP/1 -------------------------------------------------------------------------------------

def http1_answer(s, want):
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)
    assert b" 200 " in head.split(b"\r\n")[0], head
    assert body == want, body


def http1(port):
    want = b"client 203.0.113.7\n"
    s = connect(port)
    s.sendall(v1_header("203.0.113.7", 51234, port))
    time.sleep(0.1)
    for i in (1, 2):
        s.sendall(b"GET /lb/v1-%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        http1_answer(s, want)
    s.close()
    s = connect(port)
    s.sendall(v2_header("203.0.113.7", 51234, port) + b"GET /lb/v2-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    http1_answer(s, want)
    s = connect(port)
    s.sendall(v1_header("203.0.113.7", 51235, port) + b"GET /lb/v1-3 HTTP/1.1\r\nHost: x\r\n\r\n")
    http1_answer(s, want)


# --- HTTP/2 and gRPC ----------------------------------------------------------------------------

def frame(kind, flags, stream, payload):
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


def lit(name, value):
    """A header field literal without indexing, name and value not Huffman-coded."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_message(data):
    return b"\x00" + struct.pack("!I", len(data)) + data


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")


def h2_request(mode, name, addr):
    """Stream 1's frames, and the body its answer must carry."""
    if mode == "grpc":
        block = (lit(b":method", b"POST") + lit(b":scheme", b"http")
                 + lit(b":path", b"/demo.Greeter/SayHello") + lit(b":authority", b"x")
                 + lit(b"content-type", b"application/grpc") + lit(b"te", b"trailers"))
        frames = frame(1, 0x4, 1, block) + frame(0, 0x1, 1, grpc_message(b"call " + name))
        return frames, grpc_message(b"hello call " + name)
    block = lit(b":method", b"GET") + lit(b":scheme", b"http") + lit(b":path", b"/lb/h2-" + name) + lit(b":authority", b"x")
    return frame(1, 0x5, 1, block), f"client {addr}\n".encode()


def h2_answer(s):
    """Stream 1's response body, once the stream ends; SETTINGS are acknowledged on the way."""
    data, body, headers = b"", b"", False
    while True:
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = s.recv(65536)
            assert chunk, "connection closed"
            data += chunk
        n = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload, data = data[9:9 + n], data[9 + n:]
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0, b""))
        assert not (stream == 1 and kind == 3), "stream reset"
        headers |= stream == 1 and kind == 1
        if stream == 1 and kind == 0:
            body += payload
        if stream == 1 and flags & 1 and kind in (0, 1):
            assert headers, "no response headers"
            return body


def h2(mode, port):
    for header, name, addr, alone in [
        (v1_header("203.0.113.7", 51234, port), b"v1", "203.0.113.7", False),
        (v2_header("203.0.113.8", 51235, port), b"v2", "203.0.113.8", True),
    ]:
        frames, want = h2_request(mode, name, addr)
        s = connect(port)
        if alone:
            s.sendall(header)
            time.sleep(0.1)
            s.sendall(PREFACE + frames)
        else:
            s.sendall(header + PREFACE + frames)
        got = h2_answer(s)
        assert got == want, (got, want)
        s.close()


mode, port = sys.argv[1], int(sys.argv[2])
http1(port) if mode == "http1" else h2(mode, port)
