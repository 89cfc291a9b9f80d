//! The userspace data path after the ring buffer, with no I/O of its own:
//! raw record → `decode` → `conntrack`/`assemble` (protocol parsing, exchanges) → `link` → spans.
//! The daemon feeds it live records; tests (and replay) feed it records they made.

use ztrace_abi::{conn, proc};

use crate::{
    assemble::{AssembleStats, Assembler},
    config::Privacy,
    decode::{Event, decode},
    link::{LinkStats, Linker},
    model::Span,
    signals::logs::{LogLine, Logs},
    signals::metrics::Metrics,
};

/// Connections idle this long are forgotten (their close was never seen).
const CONN_IDLE_NS: u64 = 300_000_000_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub assemble: AssembleStats,
    pub link: LinkStats,
}

/// A process-level change the daemon must act on (read /proc, stop when all are gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcChange {
    Forked {
        pid: u32,
        parent: u32,
    },
    Exited {
        pid: u32,
    },
    Execed {
        pid: u32,
    },
    /// A process that is not traced exec'd (reported only while selectors are set).
    ExecedUntraced {
        pid: u32,
    },
    /// A traced process sent or received a TLS handshake record on a socket (its OpenSSL may
    /// have been loaded since it was inspected: `runtime::tls_watch`).
    TlsHandshake {
        pid: u32,
    },
}

impl ProcChange {
    /// A traced process's socket bytes that start a TLS handshake record (content type 22,
    /// version 3.x): [`ProcChange::TlsHandshake`].
    pub fn from_data(ev: &ztrace_abi::DataEvent, payload: &[u8]) -> Option<Self> {
        matches!(payload, [0x16, 0x03, 0x00..=0x04, ..]).then_some(ProcChange::TlsHandshake {
            pid: ev.header.tgid,
        })
    }

    pub fn from_event(ev: &ztrace_abi::ProcEvent) -> Option<Self> {
        match ev.op {
            proc::FORK => Some(ProcChange::Forked {
                pid: ev.pid,
                parent: ev.other,
            }),
            proc::EXIT => Some(ProcChange::Exited { pid: ev.pid }),
            proc::EXEC => Some(ProcChange::Execed { pid: ev.pid }),
            proc::EXEC_UNTRACED => Some(ProcChange::ExecedUntraced { pid: ev.pid }),
            _ => None,
        }
    }
}

pub struct Pipeline {
    assembler: Assembler,
    linker: Linker,
    records: u64,
    decode_errors: u64,
    last_ns: u64,
    /// Aggregation of the metrics signal; None (no cost) unless enabled.
    pub metrics: Option<Metrics>,
    /// Log capture and correlation; None unless enabled.
    pub logs: Option<Logs>,
    /// `--log-payloads`: trace logging shows captured payload bytes (else only their length).
    log_payloads: bool,
}

