//! gRPC end to end, as root: a Python `grpcio` server and client (uninstrumented, HTTP/2 over
//! TCP), both traced. Asserts RPC spans per the conventions, the gRPC status of a failing call,
//! and client → server links across processes by TCP sequence numbers; and gRPC calls through
//! nginx behind a load balancer's PROXY protocol header.

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{
        apps_dir, ensure_proxied_client, privileged_or_skip, runtime_with_receiver, spawn_app,
        trace_behind_a_balancer, trace_server_and_clients,
    },
    receiver::ReceivedSpan,
};

#[test]
fn grpc_calls_become_linked_rpc_spans() -> Result<()> {
    if !privileged_or_skip("grpc_calls_become_linked_rpc_spans") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let app = apps_dir().join("grpc_pair.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&app).arg("server");
    let (server, port) = spawn_app(cmd).context("python3 with grpcio (pip install grpcio)")?;
    // The client starts after ztrace has attached, as the child of a traced shell.
    let script = format!("sleep 3; python3 {} client {port} 5", app.display());
    let spans = trace_server_and_clients(&rt, &receiver, server.pid(), &script, &[], 12)?;

    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(-1) as u32;
    let method = |s: &ReceivedSpan| s.attr_str("rpc.method").unwrap_or_default();
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) == server.pid() && s.span.kind == SpanKind::Server as i32)
        .collect();
    let clients: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) != server.pid() && s.span.kind == SpanKind::Client as i32)
        .collect();
    ensure!(
        servers.iter().filter(|s| method(s) == "SayHello").count() == 5
            && clients.iter().filter(|s| method(s) == "SayHello").count() == 5,
        "want 5 SayHello spans on each side: {} server, {} client",
        servers.len(),
        clients.len()
    );
    for s in servers.iter().chain(&clients) {
        ensure!(s.attr_str("rpc.system").as_deref() == Some("grpc"));
        ensure!(s.attr_str("rpc.service").as_deref() == Some("demo.Greeter"));
        ensure!(
            s.span.name == format!("demo.Greeter/{}", method(s)),
            "name {}",
            s.span.name
        );
    }
    let ok = servers
        .iter()
        .find(|s| method(s) == "SayHello")
        .expect("SayHello");
    ensure!(ok.attr_int("rpc.grpc.status_code") == Some(0));
    let error = |s: &ReceivedSpan| {
        s.span.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32)
    };
    for side in [&servers, &clients] {
        let fail = side
            .iter()
            .find(|s| method(s) == "Fail")
            .context("Fail span")?;
        ensure!(
            fail.attr_int("rpc.grpc.status_code") == Some(13) && error(fail),
            "INTERNAL must be an error"
        );
    }
    let by_id: std::collections::HashMap<&[u8], &ReceivedSpan> = clients
        .iter()
        .map(|s| (s.span.span_id.as_slice(), *s))
        .collect();
    for s in &servers {
        let parent = by_id
            .get(s.span.parent_span_id.as_slice())
            .context("server span without client parent")?;
        ensure!(method(parent) == method(s) && parent.span.trace_id == s.span.trace_id);
    }
    Ok(())
}

/// gRPC behind a load balancer's PROXY protocol header: nginx with `listen … http2
/// proxy_protocol` (it closes a connection without a valid header) passes the calls to the
/// Python `grpcio` server (`grpc_pass`); a Python client plays the balancer and writes the
/// header and then the HTTP/2 frames of a unary SayHello call by hand: a v1 header in the same
/// write as the preface, and a v2 header alone before it. The answer must be the server's
/// greeting. nginx's SERVER span of each call is a gRPC span with the header's client as
/// `client.address`/`client.port` and the balancer as `network.peer.*`.
#[test]
fn grpc_behind_a_proxy_protocol_header_is_traced() -> Result<()> {
    if !privileged_or_skip("grpc_behind_a_proxy_protocol_header_is_traced") {
        return Ok(());
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(apps_dir().join("grpc_pair.py")).arg("server");
    let (_grpc, grpc_port) = spawn_app(cmd).context("python3 with grpcio (pip install grpcio)")?;
    let spans = trace_behind_a_balancer(
        "grpc",
        "http2 proxy_protocol",
        "grpc_pass grpc://127.0.0.1:{{GRPC}};",
        &[("GRPC", grpc_port.to_string())],
        6,
        |port| {
            format!(
                r#"
import socket, struct, time
def frame(kind, flags, stream, payload):
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload
def lit(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
def message(data):
    return b"\x00" + struct.pack("!I", len(data)) + data
def call(name):
    block = lit(b":method", b"POST") + lit(b":scheme", b"http") + lit(b":path", b"/demo.Greeter/SayHello") \
        + lit(b":authority", b"x") + lit(b"content-type", b"application/grpc") + lit(b"te", b"trailers")
    return frame(1, 0x4, 1, block) + frame(0, 0x1, 1, message(b"call " + name))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
def answer(s):
    data, body = b"", b""
    while True:
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = s.recv(65536)
            assert chunk, "connection closed"
            data += chunk
        n = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7fffffff
        payload, data = data[9:9 + n], data[9 + n:]
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0, b""))
        assert not (stream == 1 and kind == 3), "stream reset"
        if stream == 1 and kind == 0:
            body += payload
        if stream == 1 and flags & 1 and kind in (0, 1):
            return body
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 {port}\r\n" + PREFACE + call(b"v1"))
assert answer(s) == message(b"hello call v1")
s.close()
addrs = socket.inet_aton("203.0.113.8") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 51235, {port})
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs)
time.sleep(0.1)
s.sendall(PREFACE + call(b"v2"))
assert answer(s) == message(b"hello call v2")
s.close()
"#
            )
        },
    )?;
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.span.kind == SpanKind::Server as i32
                && s.attr_str("rpc.method").as_deref() == Some("SayHello")
        })
        .collect();
    for (addr, port) in [("203.0.113.7", 51234), ("203.0.113.8", 51235)] {
        let Some(srv) = servers
            .iter()
            .find(|s| s.attr_int("client.port") == Some(port))
        else {
            anyhow::bail!("want a SayHello SERVER span from {addr}:{port}, got: {spans:#?}");
        };
        ensure!(
            srv.attr_str("rpc.system").as_deref() == Some("grpc")
                && srv.attr_str("rpc.service").as_deref() == Some("demo.Greeter")
                && srv.attr_int("rpc.grpc.status_code") == Some(0),
            "{addr}:{port}: {srv:#?}"
        );
        ensure_proxied_client(srv, "SayHello", addr, port)?;
    }
    Ok(())
}
