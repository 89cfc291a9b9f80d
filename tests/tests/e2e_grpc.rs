//! gRPC end to end, as root: a Python `grpcio` server and client (uninstrumented, HTTP/2 over
//! TCP), both traced. Asserts RPC spans per the conventions, the gRPC status of a failing call,
//! and client → server links across processes by TCP sequence numbers.

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{
        apps_dir, privileged_or_skip, runtime_with_receiver, spawn_app, trace_server_and_clients,
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