impl Pipeline {
    /// `seed`: see [`Linker::new`].
    ///
    /// `ZTRACE_EVAL_NO_CONTENT_EVIDENCE=1` in the environment (for evaluation only, read here
    /// and nowhere else) turns the linker's content evidence off, to measure what it adds:
    /// see [`Linker::without_content_evidence`].
    pub fn new(mono_to_unix: i128, seed: Option<u64>) -> Self {
        let mut linker = Linker::new(mono_to_unix, 200_000, seed);
        if std::env::var_os("ZTRACE_EVAL_NO_CONTENT_EVIDENCE").is_some_and(|v| v == "1") {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn!(
                    "ZTRACE_EVAL_NO_CONTENT_EVIDENCE=1: content evidence off (evaluation only)"
                );
            });
            linker = linker.without_content_evidence();
        }
        Self {
            assembler: Assembler::new(65_536),
            linker,
            records: 0,
            decode_errors: 0,
            last_ns: 0,
            metrics: None,
            logs: None,
            log_payloads: false,
        }
    }

    /// Processes one raw ring-buffer record.
    pub fn on_record(&mut self, raw: &[u8], changes: &mut Vec<ProcChange>) {
        self.records += 1;
        let event = match decode(raw) {
            Ok(e) => e,
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors.is_power_of_two() {
                    log::warn!("undecodable record ({e}); {} so far", self.decode_errors);
                }
                return;
            }
        };
        if log::log_enabled!(log::Level::Trace) {
            match &event {
                Event::Data(ev, payload) | Event::Stdio(ev, payload) if !self.log_payloads => {
                    log::trace!(
                        "{ev:?} and {} payload bytes (shown with --log-payloads)",
                        payload.len()
                    );
                }
                _ => log::trace!("{event:?}"),
            }
        }
        // Every record moves the clock, log lines and process events included: in a replay it
        // is the only clock, and a stretch of them alone must still let time pass.
        let ts_ns = match &event {
            Event::Data(ev, _) | Event::Stdio(ev, _) => ev.header.ts_ns,
            Event::Conn(ev) => ev.header.ts_ns,
            Event::Proc(ev) => ev.header.ts_ns,
            Event::Net(ev) => ev.header.ts_ns,
        };
        self.last_ns = self.last_ns.max(ts_ns);
        match event {
            Event::Data(ev, payload) => {
                changes.extend(ProcChange::from_data(&ev, payload));
                self.assembler.on_data(&ev, payload, &mut self.linker);
                if let Some(m) = &mut self.metrics {
                    m.on_data(&ev);
                }
            }
            Event::Conn(ev) => {
                if let Some(m) = &mut self.metrics {
                    m.on_conn(&ev);
                }
                if ev.op == conn::CONNECT {
                    self.assembler.on_connect(&ev, &mut self.linker);
                } else if ev.op == conn::CLOSE {
                    self.assembler.on_close(
                        ev.header.tgid,
                        ev.sock_id,
                        ev.header.ts_ns,
                        &mut self.linker,
                    );
                }
            }
            Event::Proc(ev) => {
                if ev.op == proc::EXIT {
                    self.assembler
                        .on_exit(ev.pid, ev.header.ts_ns, &mut self.linker);
                    if let Some(m) = &mut self.metrics {
                        m.process_exited(ev.pid);
                    }
                    if let Some(l) = &mut self.logs {
                        l.process_exited(ev.pid);
                    }
                }
                changes.extend(ProcChange::from_event(&ev));
            }
            Event::Stdio(ev, payload) => {
                if let Some(l) = &mut self.logs {
                    let serving = self.linker.serving_span(ev.header.tgid, ev.header.tid);
                    l.on_write(&ev, payload, serving);
                }
            }
            Event::Net(ev) => {
                if let Some(m) = &mut self.metrics {
                    m.on_net(&ev);
                }
            }
        }
    }

    /// Export sanitised database query text (`db.query.text`); off by default.
    pub fn set_db_query_text(&mut self, on: bool) {
        self.assembler.redaction.db_query_text = on;
    }

    /// What sensitive data may leave (see [`Privacy`]); everything stays home by default.
    pub fn set_privacy(&mut self, privacy: &Privacy) {
        let r = &mut self.assembler.redaction;
        r.db_error_text = privacy.db_error_text;
        r.names.clone_from(&privacy.redact);
        self.log_payloads = privacy.log_payloads;
    }

    /// The most bytes all protocol parsers may hold together (see `assemble::Budget`).
    pub fn set_parser_budget(&mut self, bytes: usize) {
        self.assembler.budget.set_limit(bytes);
    }

    /// The latest time a record carried (monotonic): the recording's own clock in a replay.
    pub fn clock_ns(&self) -> u64 {
        self.last_ns
    }

    /// Releases settled spans. `now_ns` is monotonic time (the kernel's clock).
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let now_ns = now_ns.max(self.last_ns);
        self.assembler
            .expire(now_ns.saturating_sub(CONN_IDLE_NS), &mut self.linker);
        let from = out.len();
        self.linker.poll(now_ns, out);
        self.released(&out[from..]);
        if let Some(l) = &mut self.logs {
            l.expire(now_ns);
        }
    }

    /// Spans just released feed the metrics and stamp held log lines.
    fn released(&mut self, spans: &[Span]) {
        if let Some(m) = &mut self.metrics {
            spans.iter().for_each(|s| m.on_span(s));
        }
        if let Some(l) = &mut self.logs {
            l.on_released(spans);
        }
    }

    /// Log lines ready to export (see [`Logs`]).
    pub fn take_logs(&mut self, out: &mut Vec<LogLine>) {
        if let Some(l) = &mut self.logs {
            l.take(out);
        }
    }

    /// Shutdown: everything still held is finished and released.
    pub fn drain(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let now_ns = now_ns.max(self.last_ns);
        for key in self.assembler.conns.all_keys() {
            self.assembler
                .on_close(key.tgid, key.sock_id, now_ns, &mut self.linker);
        }
        let from = out.len();
        self.linker.drain(now_ns, out);
        self.released(&out[from..]);
        if let Some(l) = &mut self.logs {
            l.drain();
        }
    }

    /// Cross-host links (linker rule 7): see [`crate::link::crosshost`].
    pub fn enable_crosshost(&mut self, config: crate::link::crosshost::CrossHostConfig) {
        self.linker.enable_crosshost(config);
    }

    /// What leaves for other agents (cross-host links).
    pub fn take_peer_io(
        &mut self,
        sends: &mut Vec<crate::link::crosshost::ClientSend>,
        lookups: &mut Vec<crate::link::crosshost::Lookup>,
    ) {
        self.linker.take_peer_io(sends, lookups);
    }

    /// Another agent's answer (cross-host links).
    pub fn peer_answer(
        &mut self,
        h: crate::link::Handle,
        outcome: crate::link::crosshost::Outcome,
    ) {
        self.linker.peer_answer(h, outcome);
    }

    pub fn crosshost_stats(&self) -> Option<crate::link::crosshost::CrossHostStats> {
        self.linker.crosshost_stats()
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            records: self.records,
            decode_errors: self.decode_errors,
            assemble: self.assembler.stats(),
            link: self.linker.stats,
        }
    }
}

