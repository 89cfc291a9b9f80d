//! Remote management over OpAMP end to end, as root, with real probes: the real ztrace binary
//! traces a real HTTP service (tests/apps/two_tier.py) and exports to the in-process OTLP
//! receiver, while the in-process OpAMP server of `ztrace_e2e::opamp` (the same protobuf
//! messages, plain HTTP, a bearer token) manages it. One run, in phases:
//!
//! 1. ztrace reports itself: AgentDescription (service.name ztrace, its version, host.name, os),
//!    its capabilities, health (healthy, `tracing 1 process(es)`), and the effective
//!    configuration (the local file, the OTLP header's token redacted).
//! 2. The server pushes a head sampling ratio of 0.25: APPLIED, and from then on exactly the
//!    traces whose trace id passes the 0.25 threshold are exported (about a quarter).
//! 3. A broken configuration (a ratio of 7): FAILED with the parser's message, and spans keep
//!    following the 0.25 ratio.
//! 4. A target change (a second service's PID) with `targets` outside the default allow-list:
//!    FAILED, and the second service is not traced.
//!    Then rules: a pushed `[filter.traces]` rule drops one route's spans (the ratio still applies
//!    to the others), and a broken rule is FAILED naming its column, the filter staying in force.
//! 5. The server goes down and comes back on the same port with no memory: ztrace keeps
//!    exporting meanwhile, logs the outage once, reconnects and reports its full state again
//!    (description, effective configuration with the applied ratio); on exit it says goodbye.
//!
//! With `targets` allowed, the server may add a process (and switch tail sampling), and a
//! remote configuration that no longer names a process untraces it, but keeps the descendants of
//! the processes it still names, a double-forked daemon's server included; children whose fork
//! records were lost (ring buffer full while ztrace was stopped) are learnt from /proc and leave
//! with their parent. A change of tail sampling
//! (and switching it off) while traces are held lets them finish under the policies they came in
//! under, with the spans that arrive after the change. A local file that tunes tail sampling is
//! switched off remotely with `policies = []`, and the late spans of the traces it had dropped
//! stay dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ztrace_e2e::{
    harness::{
        Proc, apps_dir, curl, privileged_or_skip, runtime_with_receiver, spawn_service,
        spawn_ztrace, stop_ztrace,
    },
    kernel::traced_set,
    opamp::{OpampServer, effective_text},
    receiver::{ReceivedSpan, Receiver, test_certificates},
    temp::TempDir,
};
use ztrace_opamp::{AgentCapabilities, RemoteConfigStatuses, any_value};

const TOKEN: &str = "opamp-t0ken";
const OTLP_SECRET: &str = "otlp-s3cret";
const RATIO: f64 = 0.25;

/// The head sampler's rule (W3C randomness: the low 56 bits of the trace id against
/// `(1 - ratio) · 2^56`), computed here independently of ztrace.
fn passes(ratio: f64, trace_id: &[u8]) -> bool {
    let mut r = [0u8; 8];
    r[1..].copy_from_slice(&trace_id[9..16]);
    let threshold = ((1.0 - ratio) * (1u64 << 56) as f64).round() as u64;
    u64::from_be_bytes(r) >= threshold
}

fn attr(kvs: &[ztrace_opamp::KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|k| k.key == key)
        .and_then(|k| match k.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// Server spans of the traced backend for the requests of one phase (`/item/<phase>-<i>`).
fn phase_spans(receiver: &Receiver, phase: &str) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| {
            s.span.kind == 2
                && s.attr_str("url.path")
                    .is_some_and(|p| p.starts_with(&format!("/item/{phase}-")))
        })
        .collect()
}

fn requests(port: u16, phase: &str, n: usize) -> Result<()> {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{port}/item/{phase}-{i}"))
        .collect();
    for chunk in urls.chunks(100) {
        curl(chunk)?;
    }
    Ok(())
}

/// Waits until the phase's exported span count has not moved for a second.
fn settled(receiver: &Receiver, phase: &str) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = phase_spans(receiver, phase);
        if now.len() == last || Instant::now() > deadline {
            return now;
        }
        last = now.len();
    }
}

/// Every exported span of the phase passes the ratio, and about the ratio's share came.
fn follows_ratio(spans: &[ReceivedSpan], sent: usize, ratio: f64, phase: &str) -> Result<()> {
    for s in spans {
        ensure!(
            passes(ratio, &s.span.trace_id),
            "{phase}: span of trace {} exported although it fails the {ratio} ratio",
            s.trace_id_hex()
        );
    }
    let expected = sent as f64 * ratio;
    // ±5 standard deviations of the binomial: a real regression, not chance, fails this.
    let sd = (sent as f64 * ratio * (1.0 - ratio)).sqrt();
    ensure!(
        (spans.len() as f64 - expected).abs() <= 5.0 * sd,
        "{phase}: {} of {sent} requests exported, expected about {expected:.0} at ratio {ratio}",
        spans.len()
    );
    Ok(())
}

