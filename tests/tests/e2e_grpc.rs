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
        "grpc",
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