/// Socket data records as the probes write them, for tests of the pipeline and of replay.
#[cfg(test)]
pub(crate) mod testdata {
    use ztrace_abi::{AF_INET, DataEvent, EventHeader, SockTuple, direction, kind};

    use crate::decode::encode_data;

    /// One side of a loopback TCP connection: the process, thread, socket and ports.
    pub struct Io {
        pub pid: u32,
        pub tid: u32,
        pub sock: u64,
        pub local: u16,
        pub remote: u16,
    }

    /// A server's side of one keep-alive connection (process 7 on port 8080, a client on port
    /// 40000): for each (request time, request, response time, response), the request read and
    /// the response written, with their TCP sequence numbers running on from 1.
    pub fn conversation(
        exchanges: impl IntoIterator<Item = (u64, Vec<u8>, u64, Vec<u8>)>,
    ) -> Vec<Vec<u8>> {
        let io = Io {
            pid: 7,
            tid: 7,
            sock: 0xabc,
            local: 8080,
            remote: 40_000,
        };
        let (mut rx, mut tx) = (1u32, 1u32);
        let mut out = Vec::new();
        for (req_ts, req, resp_ts, resp) in exchanges {
            out.push(record(&io, false, req_ts, rx, &req));
            out.push(record(&io, true, resp_ts, tx, &resp));
            rx = rx.wrapping_add(req.len() as u32);
            tx = tx.wrapping_add(resp.len() as u32);
        }
        out
    }

