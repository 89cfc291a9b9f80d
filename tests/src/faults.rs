//! The fault-injection evaluation of tail sampling and anomaly detection (`cargo xtask eval
//! --faults`, as root): tests/apps/two_tier.py's frontend → backend under paced steady load, one
//! route, every request with a unique id; then, for a while each, a few percent of requests
//! answer 500 (error fault), and the route becomes ten times slower (latency fault), with steady
//! load between and after. ztrace runs with the policies a user would start with — errors,
//! slower than 100 ms, 1% of the rest, anomalies — and exports to the in-process receiver.
//!
//! Measured against the known truth (which request was healthy, an error or slow):
//! detection delay of each fault's start and end, false alarms per hour of steady load, the
//! fraction of error and slow traces kept (and kept whole: all three spans), the fraction of
//! healthy traces kept (outside and inside anomaly alarms), and the export volume against head
//! sampling at the same volume. It reports; it asserts nothing (tests/e2e_sampling.rs does).

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::{
    harness::{curl, runtime_with_receiver, spawn_service, spawn_ztrace},
    receiver::ReceivedSpan,
    signals::ReceivedLog,
};

#[derive(Clone, Copy, Debug)]
pub struct FaultConfig {
    /// Length of each steady phase (three) and of each fault (two).
    pub steady: Duration,
    pub fault: Duration,
    /// Target requests per second, all clients together.
    pub rps: u64,
    pub clients: usize,
    /// Anomaly window.
    pub window: Duration,
    /// `[anomaly] start_windows` (None: ztrace's default).
    pub start_windows: Option<u32>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            steady: Duration::from_secs(90),
            fault: Duration::from_secs(30),
            rps: 80,
            clients: 4,
            window: Duration::from_secs(5),
            start_windows: None,
        }
    }
}

/// The policies and detector settings evaluated (the README's "what to set first").
pub fn config_text(c: &FaultConfig) -> String {
    format!(
        r#"[tail_sampling]
decision_wait = "1s"

[[tail_sampling.policies]]
name = "errors"
type = "status_code"
status_code = {{ status_codes = ["ERROR"] }}

[[tail_sampling.policies]]
name = "slow"
type = "latency"
latency = {{ threshold_ms = 100 }}

[[tail_sampling.policies]]
name = "healthy"
type = "probabilistic"
probabilistic = {{ sampling_percentage = 1 }}

[[tail_sampling.policies]]
name = "anomalies"
type = "anomaly"

[anomaly]
window = "{}ms"
{}"#,
        c.window.as_millis(),
        c.start_windows
            .map_or(String::new(), |n| format!("start_windows = {n}\n"))
    )
}

const STEADY: u8 = 0;
const ERRORS: u8 = 1;
const SLOW: u8 = 2;
/// During the error fault, one request in this many fails (5%).
const FAIL_EVERY: u64 = 20;
const HEALTHY_MS: u64 = 10;
const SLOW_MS: u64 = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Healthy,
    Error,
    Slow,
}