/// ztrace managed over OpAMP by `server`: its local file (`ztrace.toml` in `dir`) holds `config`,
/// it polls every second and keeps its state (the instance uid) in `dir`; `flags` come after.
fn spawn_managed(dir: &Path, config: &str, server: &OpampServer, flags: &[String]) -> Result<Proc> {
    let file = dir.join("ztrace.toml");
    std::fs::write(&file, config)?;
    let mut args = vec![
        "--config".into(),
        file.display().to_string(),
        "--opamp-endpoint".into(),
        server.endpoint(),
        "--opamp-poll-interval".into(),
        "1s".into(),
        "--opamp-state-dir".into(),
        dir.display().to_string(),
    ];
    args.extend_from_slice(flags);
    spawn_ztrace(&args)
}

/// [`spawn_managed`] with a local file naming `pids`, exporting to `receiver`, and `allow` (which
/// holds `targets`) as the OpAMP allow-list; `flags` come after.
fn spawn_managed_targets(
    dir: &Path,
    pids: &[u32],
    receiver: &Receiver,
    server: &OpampServer,
    allow: &str,
    flags: &[String],
) -> Result<Proc> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut args = vec![
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--opamp-allow".into(),
        allow.into(),
    ];
    args.extend_from_slice(flags);
    let config = format!("[target]\npids = [{}]\n", pids.join(", "));
    spawn_managed(dir, &config, server, &args)
}

/// The end of a test with a managed ztrace: its stderr (shown when the test fails), and the
/// test's `result`.
fn finish(mut ztrace: Proc, result: Result<()>) -> Result<()> {
    let _ = ztrace.wait_exit(Duration::from_millis(1));
    eprintln!("ztrace stderr:\n{}", ztrace.stderr_text());
    result
}

#[test]
fn a_server_manages_sampling_and_is_refused_targets_and_broken_configs() -> Result<()> {
    if !privileged_or_skip("a_server_manages_sampling_and_is_refused_targets_and_broken_configs") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let server = rt.block_on(OpampServer::start_on(
        "127.0.0.1:0".parse()?,
        Some(TOKEN),
        None,
    ))?;
    let addr = server.addr();
    let (backend, port) = spawn_service(&["backend"])?;
    let (other, other_port) = spawn_service(&["backend"])?;
    let dir = TempDir::new("opamp-e2e")?;
    let mut ztrace = spawn_managed(
        &dir,
        &format!(
            "[target]\npids = [{}]\n\n[otlp]\nendpoint = \"{}\"\nheaders = {{ x-api-key = \"{OTLP_SECRET}\" }}\n",
            backend.pid(),
            receiver.endpoint()
        ),
        &server,
        &[
            "--opamp-headers".into(),
            format!("authorization=Bearer {TOKEN}"),
        ],
    )?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let result = (|| -> Result<()> {
        // 1. What ztrace reports about itself.
        let first = rt.block_on(server.wait_for(
            "a description",
            Duration::from_secs(20),
            |m| m.agent_description.is_some(),
        ))?;
        let d = first.agent_description.as_ref().context("description")?;
        ensure!(attr(&d.identifying_attributes, "service.name").as_deref() == Some("ztrace"));
        ensure!(attr(&d.identifying_attributes, "service.version").is_some());
        ensure!(attr(&d.non_identifying_attributes, "host.name").is_some_and(|h| !h.is_empty()));
        ensure!(attr(&d.non_identifying_attributes, "os.type").as_deref() == Some("linux"));
        for cap in [
            AgentCapabilities::ReportsStatus,
            AgentCapabilities::AcceptsRemoteConfig,
            AgentCapabilities::ReportsEffectiveConfig,
            AgentCapabilities::ReportsHealth,
            AgentCapabilities::ReportsRemoteConfig,
        ] {
            ensure!(first.capabilities & cap as u64 != 0, "{cap:?} not reported");
        }
        ensure!(
            first
                .health
                .as_ref()
                .is_some_and(|h| h.healthy && h.start_time_unix_nano > 0)
        );
        let effective = effective_text(&first).context("effective config")?;
        ensure!(
            effective.contains(&backend.pid().to_string()),
            "{effective}"
        );
        ensure!(
            !effective.contains(OTLP_SECRET),
            "the OTLP token left: {effective}"
        );
        // Health as the capture loop sees it, once it has looked.
        rt.block_on(server.wait_for(
            "health from the capture loop",
            Duration::from_secs(20),
            |m| {
                m.health
                    .as_ref()
                    .is_some_and(|h| h.healthy && h.status == "tracing 1 process(es)")
            },
        ))?;
        let uid = first.instance_uid.clone();
        ensure!(uid.len() == 16);
        ensure!(server.unauthorized() == 0);

        // 2. A new sampling ratio.
        requests(port, "before", 40)?;
        let before = settled(&receiver, "before");
        ensure!(
            before.len() == 40,
            "{} of 40 spans before any remote config",
            before.len()
        );
        let hash = server.offer(&format!(
            "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"{RATIO}\"\n"
        ));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(20)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        requests(port, "ratio", 400)?;
        follows_ratio(&settled(&receiver, "ratio"), 400, RATIO, "after the ratio")?;

        // 3. A broken configuration changes nothing.
        let hash = server.offer("[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"7\"\n");
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(20)))?;
        ensure!(status == RemoteConfigStatuses::Failed, "{status:?}");
        ensure!(error.contains("traces.sampler_arg"), "{error}");
        requests(port, "broken", 400)?;
        follows_ratio(
            &settled(&receiver, "broken"),
            400,
            RATIO,
            "after the broken config",
        )?;

        // 4. Targets are not the server's to change by default.
        let hash = server.offer(&format!(
            "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"{RATIO}\"\n[target]\npids = [{}, {}]\n",
            backend.pid(),
            other.pid()
        ));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(20)))?;
        ensure!(status == RemoteConfigStatuses::Failed, "{status:?}");
        ensure!(
            error.contains("target.pids") && error.contains("targets"),
            "{error}"
        );
        let urls: Vec<String> = (0..40)
            .map(|i| format!("http://127.0.0.1:{other_port}/item/other-{i}"))
            .collect();
        curl(&urls)?;
        requests(port, "after-refusal", 200)?;
        settled(&receiver, "after-refusal");
        let other_spans = receiver
            .spans()
            .iter()
            .filter(|s| s.resource_int("process.pid") == Some(other.pid() as i64))
            .count();
        ensure!(
            other_spans == 0,
            "{other_spans} spans of the refused target"
        );

        // 4b. Rules: a filter pushed by the server drops one route's spans from the next batch
        // on (the ratio still applies to the rest); a broken rule is FAILED naming its column,
        // and the filter in force stays.
        let filter = r#"[filter.traces]