    /// `bytes` read (`egress` false) or written on `io` at `ts`, its first byte at TCP `seq`.
    pub fn record(io: &Io, egress: bool, ts: u64, seq: u32, bytes: &[u8]) -> Vec<u8> {
        let mut tuple = SockTuple {
            family: AF_INET,
            protocol: 6,
            local_port: io.local,
            remote_port: io.remote,
            ..Default::default()
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                tgid: io.pid,
                tid: io.tid,
                _pad: 0,
                ts_ns: ts,
            },
            sock_id: io.sock,
            enter_ns: ts - 5,
            bytes: bytes.len() as u64,
            tuple,
            fd: 3,
            seq,
            direction: if egress {
                direction::EGRESS
            } else {
                direction::INGRESS
            },
            has_seq: 1,
            ..Default::default()
        };
        encode_data(&ev, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{Io, record};
    use super::*;
    use crate::{
        link::LINK_GRACE_NS,
        model::{SpanKind, SpanStatus},
    };

    fn run(records: &[Vec<u8>]) -> (Vec<Span>, PipelineStats) {
        let mut p = Pipeline::new(0, None);
        let mut changes = Vec::new();
        for r in records {
            p.on_record(r, &mut changes);
        }
        let mut out = Vec::new();
        p.poll(10_000 + LINK_GRACE_NS, &mut out);
        (out, p.stats())
    }

    const FRONT_IN: Io = Io {
        pid: 1,
        tid: 11,
        sock: 0xA,
        local: 8000,
        remote: 5000,
    };
    const FRONT_OUT: Io = Io {
        pid: 1,
        tid: 11,
        sock: 0xB,
        local: 6000,
        remote: 9000,
    };
    const BACK_IN: Io = Io {
        pid: 2,
        tid: 21,
        sock: 0xC,
        local: 9000,
        remote: 6000,
    };

    fn two_tier(backend_read_first: bool) -> Vec<Vec<u8>> {
        let call = b"GET /b HTTP/1.1\r\nHost: backend\r\n\r\n";
        let mut r = vec![
            record(&FRONT_IN, false, 100, 1000, b"GET /a?q=1 HTTP/1.1\r\nHo"),
            record(
                &FRONT_IN,
                false,
                110,
                1023,
                b"st: front\r\nUser-Agent: t\r\n\r\n",
            ),
        ];
        let client_write = record(&FRONT_OUT, true, 200, 5000, call);
        let server_read = record(&BACK_IN, false, 210, 5000, call);
        if backend_read_first {
            r.push(server_read);
            r.push(client_write);
        } else {
            r.push(client_write);
            r.push(server_read);
        }
        r.push(record(
            &BACK_IN,
            true,
            300,
            7000,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ));
        r.push(record(
            &FRONT_OUT,
            false,
            310,
            7000,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ));
        r.push(record(
            &FRONT_IN,
            true,
            400,
            9000,
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n",
        ));
        r.push(record(&FRONT_IN, true, 410, 9050, b"2\r\nno\r\n0\r\n\r\n"));
        r
    }

    #[test]
    fn synthetic_two_tier_exchange_is_assembled_and_linked() {
        for backend_read_first in [false, true] {
            let (spans, stats) = run(&two_tier(backend_read_first));
            assert_eq!(spans.len(), 3, "{spans:#?}");
            let find = |pid, kind| {
                spans
                    .iter()
                    .find(|s| s.pid == pid && s.kind == kind)
                    .unwrap()
            };
            let front = find(1, SpanKind::Server);
            let call = find(1, SpanKind::Client);
            let back = find(2, SpanKind::Server);
            assert_eq!(front.http().unwrap().target, "/a?q=1");
            assert_eq!(front.http().unwrap().host.as_deref(), Some("front"));
            assert_eq!(front.http().unwrap().status, Some(500));
            assert_eq!(front.status, SpanStatus::Error("500".into()));
            // Server span: from the read that completed... the first request byte's read exit,
            // to the entry of the write that sent the last response byte.
            assert_eq!((front.start_unix_ns, front.end_unix_ns), (100, 405));
            assert_eq!((call.start_unix_ns, call.end_unix_ns), (195, 310));
            assert_eq!((back.start_unix_ns, back.end_unix_ns), (210, 295));
            assert_eq!(call.parent_span_id, Some(front.span_id));
            assert_eq!(back.parent_span_id, Some(call.span_id));
            assert!(spans.iter().all(|s| s.trace_id == front.trace_id));
            assert_eq!(call.http().unwrap().status, Some(200));
            assert_eq!(back.http().unwrap().response_body_size, Some(2));
            assert_eq!(stats.link.cross_process_links, 1);
            assert_eq!(stats.link.thread_links, 1);
        }
    }

    #[test]
    fn pipelined_requests_pair_in_order_and_garbage_is_ignored() {
        let conn = Io {
            pid: 1,
            tid: 1,
            sock: 1,
            local: 80,
            remote: 4000,
        };
        let junk = Io {
            pid: 1,
            tid: 1,
            sock: 2,
            local: 81,
            remote: 4001,
        };
        let records = vec![
            record(&junk, false, 50, 0, &[0x16, 0x03, 0x01, 0x00, 0xff]),
            record(&conn, false, 100, 0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
            record(&junk, false, 150, 0, b"\x00\x01garbage\r\n\r\n"),
            record(&conn, true, 200, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n"),
        ];
        let (mut spans, stats) = run(&records);
        spans.sort_by_key(|s| s.http().unwrap().target.clone());
        assert_eq!(spans.len(), 2);
        assert_eq!(
            (
                spans[0].http().unwrap().target.as_str(),
                spans[0].http().unwrap().status
            ),
            ("/1", Some(200))
        );
        assert_eq!(
            (
                spans[1].http().unwrap().target.as_str(),
                spans[1].http().unwrap().status
            ),
            ("/2", Some(404))
        );
        // A 404 is not a server error.
        assert_eq!(spans[1].status, SpanStatus::Unset);
        assert_eq!(stats.assemble.http_connections, 1);
    }

    #[test]
    fn exchange_cut_by_close_is_reported_as_error() {
        let conn = Io {
            pid: 1,
            tid: 1,
            sock: 1,
            local: 80,
            remote: 4000,
        };
        let mut p = Pipeline::new(0, None);
        let mut changes = Vec::new();
        p.on_record(
            &record(&conn, false, 100, 0, b"GET /slow HTTP/1.1\r\n\r\n"),
            &mut changes,
        );
        let mut out = Vec::new();
        p.drain(500, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].status, SpanStatus::Error(_)));
        assert_eq!(out[0].end_unix_ns, 500);
    }

    #[test]
    fn undecodable_records_are_counted_not_fatal() {
        let mut p = Pipeline::new(0, None);
        let mut changes = Vec::new();
        p.on_record(&[1, 2, 3], &mut changes);
        p.on_record(&[0u8; 200], &mut changes);
        assert_eq!(p.stats().decode_errors, 2);
    }

    /// Through the whole pipeline: a backend thread logs while serving a request whose client
    /// span (another process) reaches the linker only after the backend's request did. The line
    /// must carry the trace the server span is finally exported with, not its provisional one.
    #[test]
    fn pipeline_stamps_lines_with_the_final_trace_of_the_served_span() {
        use crate::decode::as_bytes;
        use crate::signals::logs::LogConfig;
        use crate::testkit::stdio_write as write;

        let sock = |pid: u32,
                    tid: u32,
                    sock: u64,
                    (local, remote): (u16, u16),
                    egress: bool,
                    ts: u64,
                    seq: u32,
                    bytes: &[u8]| {
            let io = Io {
                pid,
                tid,
                sock,
                local,
                remote,
            };
            record(&io, egress, ts, seq, bytes)
        };
        let stdio = |tid: u32, ts: u64, fd: i32, text: &[u8]| {
            let mut ev = write(2, tid, fd, ts, text.len() as u64);
            ev.cap_len = text.len() as u32;
            let mut raw = as_bytes(&ev).to_vec();
            raw.extend_from_slice(text);
            raw
        };
        let req = b"GET /b HTTP/1.1\r\nHost: backend\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let records = vec![
            stdio(21, 50, 1, b"before any request\n"),
            sock(2, 21, 0xC, (9000, 6000), false, 100, 5000, req),
            stdio(21, 110, 2, b"serving /b\n"),
            stdio(22, 115, 1, b"other thread\n"),
            // The client's write reaches the ring after the server's read.
            sock(1, 11, 0xB, (6000, 9000), true, 90, 5000, req),
            sock(2, 21, 0xC, (9000, 6000), true, 200, 7000, resp),
            stdio(21, 210, 1, b"after the response\n"),
            sock(1, 11, 0xB, (6000, 9000), false, 220, 7000, resp),
        ];
        let mut p = Pipeline::new(0, Some(1));
        p.logs = Some(Logs::new(LogConfig::default()));
        let mut changes = Vec::new();
        for r in &records {
            p.on_record(r, &mut changes);
        }
        let mut spans = Vec::new();
        p.poll(1_000 + LINK_GRACE_NS, &mut spans);
        let mut lines = Vec::new();
        p.take_logs(&mut lines);
        let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        let client = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
        assert_eq!(server.parent_span_id, Some(client.span_id));
        let find = |body: &str| lines.iter().find(|l| l.body == body).unwrap();
        assert_eq!(
            find("serving /b").span,
            Some((client.trace_id, server.span_id))
        );
        assert_eq!(find("serving /b").fd, 2);
        for uncorrelated in ["before any request", "other thread", "after the response"] {
            assert_eq!(find(uncorrelated).span, None, "{uncorrelated}");
        }
        assert_eq!(lines.len(), 4);
        // Every record moved the clock, the log line last written included.
        p.on_record(&stdio(21, 5_000, 1, b"later\n"), &mut changes);
        assert_eq!(p.clock_ns(), 5_000);
    }
}
