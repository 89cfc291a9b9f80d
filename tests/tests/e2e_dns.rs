//! DNS over UDP end to end, as root: a real `dnsmasq` answering a local zone and real `dig`
//! clients (which use sendmmsg/recvmmsg through libuv), both traced. Asserts query name, type and
//! response codes on both sides.

use std::{
    net::UdpSocket,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{Proc, privileged_or_skip, runtime_with_receiver, trace_server_and_clients},
    receiver::ReceivedSpan,
};

#[test]
fn dns_queries_become_spans_on_both_sides() -> Result<()> {
    if !privileged_or_skip("dns_queries_become_spans_on_both_sides") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let port = UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let server = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/ztrace.test/127.0.0.2",
            "--address=/blocked.test/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("dnsmasq (apt-get install dnsmasq-base)")?;
    let server = Proc::new(server);
    let dig = |name: &str, qtype: &str| {
        format!("dig @127.0.0.1 -p {port} +tries=1 +time=5 {name} {qtype} >/dev/null")
    };
    let script = format!(
        "sleep 3; {}; {}; {}; true",
        dig("api.ztrace.test", "A"),
        dig("x.blocked.test", "A"),
        dig("api.ztrace.test", "AAAA")
    );
    let spans = trace_server_and_clients(&rt, &receiver, server.pid(), &script, &[], 6)?;

    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(-1) as u32;
    let find = |server_side: bool, name: &str| -> Result<&ReceivedSpan> {
        spans
            .iter()
            .find(|s| {
                (pid(s) == server.pid()) == server_side
                    && s.span.kind
                        == if server_side {
                            SpanKind::Server
                        } else {
                            SpanKind::Client
                        } as i32
                    && s.span.name == name
            })
            .with_context(|| {
                format!(
                    "no {} span `{name}` in {:?}",
                    if server_side { "server" } else { "client" },
                    spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
                )
            })
    };
    let error = |s: &ReceivedSpan| {
        s.span.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32)
    };
    for server_side in [true, false] {
        let ok = find(server_side, "DNS A api.ztrace.test")?;
        ensure!(
            ok.attr_str("dns.question.name").as_deref() == Some("api.ztrace.test") && !error(ok)
        );
        ensure!(ok.attr_str("network.transport").as_deref() == Some("udp"));
        let refused = find(server_side, "DNS AAAA api.ztrace.test")?;
        ensure!(error(refused) && refused.attr_str("error.type").as_deref() == Some("REFUSED"));
    }
    // NXDOMAIN is an answer the server gave correctly, but a failure for the client.
    ensure!(!error(find(true, "DNS A x.blocked.test")?));
    ensure!(error(find(false, "DNS A x.blocked.test")?));
    Ok(())
}
