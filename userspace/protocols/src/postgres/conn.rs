//! One connection's PostgreSQL parser ([`PgConn`]): feeds each direction to its side and says
//! what a query and its result mean as an exchange.

use crate::{
    dbconn::DbConn,
    exchange::DbSystem,
    parser::{Opener, Protocol, Step, Update},
    sql::request_step,
};

use super::*;

/// PostgreSQL parser state for one connection, both directions.
pub type PgConn = DbConn<Side>;

impl PgConn {
    /// The connection switched to SSL/GSS encryption: no more events.
    pub fn is_encrypted(&self) -> bool {
        self.stopped()
    }
}

impl Protocol for PgConn {
    fn detect(payload: &[u8]) -> Option<Opener> {
        (looks_like_startup(payload) || looks_like_query(payload)).then_some(Opener::Requester)
    }

    fn step(&self, event: PgEvent) -> Option<Step> {
        Some(match event {
            PgEvent::Query { start, query, .. } => {
                request_step(DbSystem::Postgresql, start, &query, self.database())
            }
            PgEvent::Result {
                end, error, rows, ..
            } => Step::End {
                key: None,
                end,
                update: Update::Db { error, rows },
            },
            PgEvent::Desync { dir, .. } => Step::Desync(dir),
            PgEvent::Startup { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dir;
    use crate::testutil::{self, Rng, split};
    use Dir::{Request as Q, Response as R};
    use PgEvent as E;

    /// Events as a trace: `Q0-20:text` simple query, `P0-50:text` extended batch,
    /// `R0-30/5` result with 5 rows (`!42P01` on error, `#TAG` its tag), `U<user>@<db>`
    /// startup, `Dq@5`/`Dr@5` desyncs.
    fn show(ev: &[E]) -> String {
        let s = ev.iter().map(|e| match e {
            E::Query {
                start,
                end,
                query,
                prepared,
            } => format!("{}{start}-{end}:{query}", ["Q", "P"][*prepared as usize]),
            E::Result {
                start,
                end,
                error,
                rows,
                command_tag,
            } => {
                let mut r = format!("R{start}-{end}");
                if let Some(n) = rows {
                    r += &format!("/{n}");
                }
                if let Some((code, _)) = error {
                    r += &format!("!{code}");
                }
                if let Some(tag) = command_tag {
                    r += &format!("#{}", tag.replace(' ', "_"));
                }
                r
            }
            E::Startup { user, database } => format!(
                "U{}@{}",
                user.as_deref().unwrap_or("-"),
                database.as_deref().unwrap_or("-")
            ),
            E::Desync { dir, offset } => format!("D{}@{offset}", ["q", "r"][*dir as usize]),
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut PgConn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut PgConn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32 + 4).to_be_bytes();
        [&[typ][..], &len, body].concat()
    }
    fn cstrs(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| [p.as_bytes(), b"\0"].concat())
            .collect()
    }
    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cstrs(&[sql]))
    }
    fn parse(name: &str, sql: &str) -> Vec<u8> {
        msg(b'P', &[cstrs(&[name, sql]), vec![0, 0]].concat())
    }
    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        msg(b'B', &[cstrs(&[portal, stmt]), vec![0; 6]].concat())
    }
    fn execute(portal: &str) -> Vec<u8> {
        msg(b'E', &[cstrs(&[portal]), vec![0; 4]].concat())
    }
    fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }
    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }
    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cstrs(&[tag]))
    }
    fn error(code: &str, text: &str) -> Vec<u8> {
        let body = [
            b"SERROR\0C",
            code.as_bytes(),
            b"\0M",
            text.as_bytes(),
            b"\0\0",
        ]
        .concat();
        msg(b'E', &body)
    }
    fn data_row(size: usize) -> Vec<u8> {
        let body = [&[0, 1][..], &(size as u32).to_be_bytes(), &vec![b'x'; size]].concat();
        msg(b'D', &body)
    }
    fn startup(params: &[&str]) -> Vec<u8> {
        let body = [&0x0003_0000u32.to_be_bytes()[..], &cstrs(params), b"\0"].concat();
        [&(body.len() as u32 + 4).to_be_bytes()[..], &body].concat()
    }
    const SSL: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    /// The server's answer to a query returning `n` rows.
    fn rows(n: usize) -> Vec<u8> {
        let mut v = msg(
            b'T',
            &[
                0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        for _ in 0..n {
            v.extend(data_row(3));
        }
        [v, complete(&format!("SELECT {n}")), ready()].concat()
    }

    fn auth_ok() -> Vec<u8> {
        let params = msg(b'S', &cstrs(&["server_version", "16.2"]));
        let key = msg(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]);
        [msg(b'R', &[0, 0, 0, 0]), params, key, ready()].concat()
    }

    #[test]
    fn startup_then_simple_queries() {
        let mut c = PgConn::new();
        assert_eq!(push(&mut c, Q, SSL) + &push(&mut c, R, b"N"), "");
        let su = startup(&["user", "alice", "database", "shop", "application_name", "x"]);
        assert_eq!(push(&mut c, Q, &su), "Ualice@shop");
        assert_eq!((c.user(), c.database()), (Some("alice"), Some("shop")));
        assert_eq!(
            push(&mut c, R, &auth_ok()),
            "",
            "authentication answers nothing"
        );
        let (q1, r1) = (query("SELECT * FROM t"), rows(2)); // 21 bytes, 85 bytes
        let start = (8 + su.len()) as u64;
        let end = start + q1.len() as u64;
        assert_eq!(
            push(&mut c, Q, &q1),
            format!("Q{start}-{end}:SELECT * FROM t")
        );
        let at = 1 + auth_ok().len() as u64;
        let want = format!("R{at}-{}/2#SELECT_2", at + r1.len() as u64);
        assert_eq!(push(&mut c, R, &r1), want);
        // An error, and a multi-statement query with several tags.
        push(&mut c, Q, &query("SELECT * FROM nope"));
        let e = [error("42P01", "relation \"nope\" does not exist"), ready()].concat();
        let mut out = Vec::new();
        c.push(R, &e, e.len() as u64, &mut out);
        let E::Result { error, rows, .. } = &out[0] else {
            panic!("{out:?}")
        };
        let want = ("42P01".into(), "relation \"nope\" does not exist".into());
        assert_eq!((error, rows), (&Some(want), &None));
        push(
            &mut c,
            Q,
            &query("BEGIN; UPDATE a SET x = 1; INSERT INTO b VALUES (1); COMMIT"),
        );
        let tags = ["BEGIN", "UPDATE 3", "INSERT 0 1", "COMMIT"]
            .map(complete)
            .concat();
        let ev = push(&mut c, R, &[tags, ready()].concat());
        assert!(ev.ends_with("/4#COMMIT"), "{ev}");
        assert_eq!(c.pending_queries(), 0);
    }

    #[test]
    fn encryption_stops_parsing() {
        let mut c = PgConn::new();
        assert!(looks_like_startup(SSL));
        assert_eq!(push(&mut c, Q, SSL) + &push(&mut c, R, b"S"), "");
        assert!(c.is_encrypted());
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(push(&mut c, Q, hello) + &push(&mut c, R, hello), "");
        let mut c = PgConn::new(); // a GSS request refused, then an SSL request accepted
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert!(looks_like_startup(&gss));
        push(&mut c, Q, &gss);
        assert_eq!(push(&mut c, R, b"N") + &push(&mut c, Q, SSL), "");
        assert!(!c.is_encrypted());
        assert_eq!(push(&mut c, R, b"S"), "");
        assert!(c.is_encrypted());
    }

    #[test]
    fn extended_protocol() {
        let mut c = PgConn::new();
        // Unnamed statement: Parse/Bind/Describe/Execute/Sync is one exchange.
        let describe = msg(b'D', b"P\0");
        let b1 = [
            parse("", "SELECT $1"),
            bind("", ""),
            describe,
            execute(""),
            sync(),
        ]
        .concat();
        let n1 = b1.len() as u64;
        assert_eq!(push(&mut c, Q, &b1), format!("P0-{n1}:SELECT $1"));
        let ok = [msg(b'1', b""), msg(b'2', b"")].concat();
        let r1 = [ok.clone(), rows(1)].concat();
        assert_eq!(push(&mut c, R, &r1), format!("R0-{}/1#SELECT_1", r1.len()));
        // A named statement prepared in one batch, executed by the next ones.
        let prep = [
            parse("s1", "UPDATE t SET a = $1"),
            msg(b'D', b"Ss1\0"),
            sync(),
        ]
        .concat();
        let ev = push(&mut c, Q, &prep);
        assert!(ev.ends_with(":UPDATE t SET a = $1"), "{ev}");
        let run = [bind("", "s1"), execute(""), sync()].concat();
        let ev = push(&mut c, Q, &run);
        assert!(
            ev.starts_with('P') && ev.ends_with(":UPDATE t SET a = $1"),
            "{ev}"
        );
        // Named portal, executed twice (cursor-style) then closed.
        let run2 = [
            bind("p1", "s1"),
            execute("p1"),
            sync(),
            execute("p1"),
            sync(),
        ]
        .concat();
        let ev = push(&mut c, Q, &run2);
        assert_eq!(ev.matches(":UPDATE t SET a = $1").count(), 2, "{ev}");
        assert_eq!(c.prepared_statements(), 2, "s1 and the unnamed one");
        let close = [msg(b'C', b"Ss1\0"), sync()].concat();
        assert_eq!(push(&mut c, Q, &close), "", "nothing to report");
        assert_eq!(c.prepared_statements(), 1);
        let ev = push(&mut c, Q, &run);
        assert!(ev.ends_with(':'), "forgotten statement: unknown text: {ev}");
        assert_eq!(c.pending_queries(), 6);
        // Answers: prepare, run, two portal runs, close, run — paired in order.
        let prep_ok = [msg(b'1', b""), msg(b't', &[0, 0]), msg(b'n', b""), ready()].concat();
        let upd = [msg(b'2', b""), complete("UPDATE 2"), ready()].concat();
        let fetch = [complete("UPDATE 1"), ready()].concat();
        let closed = [msg(b'3', b""), ready()].concat();
        let all = [prep_ok, upd.clone(), upd.clone(), fetch, closed, upd].concat();
        let ev = push(&mut c, R, &all);
        assert_eq!(ev.matches('R').count(), 5, "{ev}");
        assert!(
            ev.contains("/2#UPDATE_2 ") && ev.contains("/1#UPDATE_1 "),
            "{ev}"
        );
        assert_eq!(c.pending_queries(), 0);
    }

    #[test]
    fn pipelined_batches_with_an_error() {
        let mut c = PgConn::new();
        let one = |sql: &str| [parse("", sql), bind("", ""), execute(""), sync()].concat();
        let batches = [one("SELECT 1"), one("SELECT bad"), one("SELECT 3")].concat();
        let ev = push(&mut c, Q, &batches);
        assert_eq!(ev, "P0-45:SELECT 1 P45-92:SELECT bad P92-137:SELECT 3");
        // The failing batch: an ErrorResponse, then the server skips to the Sync and
        // answers it with its ReadyForQuery.
        let ok = [msg(b'1', b""), msg(b'2', b""), rows(1)].concat();
        let bad = [error("42703", "column \"bad\" does not exist"), ready()].concat();
        let ev = push(&mut c, R, &[ok.clone(), bad.clone(), ok.clone()].concat());
        let (a, b) = (ok.len(), ok.len() + bad.len());
        let want = format!("R0-{a}/1#SELECT_1 R{a}-{b}!42703 R{b}-{}/1#SELECT_1", b + a);
        assert_eq!(ev, want);
        // Many executions under one Sync (a JDBC batch) are one exchange.
        let jdbc = [
            parse("", "INSERT INTO t VALUES ($1)"),
            bind("", ""),
            execute(""),
            bind("", ""),
            execute(""),
            sync(),
        ];
        let ev = push(&mut c, Q, &jdbc.concat());
        assert_eq!(ev, "P137-222:INSERT INTO t VALUES ($1)");
        let ins = [msg(b'1', b""), msg(b'2', b""), complete("INSERT 0 1")];
        let ins = [&ins[..], &ins[1..], &[ready()]].concat().concat();
        let ev = push(&mut c, R, &ins);
        assert_eq!(
            ev,
            format!(
                "R{}-{}/2#INSERT_0_1",
                2 * a + bad.len(),
                2 * a + bad.len() + ins.len()
            )
        );
        assert_eq!(c.pending_queries(), 0);
    }

    #[test]
    fn big_rows_in_capture_gaps() {
        let mut c = PgConn::new();
        let q = query("SELECT blob FROM files");
        push(&mut c, Q, &q);
        // T, a 100 000-byte DataRow, C, Z; read in pieces of which only heads are captured.
        let t = msg(
            b'T',
            &[
                0, 1, b'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        let r = [t, data_row(100_000), complete("SELECT 1"), ready()].concat();
        assert_eq!(feed(&mut c, R, &r[..512], 60_000), "");
        assert_eq!(feed(&mut c, R, &[], 7), "", "nothing captured at all");
        assert_eq!(feed(&mut c, R, &r[60_007..60_100], 40_029), "");
        let n = r.len();
        assert_eq!(push(&mut c, R, &r[100_036..n - 3]), "");
        assert_eq!(push(&mut c, R, &r[n - 3..]), format!("R0-{n}/1#SELECT_1"));
        // A huge query whose text is mostly in the gap: the text is its captured head.
        let mut big = query(&"x".repeat(20_000));
        big[5..12].copy_from_slice(b"SELECT ");
        let ev = feed(&mut c, Q, &big[..100], big.len() as u64);
        let (s, e) = (q.len(), q.len() + big.len());
        assert_eq!(ev, format!("Q{s}-{e}:SELECT {}", "x".repeat(88)));
        // A window longer than MAX_QUERY, wholly captured, is cut at MAX_QUERY.
        let ev = push(&mut c, Q, &big);
        assert_eq!(ev.len() - ev.find(':').unwrap() - 1, MAX_QUERY);
    }

    #[test]
    fn headers_in_gaps_desync_then_resync() {
        let mut c = PgConn::new();
        push(&mut c, Q, &query("SELECT 1"));
        // A read with the whole answer, only 30 bytes captured: the second DataRow (at 39)
        // starts in the gap.
        let r = rows(3);
        assert_eq!(feed(&mut c, R, &r[..30], 75), "Dr@39");
        assert_eq!(c.pending_queries(), 0, "given up");
        assert_eq!(push(&mut c, R, &r[75..80]), "", "no resync mid-message");
        assert_eq!(
            push(&mut c, R, &r[80..]),
            "",
            "ReadyForQuery alone: nothing pending"
        );
        push(&mut c, Q, &query("SELECT 2"));
        let (n, r2) = (r.len(), rows(2));
        let ev = push(&mut c, R, &r2);
        assert_eq!(ev, format!("R{n}-{}/2#SELECT_2", n + r2.len()));
        // Request side: a Parse fully captured, its Bind/Execute/Sync in the gap.
        let b = [parse("", "SELECT 4"), bind("", ""), execute(""), sync()].concat();
        let ev = feed(&mut c, Q, &b[..20], b.len() as u64);
        assert_eq!(ev, "P28-45:SELECT 4 Dq@45", "reported at once");
        let tail = [execute(""), sync()].concat();
        assert_eq!(push(&mut c, Q, &tail), "", "the tail of the reported batch");
        let ev = push(&mut c, R, &rows(4));
        assert!(ev.ends_with("/4#SELECT_4"), "{ev}");
        // A header cut by the end of the capture.
        let ev = feed(&mut c, Q, &query("SELECT 5")[..3], 14);
        assert_eq!(ev, format!("Dq@{}", 28 + b.len() + tail.len()));
        let ev = push(&mut c, Q, &query("SELECT 6"));
        assert!(ev.ends_with(":SELECT 6"), "{ev}");
        assert_eq!(c.pending_queries(), 1);
    }

    #[test]
    fn garbage_desyncs_then_recovers() {
        let cases: [(Dir, &[u8]); 5] = [
            (Q, b"GET / HTTP/1.1\r\n\r\n"),
            (R, b"HTTP/1.1 200 OK\r\n\r\n"),
            (Q, &[b'Q', 0, 0, 0, 3, 0]),
            (Q, &[b'S', 0, 0, 0, 5, 0]),
            (R, &[b'Z', 0, 0, 0, 6, b'I', 0]),
        ];
        for (dir, bad) in cases {
            let mut c = PgConn::new();
            push(&mut c, Q, &query("SELECT 0")); // 14 bytes, unanswered
            let ev = push(&mut c, dir, bad);
            let at = [14, 0][dir as usize];
            assert_eq!(ev, format!("D{}@{at}", ["q", "r"][dir as usize]), "{bad:?}");
            assert_eq!(c.pending_queries(), [1, 0][dir as usize], "given up on");
            assert_eq!(push(&mut c, dir, &[b'Q', 0x50, 0, 0, 0]), "", "implausible");
            let q = push(&mut c, Q, &query("SELECT 1"));
            let r = push(&mut c, R, &rows(1));
            // The answer goes to the oldest query still awaited: SELECT 0 after a
            // Request-side desync, SELECT 1 after a Response-side one.
            let skipped = 5 + bad.len();
            let (q0, r0) = [(14 + skipped, 0), (14, skipped)][dir as usize];
            assert_eq!(q, format!("Q{q0}-{}:SELECT 1", q0 + 14), "{bad:?}");
            let want = format!("R{r0}-{}/1#SELECT_1", r0 + rows(1).len());
            assert_eq!(r, want, "{bad:?}");
        }
    }

    #[test]
    fn looks_like_checks() {
        assert!(looks_like_startup(&startup(&["user", "u"])));
        assert!(!looks_like_startup(&startup(&["user", "u"])[..7]));
        assert!(!looks_like_startup(b"GET / HTTP/1.1\r\n"));
        assert!(
            !looks_like_startup(&[0, 0, 0, 9, 0, 2, 0, 0, 0]),
            "protocol 2"
        );
        assert!(looks_like_query(&query("SELECT 1")));
        assert!(
            looks_like_query(&query("SELECT 1")[..7]),
            "runs past the chunk"
        );
        assert!(looks_like_query(
            &[parse("", "SELECT 1"), bind("", ""), sync()].concat()
        ));
        assert!(looks_like_query(
            &[bind("", "s"), execute(""), sync()].concat()
        ));
        let no: [&[u8]; 6] = [
            b"Q",
            b"QUIT\r\n",
            &[b'Q', 0, 0, 0, 9, b'a', b'b', b'c', b'd', b'e'],
            &[b'S', 0, 0, 0, 4],
            &[b'P', 0x7f, 0, 0, 9],
            &[query("SELECT 1"), b"zzzzz".to_vec()].concat(),
        ];
        assert!(!no.iter().any(|d| looks_like_query(d)), "{no:?}");
    }

    #[test]
    fn unanswered_queries_are_bounded() {
        let mut c = PgConn::new();
        let q = query("SELECT 1");
        let many = q.repeat(MAX_PENDING);
        assert_eq!(push(&mut c, Q, &many).matches('Q').count(), MAX_PENDING);
        assert_eq!(
            push(&mut c, Q, &q),
            format!("Dr@0 Q{}-{}:SELECT 1", many.len(), many.len() + q.len())
        );
        assert_eq!(c.pending_queries(), 1);
        let s: Vec<u8> = (0..2 * MAX_STATEMENTS)
            .flat_map(|i| parse(&format!("s{i}"), "SELECT 1"))
            .collect();
        push(&mut c, Q, &s);
        assert_eq!(c.prepared_statements(), MAX_STATEMENTS);
        assert!(c.req.win.capacity() <= MAX_WINDOW);
    }

    /// A whole conversation: startup, simple and extended queries, an error, big rows.
    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let req = [
            startup(&["user", "u", "database", "d"]),
            query("SELECT 1"),
            parse("s", "SELECT $1::text"),
            bind("", "s"),
            execute(""),
            sync(),
            query("SELECT oops"),
            bind("c", "s"),
            execute("c"),
            msg(b'H', b""),
            execute("c"),
            sync(),
            msg(b'X', b""),
        ]
        .concat();
        let resp = [
            auth_ok(),
            rows(1),
            msg(b'1', b""),
            msg(b'2', b""),
            rows(2),
            msg(b'N', b"SNOTICE\0Mhi\0\0"),
            error("42703", "no"),
            ready(),
            msg(b'2', b""),
            data_row(5000),
            msg(b's', b""),
            data_row(70),
            complete("SELECT 2"),
            ready(),
        ]
        .concat();
        (req, resp)
    }

    fn exchange(req_sizes: &[usize], resp_sizes: &[usize]) -> Vec<E> {
        let (req, resp) = conversation();
        let mut c = PgConn::new();
        let mut ev = split(&mut c, Q, &req, req_sizes);
        ev.extend(split(&mut c, R, &resp, resp_sizes));
        c.close(&mut ev);
        ev
    }

    #[test]
    fn splits_anywhere_give_the_same_events() {
        let all = show(&exchange(&[], &[]));
        let q = "Uu@d Q27-41:SELECT 1 P41-95:SELECT $1::text Q95-112:SELECT oops \
            P112-159:SELECT $1::text";
        let r = "R53-112/1#SELECT_1 R112-195/2#SELECT_2 R195-243!42703 R243-5365/2#SELECT_2";
        assert_eq!(all, format!("{q} {r}"));
        let (req, resp) = conversation();
        for i in 1..req.len().max(resp.len()) {
            assert_eq!(show(&exchange(&[i], &[i])), all, "split at {i}");
        }
        assert_eq!(
            show(&exchange(&[1; 200], &[1; 6000])),
            all,
            "one byte at a time"
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let sizes = rng.sizes([2, 7, 60, 700], 600);
            assert_eq!(show(&exchange(&sizes, &sizes[rng.below(100)..])), all);
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let (req, resp) = conversation();
        let bits: Vec<Vec<u8>> = vec![
            query("SELECT 1"),
            parse("a", "x"),
            bind("", "a"),
            execute(""),
            sync(),
            ready(),
            rows(2),
            error("1", "2"),
            data_row(9000),
            SSL.to_vec(),
            startup(&["user", "u"]),
            b"N".to_vec(),
            b"S".to_vec(),
            vec![0xff; 5],
            req,
            resp,
        ];
        let mut rng = Rng(42);
        for _ in 0..3000 {
            let (mut c, mut out) = (PgConn::new(), Vec::new());
            for _ in 0..rng.below(40) {
                let data = rng.garbage(&bits, 5, 4, 64, true);
                let len = rng.len(data.len(), 4, 100_000);
                let cut = rng.below(data.len() + 1);
                c.push(
                    [Q, R][rng.below(2)],
                    &data[..cut.max(data.len() / 2)],
                    len,
                    &mut out,
                );
                assert!(c.req.win.capacity() <= 2 * MAX_WINDOW && c.resp.win.len() <= MAX_WINDOW);
                assert!(c.pending_queries() <= MAX_PENDING);
            }
            c.close(&mut out);
        }
    }
}