struct Phase {
    mode: u8,
    start: u64,
    end: u64,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs the evaluation; returns the report as Markdown.
pub fn run(c: FaultConfig) -> Result<String> {
    let path = crate::temp::TempFile::new("faults", "ztrace.toml", config_text(&c))?;
    let (rt, receiver) = runtime_with_receiver()?;
    let (backend, backend_port) = spawn_service(&["backend"])?;
    let (frontend, port) = spawn_service(&["frontend", &backend_port.to_string()])?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--config".into(),
        path.display().to_string(),
    ])?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;

    let mode = Arc::new(AtomicU8::new(STEADY));
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let sent: Arc<Mutex<HashMap<u64, (Class, u64)>>> = Arc::default();
    let per_client = (c.rps as f64 / c.clients as f64).max(1.0);
    let clients: Vec<_> = (0..c.clients)
        .map(|_| {
            let (mode, stop, next_id, sent) = (
                Arc::clone(&mode),
                Arc::clone(&stop),
                Arc::clone(&next_id),
                Arc::clone(&sent),
            );
            thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let m = mode.load(Ordering::Relaxed);
                    let mut urls = Vec::new();
                    let mut batch = Vec::new();
                    for _ in 0..10 {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let (ms, class, fail) = match m {
                            ERRORS if id.is_multiple_of(FAIL_EVERY) => {
                                (HEALTHY_MS, Class::Error, true)
                            }
                            SLOW => (SLOW_MS, Class::Slow, false),
                            _ => (HEALTHY_MS, Class::Healthy, false),
                        };
                        urls.push(format!(
                            "http://127.0.0.1:{port}/api/slow/{ms}/{id}{}",
                            if fail { "?fail=1" } else { "" }
                        ));
                        batch.push((id, class));
                    }
                    let at = unix_ns();
                    curl(&urls)?;
                    if let Ok(mut s) = sent.lock() {
                        s.extend(batch.into_iter().map(|(id, class)| (id, (class, at))));
                    }
                    let pace = Duration::from_secs_f64(10.0 / per_client);
                    if let Some(rest) = pace.checked_sub(t0.elapsed()) {
                        thread::sleep(rest);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut phases = Vec::new();
    for (m, d) in [
        (STEADY, c.steady),
        (ERRORS, c.fault),
        (STEADY, c.steady),
        (SLOW, c.fault),
        (STEADY, c.steady),
    ] {
        mode.store(m, Ordering::Relaxed);
        let start = unix_ns();
        eprintln!("ztrace-faults: phase {} for {d:?}", phase_name(m));
        thread::sleep(d);
        phases.push(Phase {
            mode: m,
            start,
            end: unix_ns(),
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    thread::sleep(Duration::from_secs(3));
    ztrace.signal(libc::SIGINT);
    if ztrace.wait_exit(Duration::from_secs(60)) != Some(0) {
        bail!("ztrace failed:\n{}", ztrace.stderr_text());
    }
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(5)));
    let logs = receiver.signals().all_logs();
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let summary = ztrace
        .stderr_text()
        .lines()
        .filter(|l| l.contains("summary (tail sampling)") || l.contains("summary (anomalies)"))
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    report(&c, &phases, &sent, &spans, &logs, frontend.pid(), &summary)
}

fn phase_name(m: u8) -> &'static str {
    match m {
        ERRORS => "error fault",
        SLOW => "latency fault",
        _ => "steady",
    }
}

/// The request id in a frontend SERVER span's path.
fn request_id(s: &ReceivedSpan) -> Option<u64> {
    let path = s.attr_str("url.path")?;
    path.rsplit('/').next()?.parse().ok()
}

fn report(
    c: &FaultConfig,
    phases: &[Phase],
    sent: &HashMap<u64, (Class, u64)>,
    spans: &[ReceivedSpan],
    logs: &[ReceivedLog],
    front_pid: u32,
    summary: &[String],
) -> Result<String> {
    let mut by_trace: HashMap<String, usize> = HashMap::new();
    for s in spans {
        *by_trace.entry(s.trace_id_hex()).or_default() += 1;
    }
    // Request id → (its trace was exported, whole: three spans).
    let mut kept: HashMap<u64, bool> = HashMap::new();
    for s in spans {
        if s.resource_int("process.pid") == Some(i64::from(front_pid))
            && s.span.kind == SpanKind::Server as i32
            && let Some(id) = request_id(s)
        {
            kept.insert(id, by_trace.get(&s.trace_id_hex()) == Some(&3));
        }
    }
    // Anomaly records: (start?, signal, unix ns).
    let events: Vec<(bool, String, String, u64)> = logs
        .iter()
        .filter(|l| l.record.event_name == "ztrace.anomaly")
        .map(|l| {
            (
                l.attr_str("ztrace.anomaly.state").as_deref() == Some("start"),
                l.attr_str("ztrace.anomaly.signal").unwrap_or_default(),
                format!(
                    "{} {}",
                    l.attr_str("service.name").unwrap_or_default(),
                    l.attr_str("ztrace.anomaly.operation").unwrap_or_default()
                ),
                l.record.time_unix_nano,
            )
        })
        .collect();
    let grace = 3 * c.window.as_nanos() as u64;
    let mut md = String::new();
    writeln!(
        md,
        "## Tail sampling and anomaly detection under injected faults\n\n\
         two_tier.py frontend → backend, one route, {} rps target from {} clients; steady {:?} ×3, \
         faults {:?} each: 5% of requests answer 500, then the route {} ms → {} ms. Anomaly window {:?}.\n",
        c.rps, c.clients, c.steady, c.fault, HEALTHY_MS, SLOW_MS, c.window
    )?;
    writeln!(
        md,
        "| fault | signal | detected after start | ended after fault end |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    let mut explained = vec![false; events.len()];
    for p in phases.iter().filter(|p| p.mode != STEADY) {
        let signal = if p.mode == ERRORS {
            "error.rate"
        } else {
            "latency.p95"
        };
        let start = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.0 && e.1 == signal && e.3 >= p.start && e.3 <= p.end + grace);
        let (detected, ended) = match start {
            Some((i, e)) => {
                explained[i] = true;
                let end = events
                    .iter()
                    .enumerate()
                    .find(|(_, x)| !x.0 && x.1 == e.1 && x.2 == e.2 && x.3 >= e.3);
                if let Some((j, _)) = end {
                    explained[j] = true;
                }
                (
                    format!("{:.1} s", (e.3 - p.start) as f64 / 1e9),
                    end.map_or("never".to_string(), |(_, x)| {
                        format!("{:.1} s", (x.3 as f64 - p.end as f64) / 1e9)
                    }),
                )
            }
            None => ("not detected".into(), "-".into()),
        };
        writeln!(
            md,
            "| {} | {signal} | {detected} | {ended} |",
            phase_name(p.mode)
        )?;
    }
    // Other starts during or near a fault (the other signal of the same fault, e.g. a slow route
    // also raising its error rate) are not false alarms; starts in steady load are.
    let near_fault = |t: u64| {
        phases
            .iter()
            .any(|p| p.mode != STEADY && t >= p.start && t <= p.end + grace)
    };
    let false_alarms: Vec<&(bool, String, String, u64)> = events
        .iter()
        .enumerate()
        .filter(|(i, e)| e.0 && !explained[*i] && !near_fault(e.3))
        .map(|(_, e)| e)
        .collect();
    let steady_s: f64 = phases
        .iter()
        .filter(|p| p.mode == STEADY)
        .map(|p| (p.end - p.start) as f64 / 1e9)
        .sum();
    let count_where = |class: Class, whole: bool, when: &dyn Fn(u64) -> bool| {
        let all = sent
            .values()
            .filter(|(c, at)| *c == class && when(*at))
            .count();
        let k = sent
            .iter()
            .filter(|(id, (c, at))| {
                *c == class && when(*at) && kept.get(id).is_some_and(|w| !whole || *w)
            })
            .count();
        (k, all)
    };
    let count = |class: Class, whole: bool| count_where(class, whole, &|_| true);
    let frac = |(k, n): (usize, usize)| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.4} ({k}/{n})", k as f64 / n as f64)
        }
    };
    // Healthy requests sent while no alarm was on (by the alarms' own start/end times).
    let mut alarms: Vec<(u64, u64)> = Vec::new();
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e.0) {
        let end = events[i..]
            .iter()
            .find(|x| !x.0 && x.1 == e.1 && x.2 == e.2)
            .map_or(u64::MAX, |x| x.3);
        alarms.push((e.3, end));
    }
    // A batch's requests go out within a few seconds of its send time: a margin of a window
    // on each side of an alarm (and the decision wait after it) keeps the split honest.
    let margin = c.window.as_nanos() as u64 + 1_000_000_000;
    let in_alarm = |t: u64| {
        alarms
            .iter()
            .any(|(s, e)| t + margin >= *s && t <= e.saturating_add(margin))
    };
    writeln!(md, "\n| measure | value |\n|---|---|")?;
    writeln!(
        md,
        "| error traces kept | {} |",
        frac(count(Class::Error, false))
    )?;
    writeln!(
        md,
        "| error traces kept whole (3 spans) | {} |",
        frac(count(Class::Error, true))
    )?;
    writeln!(
        md,
        "| slow traces kept | {} |",
        frac(count(Class::Slow, false))
    )?;
    writeln!(
        md,
        "| slow traces kept whole (3 spans) | {} |",
        frac(count(Class::Slow, true))
    )?;
    writeln!(
        md,
        "| healthy traces kept outside anomaly alarms (configured 1%) | {} |",
        frac(count_where(Class::Healthy, false, &|t| !in_alarm(t)))
    )?;
    writeln!(
        md,
        "| healthy traces kept during alarms (the anomaly policy keeps the alarmed operation) | {} |",
        frac(count_where(Class::Healthy, false, &in_alarm))
    )?;
    writeln!(
        md,
        "| false alarms | {} in {:.0} s of steady load ({:.1} per hour) |",
        false_alarms.len(),
        steady_s,
        false_alarms.len() as f64 * 3600.0 / steady_s.max(1.0)
    )?;
    let requests = sent.len();
    let kept_traces = kept.len();
    let ratio = kept_traces as f64 / requests.max(1) as f64;
    writeln!(
        md,
        "| export volume | {} spans of {} produced ({:.2}%), {} traces of {} requests |",
        spans.len(),
        3 * requests,
        100.0 * spans.len() as f64 / (3 * requests).max(1) as f64,
        kept_traces,
        requests
    )?;
    writeln!(
        md,
        "| head sampling at the same volume (ratio {:.4}) | keeps ≈ {:.2}% of error and slow traces |",
        ratio,
        100.0 * ratio
    )?;
    writeln!(md, "\nAnomaly records:\n")?;
    for e in &events {
        writeln!(
            md,
            "- {} {} {} at +{:.1} s",
            if e.0 { "start" } else { "end" },
            e.2,
            e.1,
            (e.3.saturating_sub(phases.first().map_or(0, |p| p.start))) as f64 / 1e9
        )?;
    }
    writeln!(md, "\nAlarm intervals: {}", alarms.len())?;
    for l in summary {
        writeln!(md, "\n    {}", l.split("] ").nth(1).unwrap_or(l))?;
    }
    writeln!(md, "\nConfiguration:\n\n```toml\n{}```", config_text(c))?;
    if sent.is_empty() {
        bail!("no request was sent");
    }
    Ok(md)
}