span = ['IsMatch(attributes["url.path"], "^/item/ruled-")']
"#;
        let hash = server.offer(&format!(
            "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"{RATIO}\"\n{filter}"
        ));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(20)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "rules: {status:?}: {error}"
        );
        requests(port, "ruled", 200)?;
        requests(port, "unruled", 400)?;
        let ruled = settled(&receiver, "ruled");
        ensure!(
            ruled.is_empty(),
            "{} spans of a filtered route",
            ruled.len()
        );
        follows_ratio(
            &settled(&receiver, "unruled"),
            400,
            RATIO,
            "beside the filter",
        )?;
        let hash = server.offer(&format!(
            "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"{RATIO}\"\n[filter.traces]\nspan = ['IsMatch(attributes[\"url.path\"], ']\n"
        ));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(20)))?;
        ensure!(status == RemoteConfigStatuses::Failed, "{status:?}");
        ensure!(error.contains("column"), "{error}");
        requests(port, "ruled", 100)?;
        let ruled = settled(&receiver, "ruled");
        ensure!(
            ruled.is_empty(),
            "the filter in force was lost after a broken rule: {} spans",
            ruled.len()
        );

        // 5. The server goes away and comes back without memory.
        let mut server = server;
        server.stop();
        drop(server);
        std::thread::sleep(Duration::from_secs(4));
        requests(port, "outage", 200)?;
        follows_ratio(
            &settled(&receiver, "outage"),
            200,
            RATIO,
            "during the outage",
        )?;
        let server = rt.block_on(OpampServer::start_on(addr, Some(TOKEN), None))?;
        let again = rt.block_on(server.wait_for(
            "the full state after the restart",
            Duration::from_secs(60),
            |m| m.agent_description.is_some() && m.effective_config.is_some(),
        ))?;
        ensure!(again.instance_uid == uid, "the instance uid changed");
        let effective = effective_text(&again).context("effective config")?;
        ensure!(effective.contains("sampler_arg = \"0.25\""), "{effective}");
        let stderr = ztrace.stderr_text();
        ensure!(
            stderr.matches("unreachable").count() == 1,
            "the outage is logged once, not per attempt:\n{stderr}"
        );
        ensure!(stderr.contains("answers again"), "{stderr}");
        stop_ztrace(&mut ztrace)?;
        rt.block_on(server.wait_for("a goodbye", Duration::from_secs(5), |m| {
            m.agent_disconnect.is_some()
        }))?;
        Ok(())
    })();
    finish(ztrace, result)
}

