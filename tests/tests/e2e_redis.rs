//! Redis end to end, as root: a real `redis-server` and real clients (`redis-cli`, and
//! `redis-benchmark` pipelining), both traced. Asserts database spans per the conventions, server
//! errors as span errors, pipelined commands paired in order, and client → server links across
//! processes.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{
        Proc, free_port, privileged_or_skip, runtime_with_receiver, trace_server_and_clients,
    },
    receiver::ReceivedSpan,
};

#[test]
fn redis_commands_become_linked_database_spans() -> Result<()> {
    if !privileged_or_skip("redis_commands_become_linked_database_spans") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let port = free_port()?.to_string();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let server = Proc::new(server);
    for _ in 0..100 {
        let ok = Command::new("redis-cli")
            .args(["-p", &port, "PING"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The clients run after ztrace has attached, as children of a traced shell.
    let script = format!(
        "sleep 3; redis-cli -p {port} SET greeting hello; redis-cli -p {port} GET greeting; \
         redis-cli -p {port} INCR greeting; \
         redis-benchmark -p {port} -n 30 -P 3 -c 1 -t set -q; true"
    );
    let spans = trace_server_and_clients(
        &rt,
        &receiver,
        server.pid(),
        &format!("({script}) >/dev/null 2>&1"),
        &["--db-query-text"],
        60,
    )?;

    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(-1) as u32;
    let op = |s: &ReceivedSpan| s.attr_str("db.operation.name").unwrap_or_default();
    let server_spans: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) == server.pid() && s.span.kind == SpanKind::Server as i32)
        .collect();
    let client_spans: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) != server.pid() && s.span.kind == SpanKind::Client as i32)
        .collect();
    for s in server_spans.iter().chain(&client_spans) {
        ensure!(
            s.attr_str("db.system.name").as_deref() == Some("redis"),
            "not a redis span: {:?}",
            s.span
        );
    }
    for want in ["SET", "GET", "INCR"] {
        ensure!(
            server_spans.iter().any(|s| op(s) == want),
            "no server span for {want}"
        );
        ensure!(
            client_spans.iter().any(|s| op(s) == want),
            "no client span for {want}"
        );
    }
    // Query text is sanitised: the value never leaves the host.
    let set = server_spans.iter().find(|s| op(s) == "SET").expect("SET");
    ensure!(
        set.attr_str("db.query.text").as_deref() == Some("SET greeting ?"),
        "{:?}",
        set.attr_str("db.query.text")
    );
    ensure!(set.span.name == "SET", "name {}", set.span.name);
    // A server error is the span's error.
    let incr = server_spans.iter().find(|s| op(s) == "INCR").expect("INCR");
    ensure!(
        incr.span.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32),
        "INCR must fail"
    );
    ensure!(incr.attr_str("db.response.status_code").as_deref() == Some("ERR"));
    // Pipelined SETs from redis-benchmark: every one paired and linked.
    let bench_sets = server_spans.iter().filter(|s| op(s) == "SET").count();
    ensure!(
        bench_sets > 30,
        "only {bench_sets} SET server spans (want 30 pipelined + 1)"
    );
    // Every server span is the child of the client span that sent its command.
    let by_id: std::collections::HashMap<&[u8], &ReceivedSpan> = client_spans
        .iter()
        .map(|s| (s.span.span_id.as_slice(), *s))
        .collect();
    for s in &server_spans {
        let parent = by_id
            .get(s.span.parent_span_id.as_slice())
            .with_context(|| format!("server span {} has no client parent", op(s)))?;
        ensure!(
            op(parent) == op(s) && parent.span.trace_id == s.span.trace_id,
            "wrong parent"
        );
    }
    drop(server);
    Ok(())
}