/// With `targets` in the local allow-list, the server (over https, verified with the CA given by
/// `--opamp-certificate`) may choose what is traced: one remote
/// configuration adds a second service's PID and switches tail sampling to errors only; it is
/// APPLIED without a restart, the new process is traced from then on, and only error traces of
/// either service are exported.
#[test]
fn an_operator_who_allows_targets_lets_the_server_add_a_process_and_tail_sampling() -> Result<()> {
    if !privileged_or_skip("an_operator_who_allows_targets_lets_the_server_add_a_process") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-t")?;
    // Over TLS this time: the server's certificate is verified with the CA given.
    let tls = test_certificates(&dir.join("tls"))?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem)?;
    let server = rt.block_on(OpampServer::start_on(
        "127.0.0.1:0".parse()?,
        None,
        Some(&tls),
    ))?;
    ensure!(server.endpoint().starts_with("https://"));
    let (a, a_port) = spawn_service(&["backend"])?;
    let (b, b_port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed_targets(
        &dir,
        &[a.pid()],
        &receiver,
        &server,
        "sampling,targets",
        &["--opamp-certificate".into(), ca.display().to_string()],
    )?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let result = (|| -> Result<()> {
        let hash = server.offer(&format!(
            r#"[target]
pids = [{}, {}]

[tail_sampling]
decision_wait = "500ms"

[[tail_sampling.policies]]
name = "errors"
type = "status_code"
status_code = {{ status_codes = ["ERROR"] }}
"#,
            a.pid(),
            b.pid()
        ));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        ztrace.wait_stderr(
            &format!("tracing process {}", b.pid()),
            Duration::from_secs(10),
        )?;
        for port in [a_port, b_port] {
            let mut urls: Vec<String> = (0..20)
                .map(|i| format!("http://127.0.0.1:{port}/item/ok-{i}"))
                .collect();
            urls.extend((0..5).map(|_| format!("http://127.0.0.1:{port}/fail")));
            curl(&urls)?;
        }
        std::thread::sleep(Duration::from_secs(2));
        stop_ztrace(&mut ztrace)?;
        let spans = rt.block_on(receiver.wait_for_spans(10, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let spans = if receiver.span_count() > spans.len() {
            receiver.spans()
        } else {
            spans
        };
        let of = |pid: u32| {
            spans
                .iter()
                .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
                .collect::<Vec<_>>()
        };
        for (name, p) in [("the file's", &a), ("the added", &b)] {
            let got = of(p.pid());
            ensure!(
                got.len() == 5
                    && got
                        .iter()
                        .all(|s| s.attr_str("url.path").as_deref() == Some("/fail")),
                "{name} process: want its 5 error spans only, got {:?}",
                got.iter()
                    .map(|s| s.attr_str("url.path"))
                    .collect::<Vec<_>>()
            );
        }
        Ok(())
    })();
    finish(ztrace, result)
}

/// Tail sampling changed remotely while a trace is held. Each trace here is two requests to the
/// backend that carry the same `traceparent` (as from an instrumented caller): a healthy one, then
/// a failing one after the change. The trace stays with the policies it came in under (errors,
/// with a 6 s `decision_wait`), gets the failing span after the change and is kept whole at its
/// due time; healthy traces are dropped. Then the same with tail sampling switched off remotely,
/// after which everything is exported. The exit summary's totals span both changes. (Before, a change decided the held healthy span at once:
/// dropped, and the failing one was exported alone.)
#[test]
fn a_tail_sampling_change_lets_held_traces_finish_under_their_policies() -> Result<()> {
    if !privileged_or_skip("a_tail_sampling_change_lets_held_traces_finish_under_their_policies") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-tail")?;
    let server = rt.block_on(OpampServer::start_on("127.0.0.1:0".parse()?, None, None))?;
    let (backend, port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed(
        &dir,
        &format!(
            "[target]\npids = [{}]\n\n[otlp]\nendpoint = \"{}\"\n",
            backend.pid(),
            receiver.endpoint()
        ),
        &server,
        &[],
    )?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let tail = |policies: &str| {
        format!(
            "[tail_sampling]\ndecision_wait = \"6s\"\n\n[[tail_sampling.policies]]\nname = \"errors\"\ntype = \"status_code\"\nstatus_code = {{ status_codes = [\"ERROR\"] }}\n{policies}"
        )
    };
    let apply = |config: &str| -> Result<()> {
        let hash = server.offer(config);
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        Ok(())
    };
    let trace_id = |phase: u8, i: u8| format!("{phase:02x}{i:02x}{}", "7a".repeat(14));
    let with_parent = |phase: u8, i: u8, path: &str| -> Result<()> {
        curl(&[
            "-H".into(),
            format!(
                "traceparent: 00-{}-{:016x}-01",
                trace_id(phase, i),
                1 + u64::from(i)
            ),
            format!("http://127.0.0.1:{port}{path}"),
        ])?;
        Ok(())
    };
    // Healthy spans of three traces, the change, then each trace's failing span: the change
    // must be applied well within the traces' decision wait.
    let phase = |n: u8, config: &str| -> Result<()> {
        let started = Instant::now();
        for i in 0..3 {
            with_parent(n, i, &format!("/item/{n}-held-{i}"))?;
        }
        requests(port, &format!("{n}-ok"), 5)?;
        apply(config)?;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "phase {n}: the change was applied {:?} after the first spans, too late for this test",
            started.elapsed()
        );
        for i in 0..3 {
            with_parent(n, i, "/fail")?;
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        apply(&tail(""))?;
        // 1. Another list (errors, and traces slower than a minute).
        phase(
            1,
            &tail(
                "\n[[tail_sampling.policies]]\nname = \"slow\"\ntype = \"latency\"\nlatency = { threshold_ms = 60000 }\n",
            ),
        )?;
        // Phase 1's traces are decided at their due time, before the next change.
        std::thread::sleep(Duration::from_secs(7));
        // 2. Tail sampling off (the local file has none).
        phase(2, "# tail sampling off\n")?;
        requests(port, "3-ok", 5)?;
        // The held traces' due time passes before ztrace stops.
        std::thread::sleep(Duration::from_secs(7));
        stop_ztrace(&mut ztrace)?;
        let _ = rt.block_on(receiver.wait_for_spans(12 + 5, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let spans = receiver.spans();
        let of_trace = |phase: u8, i: u8| {
            spans
                .iter()
                .filter(|s| s.trace_id_hex() == trace_id(phase, i))
                .map(|s| s.attr_str("url.path").unwrap_or_default())
                .collect::<Vec<_>>()
        };
        for (phase, i) in [1u8, 2]
            .into_iter()
            .flat_map(|p| (0..3).map(move |i| (p, i)))
        {
            let mut got = of_trace(phase, i);
            got.sort();
            ensure!(
                got == [format!("/item/{phase}-held-{i}"), "/fail".to_string()]
                    || got == ["/fail".to_string(), format!("/item/{phase}-held-{i}")],
                "phase {phase}: trace {i} should be exported whole (its held healthy span and its failing one): {got:?}"
            );
        }
        let healthy = |phase: u8| {
            spans
                .iter()
                .filter(|s| {
                    s.attr_str("url.path")
                        .is_some_and(|p| p.starts_with(&format!("/item/{phase}-ok-")))
                })
                .count()
        };
        ensure!(
            healthy(1) == 0 && healthy(2) == 0,
            "healthy traces under tail sampling should be dropped: {} and {} exported",
            healthy(1),
            healthy(2)
        );
        ensure!(
            healthy(3) == 5,
            "switched off, every trace should be exported: {} of 5",
            healthy(3)
        );
        let stderr = ztrace.stderr_text();
        ensure!(
            stderr.contains("6 traces kept, 10 dropped")
                && stderr.contains("by policy: errors 6, slow 0;")
                && stderr.contains("2 remote changes (0 traces decided early by a change)"),
            "the exit summary should count the 6 failing traces kept and the 10 healthy ones dropped, across both changes"
        );
        Ok(())
    })();
    finish(ztrace, result)
}

/// With `targets` allowed, a remote configuration naming one of the two processes the local
/// file names: APPLIED, the other leaves the kernel's traced set and its requests are no
/// longer traced, the named one's still are.
#[test]
fn a_remote_target_change_untraces_a_process_no_longer_named() -> Result<()> {
    if !privileged_or_skip("a_remote_target_change_untraces_a_process_no_longer_named") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-d")?;
    let server = rt.block_on(OpampServer::start_on("127.0.0.1:0".parse()?, None, None))?;
    let (a, a_port) = spawn_service(&["backend"])?;
    let (b, b_port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed_targets(
        &dir,
        &[a.pid(), b.pid()],
        &receiver,
        &server,
        "targets",
        &[],
    )?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
    let result = (|| -> Result<()> {
        requests(a_port, "before", 2)?;
        requests(b_port, "before", 2)?;
        let hash = server.offer(&format!("[target]\npids = [{}]\n", a.pid()));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        ztrace.wait_stderr(
            "retarget: untraced 1 process(es) no longer selected",
            Duration::from_secs(10),
        )?;
        let traced = traced_set(ztrace.pid())?;
        ensure!(
            traced.contains(&a.pid()) && !traced.contains(&b.pid()),
            "the kernel's traced set should hold {} and not {}: {traced:?}",
            a.pid(),
            b.pid()
        );
        requests(a_port, "after", 2)?;
        requests(b_port, "after", 2)?;
        std::thread::sleep(Duration::from_millis(500));
        stop_ztrace(&mut ztrace)?;
        let _ = rt.block_on(receiver.wait_for_spans(6, Duration::from_secs(10)));
        for (phase, p, want) in [
            ("before", &a, 2),
            ("before", &b, 2),
            ("after", &a, 2),
            ("after", &b, 0),
        ] {
            let got = phase_spans(&receiver, phase)
                .iter()
                .filter(|s| s.resource_int("process.pid") == Some(p.pid() as i64))
                .count();
            ensure!(
                got == want,
                "{phase} the change, process {}: {got} server spans, want {want}",
                p.pid()
            );
        }
        Ok(())
    })();
    finish(ztrace, result)
}

/// An agent whose local file tunes tail sampling (`decision_wait`, `max_hold`, `num_traces`,
/// `vote_wait`) and keeps errors only. The server switches tail sampling off with
/// `policies = []`: APPLIED, the health says `tail sampling off`, the effective configuration
/// keeps the tuning next to the empty list, and every later trace is exported. The verdicts made
/// before still hold: a late span of a trace the errors policy dropped (a request carrying its
/// `traceparent`, sent after the switch-off) is dropped, one of the kept trace exported; the exit
/// summary counts them. (Before, the empty list was refused, "settings are given but no policy";
/// and a switched-off sampler with nothing held let such a late span out alone.)
#[test]
fn a_server_switches_off_tail_sampling_the_local_file_tuned() -> Result<()> {
    if !privileged_or_skip("a_server_switches_off_tail_sampling_the_local_file_tuned") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-tailoff")?;
    let server = rt.block_on(OpampServer::start_on("127.0.0.1:0".parse()?, None, None))?;
    let (backend, port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed(
        &dir,
        &format!(
            r#"[target]
pids = [{}]

[otlp]
endpoint = "{}"

[tail_sampling]
decision_wait = "500ms"
max_hold = "20s"
num_traces = 1000
vote_wait = "1s"

[[tail_sampling.policies]]
name = "errors"
type = "status_code"
status_code = {{ status_codes = ["ERROR"] }}
"#,
            backend.pid(),
            receiver.endpoint()
        ),
        &server,
        &[],
    )?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let trace_id = |i: u8| format!("{i:02x}{}", "5e".repeat(15));
    let with_parent = |i: u8, path: &str| -> Result<()> {
        curl(&[
            "-H".into(),
            format!(
                "traceparent: 00-{}-{:016x}-01",
                trace_id(i),
                1 + u64::from(i)
            ),
            format!("http://127.0.0.1:{port}{path}"),
        ])?;
        Ok(())
    };
    let result = (|| -> Result<()> {
        // Under the local policies: healthy traces dropped, the failing one (trace 9) kept.
        requests(port, "1-ok", 10)?;
        for i in 0..3 {
            with_parent(i, &format!("/item/held-{i}"))?;
        }
        with_parent(9, "/fail")?;
        std::thread::sleep(Duration::from_secs(3));
        let hash = server.offer("[tail_sampling]\npolicies = []\n");
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "policies = [] should switch tail sampling off: {status:?}: {error}"
        );
        let m = rt.block_on(server.wait_for(
            "health saying tail sampling is off",
            Duration::from_secs(10),
            |m| {
                m.health
                    .as_ref()
                    .is_some_and(|h| h.status == "tracing 1 process(es); tail sampling off")
            },
        ))?;
        ensure!(m.health.is_some_and(|h| h.healthy));
        let effective = server
            .received()
            .iter()
            .rev()
            .find_map(effective_text)
            .unwrap_or_default();
        ensure!(
            effective.contains("policies = []")
                && effective.contains("decision_wait = \"500ms\"")
                && effective.contains("num_traces = 1000"),
            "the effective configuration should show the empty list and keep the tuning:\n{effective}"
        );
        ztrace.wait_stderr("changed: tail sampling off", Duration::from_secs(5))?;
        // Late spans of the decided traces, then new traces.
        for i in 0..3 {
            with_parent(i, &format!("/item/late-{i}"))?;
        }
        with_parent(9, "/item/late-9")?;
        requests(port, "3-ok", 20)?;
        let after = settled(&receiver, "3-ok");
        ensure!(
            after.len() == 20,
            "switched off, every trace should be exported: {} of 20",
            after.len()
        );
        stop_ztrace(&mut ztrace)?;
        std::thread::sleep(Duration::from_millis(300));
        let spans = receiver.spans();
        let paths_of = |i: u8| {
            let mut p: Vec<String> = spans
                .iter()
                .filter(|s| s.trace_id_hex() == trace_id(i))
                .map(|s| s.attr_str("url.path").unwrap_or_default())
                .collect();
            p.sort();
            p
        };
        for i in 0..3 {
            ensure!(
                paths_of(i).is_empty(),
                "trace {i} was dropped by the errors policy; its late span must not be exported alone: {:?}",
                paths_of(i)
            );
        }
        ensure!(
            paths_of(9) == ["/fail", "/item/late-9"],
            "the kept trace and its late span: {:?}",
            paths_of(9)
        );
        ensure!(
            phase_spans(&receiver, "1-ok").is_empty(),
            "healthy traces before the switch-off are dropped"
        );
        let stderr = ztrace.stderr_text();
        ensure!(
            stderr.contains("1 traces kept, 13 dropped")
                && stderr.contains("switched off, 4 late spans followed their trace's decision"),
            "the exit summary should count 1 kept, 13 dropped and the 4 late spans after the switch-off"
        );
        Ok(())
    })();
    finish(ztrace, result)
}

/// A daemon that double-forks when told to (a line on its stdin): it forks a child, the child
/// calls `setsid`, forks the server and exits, so the kernel re-parents the server away from
/// the daemon. The server (two_tier.py's backend) writes its PID, then its port, to the
/// daemon's stdout. The daemon itself stays, as a service manager's main process would.
struct DoubleForked {
    daemon: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl DoubleForked {
    fn spawn() -> Result<Self> {
        let script = r#"
import os, sys, time
sys.stdin.readline()
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    sys.stdout.write("PID %d\n" % os.getpid())
    sys.stdout.flush()
    os.execvp("python3", ["python3", sys.argv[1], "backend"])
os.waitpid(child, 0)
while True:
    time.sleep(1)
"#;
        let mut daemon = Command::new("python3")
            .args(["-c", script])
            .arg(apps_dir().join("two_tier.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the double-forking daemon")?;
        Ok(DoubleForked {
            stdin: daemon.stdin.take().context("daemon stdin")?,
            stdout: BufReader::new(daemon.stdout.take().context("daemon stdout")?),
            daemon,
        })
    }

    /// Lets it double-fork; returns the server's PID and port.
    fn fork_server(&mut self) -> Result<(u32, u16)> {
        writeln!(self.stdin, "go")?;
        let mut line = |prefix: &str| -> Result<String> {
            let mut line = String::new();
            self.stdout.read_line(&mut line)?;
            line.strip_prefix(prefix)
                .map(|v| v.trim().to_string())
                .with_context(|| format!("the daemon wrote `{line}`, not `{prefix}…`"))
        };
        let pid: u32 = line("PID ")?.parse()?;
        let port: u16 = line("PORT ")?.parse()?;
        Ok((pid, port))
    }
}

/// With `targets` allowed and children followed: a daemon named by PID double-forks its server
/// while traced (the server is re-parented away from it, its intermediate parent gone); a
/// remote configuration that keeps the daemon and drops another process must keep the server
/// traced (its spans keep coming) and untrace only the other process.
#[test]
fn a_retarget_keeps_a_double_forked_descendant_of_a_kept_process() -> Result<()> {
    if !privileged_or_skip("a_retarget_keeps_a_double_forked_descendant_of_a_kept_process") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-f")?;
    let server = rt.block_on(OpampServer::start_on("127.0.0.1:0".parse()?, None, None))?;
    let mut daemon = DoubleForked::spawn()?;
    let (other, other_port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed_targets(
        &dir,
        &[daemon.daemon.id(), other.pid()],
        &receiver,
        &server,
        "targets",
        &[],
    )?;
    let mut grandchild = None;
    let result = (|| -> Result<()> {
        ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
        let (server_pid, port) = daemon.fork_server()?;
        grandchild = Some(server_pid);
        let parent = std::fs::read_to_string(format!("/proc/{server_pid}/stat"))?
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            .context("the server's parent")?;
        ensure!(
            parent != daemon.daemon.id(),
            "the server should have been re-parented away from the daemon"
        );
        requests(port, "before", 2)?;
        requests(other_port, "before", 2)?;
        let hash = server.offer(&format!("[target]\npids = [{}]\n", daemon.daemon.id()));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        ztrace.wait_stderr("retarget: untraced", Duration::from_secs(10))?;
        ensure!(
            ztrace
                .stderr_text()
                .contains("retarget: untraced 1 process(es) no longer selected"),
            "only the other process should have been untraced"
        );
        let traced = traced_set(ztrace.pid())?;
        ensure!(
            traced.contains(&daemon.daemon.id())
                && traced.contains(&server_pid)
                && !traced.contains(&other.pid()),
            "the kernel's traced set should hold the daemon {} and its server {}, not {}: {traced:?}",
            daemon.daemon.id(),
            server_pid,
            other.pid()
        );
        requests(port, "after", 3)?;
        requests(other_port, "after", 2)?;
        std::thread::sleep(Duration::from_millis(500));
        stop_ztrace(&mut ztrace)?;
        let _ = rt.block_on(receiver.wait_for_spans(9, Duration::from_secs(10)));
        for (phase, pid, want) in [
            ("before", server_pid, 2),
            ("before", other.pid(), 2),
            ("after", server_pid, 3),
            ("after", other.pid(), 0),
        ] {
            let got = phase_spans(&receiver, phase)
                .iter()
                .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
                .count();
            ensure!(
                got == want,
                "{phase} the change, process {pid}: {got} server spans, want {want}"
            );
        }
        Ok(())
    })();
    if let Some(pid) = grandchild {
        // SAFETY: plain kill(2) of the server this test started (not a child of the test).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = daemon.daemon.kill();
    let _ = daemon.daemon.wait();
    finish(ztrace, result)
}

/// Children the traced parent forks while ztrace is stopped (SIGSTOP), after it filled the ring
/// buffer with socket writes: the kernel marks them traced, but their fork records find the ring
/// full (the few the space left by the large records still takes get through; the rest are
/// lost). Once ztrace runs again it sees the loss, reconciles with /proc and learns the children
/// it was not told of; a remote configuration that drops the parent then untraces every child
/// too (on main the children unknown to userspace stayed traced).
const LOST_CHILDREN: usize = 64;

#[test]
fn children_whose_fork_records_were_lost_are_learnt_and_untraced_with_their_parent() -> Result<()> {
    if !privileged_or_skip("children_whose_fork_records_were_lost_are_learnt") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("opamp-e2e-l")?;
    let server = rt.block_on(OpampServer::start_on("127.0.0.1:0".parse()?, None, None))?;
    // The children do not exec: an exec record could reach ztrace once it runs again.
    let script = format!(
        r#"
import os, socket, sys, threading, time
sys.stdin.readline()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
def sink():
    c, _ = srv.accept()
    while c.recv(1 << 20):
        pass
threading.Thread(target=sink, daemon=True).start()
cl = socket.create_connection(srv.getsockname())
cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(300000):
    cl.send(b"x" * 64)
children = []
for _ in range({LOST_CHILDREN}):
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    children.append(str(child))
sys.stdout.write("CHILDREN %s\n" % " ".join(children))
sys.stdout.flush()
while True:
    time.sleep(1)
"#
    );
    let mut parent = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the flooding parent")?;
    let (other, _) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_managed_targets(
        &dir,
        &[parent.id(), other.pid()],
        &receiver,
        &server,
        "targets",
        &[],
    )?;
    let mut children: Vec<u32> = Vec::new();
    let result = (|| -> Result<()> {
        ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
        ztrace.signal(libc::SIGSTOP);
        let stopped = (|| -> Result<Vec<u32>> {
            writeln!(parent.stdin.as_mut().context("stdin")?, "go")?;
            let mut line = String::new();
            BufReader::new(parent.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
            line.strip_prefix("CHILDREN ")
                .with_context(|| format!("the parent wrote `{line}`"))?
                .split_whitespace()
                .map(|p| Ok(p.parse()?))
                .collect()
        })();
        ztrace.signal(libc::SIGCONT);
        children = stopped?;
        ensure!(children.len() == LOST_CHILDREN, "children: {children:?}");
        ztrace.wait_stderr("kernel events (ring buffer full)", Duration::from_secs(30))?;
        // The reconcile follows the loss within a second (asserted from the log at the end).
        std::thread::sleep(Duration::from_secs(3));
        let traced = traced_set(ztrace.pid())?;
        let missing: Vec<u32> = children
            .iter()
            .copied()
            .filter(|c| !traced.contains(c))
            .collect();
        ensure!(missing.is_empty(), "children not traced: {missing:?}");
        let hash = server.offer(&format!("[target]\npids = [{}]\n", other.pid()));
        let (status, error) = rt.block_on(server.wait_status(&hash, Duration::from_secs(30)))?;
        ensure!(
            status == RemoteConfigStatuses::Applied,
            "{status:?}: {error}"
        );
        ztrace.wait_stderr("retarget: untraced", Duration::from_secs(10))?;
        let traced = traced_set(ztrace.pid())?;
        let stayed: Vec<u32> = children
            .iter()
            .copied()
            .chain([parent.id()])
            .filter(|c| traced.contains(c))
            .collect();
        ensure!(
            stayed.is_empty() && traced.contains(&other.pid()),
            "the parent {} and its children should have left the traced set, {} stayed; still traced: {stayed:?}",
            parent.id(),
            other.pid()
        );
        let log = ztrace.stderr_text();
        ensure!(
            log.contains(&format!(
                "retarget: untraced {} process(es) no longer selected",
                LOST_CHILDREN + 1
            )),
            "the parent and every child should have been untraced"
        );
        let learnt = log
            .lines()
            .find_map(|l| {
                l.split_once("reconcile with /proc (kernel events were lost): ")?
                    .1
                    .split_once(' ')?
                    .0
                    .parse::<usize>()
                    .ok()
            })
            .context("no reconcile after the loss")?;
        ensure!(
            learnt > 0,
            "the reconcile should have learnt the children whose fork record was lost"
        );
        stop_ztrace(&mut ztrace)?;
        Ok(())
    })();
    for &pid in &children {
        // SAFETY: plain kill(2) of a child this test's parent process forked.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = parent.kill();
    let _ = parent.wait();
    finish(ztrace, result)
}
