//! One connection's MySQL parser ([`MySqlConn`]): feeds each direction to its side and says
//! what a query and its result mean as an exchange.

use crate::{
    dbconn::DbConn,
    exchange::DbSystem,
    parser::{Opener, Protocol, Step, Update},
    sql::request_step,
};

use super::*;

/// MySQL parser state for one connection, both directions.
pub type MySqlConn = DbConn<Side>;

impl MySqlConn {
    /// The connection switched to TLS or compression, or became a replication stream.
    pub fn is_stopped(&self) -> bool {
        self.stopped()
    }
}

impl Protocol for MySqlConn {
    /// MySQL servers speak first: whoever sends the greeting is the server.
    fn detect(payload: &[u8]) -> Option<Opener> {
        if looks_like_greeting(payload) {
            Some(Opener::Responder)
        } else if looks_like_command(payload) {
            Some(Opener::Requester)
        } else {
            None
        }
    }

    fn step(&self, event: MySqlEvent) -> Option<Step> {
        Some(match event {
            MySqlEvent::Query { start, query, .. } => {
                request_step(DbSystem::Mysql, start, &query, self.database())
            }
            MySqlEvent::Result {
                end, error, rows, ..
            } => Step::End {
                key: None,
                end,
                update: Update::Db {
                    error: error.map(|(code, _state, message)| (code.to_string(), message)),
                    rows,
                },
            },
            MySqlEvent::Desync { dir, .. } => Step::Desync(dir),
            MySqlEvent::Handshake { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dir;
    use crate::testutil::{self, Rng, split};
    use Dir::{Request as Q, Response as R};
    use MySqlEvent as E;

    /// Events as a trace: `Q0-20:text` query, `P0-13:text` statement execution, `R0-30/5`
    /// result with 5 rows (`!1064` on error), `H<user>@<db>` handshake, `Dq@5` desync.
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
            } => {
                let rows = rows.map(|n| format!("/{n}")).unwrap_or_default();
                let err = error
                    .as_ref()
                    .map(|e| format!("!{}", e.0))
                    .unwrap_or_default();
                format!("R{start}-{end}{rows}{err}")
            }
            E::Handshake { user, database } => {
                let (u, d) = (user.as_deref(), database.as_deref());
                format!("H{}@{}", u.unwrap_or("-"), d.unwrap_or("-"))
            }
            E::Desync { dir, offset } => format!("D{}@{offset}", ["q", "r"][*dir as usize]),
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut MySqlConn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut MySqlConn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_le_bytes();
        [&len[..3], &[seq], payload].concat()
    }
    fn cmd(c: u8, body: &[u8]) -> Vec<u8> {
        pkt(0, &[&[c][..], body].concat())
    }
    fn query(sql: &str) -> Vec<u8> {
        cmd(0x03, sql.as_bytes())
    }
    fn ok(seq: u8, affected: u8, status: u16) -> Vec<u8> {
        pkt(
            seq,
            &[&[0, affected, 0][..], &status.to_le_bytes(), &[0, 0]].concat(),
        )
    }
    fn eof(seq: u8, status: u16) -> Vec<u8> {
        pkt(seq, &[&[0xfe, 0, 0][..], &status.to_le_bytes()].concat())
    }
    fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
        pkt(
            seq,
            &[&[0xfe, 0, 0][..], &status.to_le_bytes(), &[0, 0]].concat(),
        )
    }
    fn err(seq: u8, code: u16, msg: &str) -> Vec<u8> {
        pkt(
            seq,
            &[&[0xff][..], &code.to_le_bytes(), b"#42S02", msg.as_bytes()].concat(),
        )
    }
    const DEF: &[u8] =
        b"\x03def\x02db\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00";

    /// Payloads as packets with sequence ids from `seq` on.
    fn seqd(seq: u8, payloads: &[Vec<u8>]) -> Vec<u8> {
        let packets = payloads.iter().enumerate();
        packets
            .flat_map(|(i, p)| pkt(seq.wrapping_add(i as u8), p))
            .collect()
    }

    /// The payloads of a result set with `cols` columns and `rows` rows.
    fn result_payloads(cols: u8, rows: usize, deprecate: bool, status: u16) -> Vec<Vec<u8>> {
        let mut v = vec![vec![cols]];
        v.extend((0..cols).map(|_| DEF.to_vec()));
        if !deprecate {
            v.push(eof(0, 0)[4..].to_vec());
        }
        v.extend((0..rows).map(|i| format!("\x05row{i:02}").into_bytes()));
        let end = if deprecate {
            ok_fe(0, status)
        } else {
            eof(0, status)
        };
        v.push(end[4..].to_vec());
        v
    }

    fn result_set(cols: u8, rows: usize, deprecate: bool, status: u16) -> Vec<u8> {
        seqd(1, &result_payloads(cols, rows, deprecate, status))
    }

    fn greeting(caps: u32) -> Vec<u8> {
        let [a, b, c, d] = caps.to_le_bytes();
        let body = [
            &b"\x0a8.0.36\0\x07\0\0\0abcdefgh\0"[..],
            &[a, b, 0xff, 2, 0, c, d, 21],
            &[0; 10],
            b"ijklmnopqrst\0mysql_native_password\0",
        ];
        pkt(0, &body.concat())
    }
    const CAPS: u32 = PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH_LENENC | CONNECT_WITH_DB;

    fn handshake(caps: u32, user: &str, db: &str) -> Vec<u8> {
        let mut p = [&caps.to_le_bytes()[..], &[0, 0, 0, 1, 45], &[0; 23]].concat();
        p.extend([user.as_bytes(), b"\0\x14", &[7; 20], db.as_bytes(), b"\0"].concat());
        p.extend(b"mysql_native_password\0");
        pkt(1, &p)
    }

    /// Greeting, handshake response, an auth switch round, OK: returns the connection.
    fn connected(caps: u32) -> MySqlConn {
        let mut c = MySqlConn::new();
        assert!(looks_like_greeting(&greeting(caps)));
        assert_eq!(push(&mut c, R, &greeting(caps)), "");
        assert_eq!(
            push(&mut c, Q, &handshake(caps, "bob", "shop")),
            "Hbob@shop"
        );
        let switch = pkt(2, b"\xfecaching_sha2_password\0salt\0");
        assert_eq!(
            push(&mut c, R, &switch) + &push(&mut c, Q, &pkt(3, &[1; 32])),
            ""
        );
        assert_eq!(
            push(&mut c, R, &[pkt(4, b"\x01\x03"), ok(5, 0, 2)].concat()),
            ""
        );
        c
    }

    #[test]
    fn handshake_then_text_queries() {
        let mut c = connected(CAPS);
        assert_eq!((c.user(), c.database()), (Some("bob"), Some("shop")));
        let (qo, ro) = (c.req.offset, c.resp.offset);
        let q = query("SELECT a FROM t");
        let ev = push(&mut c, Q, &q);
        assert_eq!(ev, format!("Q{qo}-{}:SELECT a FROM t", qo + q.len() as u64));
        let rs = result_set(1, 3, false, 2);
        assert_eq!(
            push(&mut c, R, &rs),
            format!("R{ro}-{}/3", ro + rs.len() as u64)
        );
        push(&mut c, Q, &query("UPDATE t SET a = 1"));
        assert!(push(&mut c, R, &ok(1, 7, 2)).ends_with("/7"));
        push(&mut c, Q, &query("SELECT * FROM nope"));
        let mut out = Vec::new();
        let e = err(1, 1146, "Table 'shop.nope' doesn't exist");
        c.push(R, &e, e.len() as u64, &mut out);
        let E::Result { error, rows, .. } = &out[0] else {
            panic!("{out:?}")
        };
        let want = (
            1146,
            "42S02".into(),
            "Table 'shop.nope' doesn't exist".into(),
        );
        assert_eq!((error, rows), (&Some(want), &None));
        // COM_INIT_DB and `USE` change the database once the server agrees.
        push(&mut c, Q, &cmd(0x02, b"other"));
        assert_eq!(c.database(), Some("shop"));
        assert_eq!(push(&mut c, R, &ok(1, 0, 2)), "", "not reported");
        assert_eq!(c.database(), Some("other"));
        push(&mut c, Q, &query("use `third`;"));
        push(&mut c, R, &ok(1, 0, 2));
        assert_eq!(c.database(), Some("third"));
        push(&mut c, Q, &query("USE nope"));
        push(&mut c, R, &err(1, 1049, "Unknown database"));
        assert_eq!(c.database(), Some("third"));
        // No-answer commands, PING.
        let quiet = [cmd(0x19, &[1, 0, 0, 0]), cmd(0x0e, b"")].concat();
        assert_eq!(push(&mut c, Q, &quiet), "");
        assert_eq!(c.pending_queries(), 1);
        assert_eq!(push(&mut c, R, &ok(1, 0, 2)), "");
        assert_eq!(c.pending_queries(), 0);
    }

    #[test]
    fn result_sets_with_deprecate_eof_and_multiple_results() {
        let mut c = connected(CAPS | DEPRECATE_EOF);
        push(&mut c, Q, &query("SELECT a FROM t"));
        let rs = result_set(2, 2, true, 2);
        assert!(push(&mut c, R, &rs).ends_with("/2"));
        push(&mut c, Q, &query("SELECT a FROM t"));
        let ev = push(&mut c, R, &result_set(1, 600, true, 2));
        assert!(ev.ends_with("/600"), "sequence ids wrap: {ev}");
        push(&mut c, Q, &query("SELECT a FROM t WHERE 0"));
        assert!(
            push(&mut c, R, &result_set(1, 0, true, 2)).ends_with("/0"),
            "empty"
        );
        // CALL: two result sets and an OK, flagged SERVER_MORE_RESULTS_EXISTS.
        push(&mut c, Q, &query("CALL p()"));
        let mut call = result_payloads(1, 2, true, 2 | MORE_RESULTS);
        call.extend(result_payloads(1, 1, true, 2 | MORE_RESULTS));
        call.push(ok(0, 0, 2)[4..].to_vec());
        let (call, r0) = (seqd(1, &call), c.resp.offset);
        let want = format!("R{r0}-{}/3", r0 + call.len() as u64);
        assert_eq!(push(&mut c, R, &call), want);
        assert_eq!(c.pending_queries(), 0);
        // Classic EOFs inferred without a handshake: EOF is 5 bytes, a final OK 7.
        let mut c = MySqlConn::new();
        for (rs, rows) in [
            (result_set(1, 1, false, 2), 1),
            (result_set(1, 0, true, 2), 0),
        ] {
            push(&mut c, Q, &query("SELECT 1"));
            let ev = push(&mut c, R, &rs);
            assert!(ev.ends_with(&format!("/{rows}")), "{ev}");
        }
        push(&mut c, Q, &query("SELECT 1"));
        assert!(push(&mut c, R, &result_set(1, 2, true, 2)).ends_with("/2"));
        assert!(c.shared.deprecate_eof, "learnt");
    }

    /// The answer to COM_STMT_PREPARE: PREPARE_OK, parameter then column definitions.
    fn prepare_ok(id: u8, cols: u8, params: u8, deprecate: bool) -> Vec<u8> {
        let mut v = vec![vec![0, id, 0, 0, 0, cols, 0, params, 0, 0, 0, 0]];
        for n in [params, cols] {
            v.extend((0..n).map(|_| DEF.to_vec()));
            if n > 0 && !deprecate {
                v.push(eof(0, 2)[4..].to_vec());
            }
        }
        seqd(1, &v)
    }

    #[test]
    fn prepared_statements() {
        for deprecate in [false, true] {
            let caps = if deprecate {
                CAPS | DEPRECATE_EOF
            } else {
                CAPS
            };
            let mut c = connected(caps);
            let prep = cmd(0x16, b"SELECT a FROM t WHERE id = ? AND b = ?");
            assert_eq!(push(&mut c, Q, &prep), "", "not reported");
            assert_eq!(push(&mut c, R, &prepare_ok(1, 1, 2, deprecate)), "");
            push(&mut c, Q, &cmd(0x16, b"DELETE FROM t"));
            assert_eq!(push(&mut c, R, &prepare_ok(2, 0, 0, deprecate)), "");
            assert_eq!((c.prepared_statements(), c.pending_queries()), (2, 0));
            let exec = cmd(0x17, &[1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 8, 0]);
            let ev = push(&mut c, Q, &exec);
            assert!(ev.starts_with('P') && ev.ends_with(":SELECT a FROM t WHERE id = ? AND b = ?"));
            let mut rs = result_set(1, 2, deprecate, 2);
            let row = rs.len() - [9, 11][deprecate as usize] - 2 * 10 + 4;
            rs[row] = 0; // binary rows start with 0x00
            assert!(push(&mut c, R, &rs).ends_with("/2"), "{deprecate}");
            let ev = push(&mut c, Q, &cmd(0x17, &[2, 0, 0, 0, 0, 1, 0, 0, 0]));
            assert!(ev.ends_with(":DELETE FROM t"), "{ev}");
            assert!(push(&mut c, R, &ok(1, 4, 2)).ends_with("/4"));
            push(&mut c, Q, &cmd(0x19, &[2, 0, 0, 0]));
            assert_eq!(c.prepared_statements(), 1);
            let ev = push(&mut c, Q, &cmd(0x17, &[2, 0, 0, 0, 0, 1, 0, 0, 0]));
            assert!(
                ev.starts_with('P') && ev.ends_with(':'),
                "unknown statement: {ev}"
            );
        }
        // Without the handshake, classic EOFs are assumed: a prepare answer with
        // CLIENT_DEPRECATE_EOF ends when the next answer starts.
        let mut c = MySqlConn::new();
        push(&mut c, Q, &cmd(0x16, b"SELECT ?"));
        assert_eq!(push(&mut c, R, &prepare_ok(8, 1, 1, true)), "");
        assert_eq!(
            c.pending_queries(),
            0,
            "learnt from the column after the parameter"
        );
        c.shared.deprecate_eof = false;
        push(&mut c, Q, &cmd(0x16, b"SELECT ?"));
        let p = prepare_ok(9, 0, 1, true);
        let r0 = c.resp.offset;
        assert_eq!(push(&mut c, R, &p), "");
        assert_eq!(c.pending_queries(), 1, "waiting for an EOF");
        let ev = push(&mut c, Q, &cmd(0x17, &[9, 0, 0, 0, 0, 1, 0, 0, 0]));
        assert!(ev.ends_with(":SELECT ?"), "{ev}");
        let ev = push(&mut c, R, &ok(1, 1, 2));
        let r1 = r0 + p.len() as u64;
        assert_eq!(ev, format!("R{r1}-{}/1", r1 + 11));
    }

    #[test]
    fn local_infile_and_other_answers() {
        let mut c = connected(CAPS);
        push(&mut c, Q, &query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
        assert_eq!(push(&mut c, R, &pkt(1, b"\xfbf")), "");
        let data = [pkt(2, b"1,2\n3,4\n"), pkt(3, b"")].concat();
        assert_eq!(push(&mut c, Q, &data), "");
        assert!(push(&mut c, R, &ok(4, 2, 2)).ends_with("/2"));
        // Statistics: one string; field list: definitions then EOF; set option: EOF.
        let cmds = [cmd(0x09, b""), cmd(0x04, b"t\0"), cmd(0x1b, &[1, 0])].concat();
        push(&mut c, Q, &cmds);
        let answers = [
            pkt(1, b"Uptime: 5"),
            pkt(1, DEF),
            pkt(2, DEF),
            eof(3, 2),
            eof(1, 2),
        ];
        assert_eq!(push(&mut c, R, &answers.concat()), "");
        assert_eq!(c.pending_queries(), 0);
        // A binlog dump turns the connection into a replication stream.
        push(&mut c, Q, &cmd(0x12, &[4, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
        assert!(c.is_stopped());
    }

    #[test]
    fn ssl_and_compression_stop_parsing() {
        let mut c = MySqlConn::new();
        push(&mut c, R, &greeting(CAPS | SSL));
        let ssl = pkt(
            1,
            &[&(CAPS | SSL).to_le_bytes()[..], &[0, 0, 0, 1, 45], &[0; 23]].concat(),
        );
        assert_eq!(push(&mut c, Q, &ssl), "");
        assert!(c.is_stopped());
        assert_eq!(push(&mut c, Q, &query("SELECT 1")), "");
        let mut c = MySqlConn::new();
        push(&mut c, R, &greeting(CAPS | COMPRESS));
        assert_eq!(
            push(&mut c, Q, &handshake(CAPS | COMPRESS, "u", "")),
            "Hu@-"
        );
        assert!(c.is_stopped());
    }

    #[test]
    fn big_payloads_and_gaps() {
        let mut c = connected(CAPS);
        let (qo, ro) = (c.req.offset, c.resp.offset);
        // A 20 MB query: a 0xFFFFFF-byte packet and its continuation, heads captured.
        let total = 20_000_000u64;
        let mut first = pkt(0, b"\x03INSERT INTO t VALUES ('");
        first[..4].copy_from_slice(&[0xff, 0xff, 0xff, 0]);
        assert_eq!(feed(&mut c, Q, &first, 1 << 20), "");
        assert_eq!(feed(&mut c, Q, &[], (MORE + 4) - (1 << 20)), "");
        let rest = total - MORE;
        let second = [&(rest as u32).to_le_bytes()[..3], &[1], b"xxx"].concat();
        let ev = feed(&mut c, Q, &second, rest + 4);
        let end = qo + MORE + 4 + rest + 4;
        assert_eq!(ev, format!("Q{qo}-{end}:INSERT INTO t VALUES ('"));
        // A result set with a 100 000-byte row, read in captured heads.
        let mut rs = result_set(1, 1, false, 2);
        let big = pkt(4, &vec![b'x'; 100_000]);
        let at = rs.len() - 9;
        rs.splice(at - 10..at, big.iter().copied());
        assert_eq!(feed(&mut c, R, &rs[..100], 50_000), "");
        let n = rs.len() as u64;
        assert_eq!(feed(&mut c, R, &rs[50_000..50_010], n - 50_000 - 9), "");
        let ev = push(&mut c, R, &rs[rs.len() - 9..]);
        assert_eq!(ev, format!("R{ro}-{}/1", ro + n));
        // A header in a gap desyncs; the next answer's first packet resyncs.
        push(&mut c, Q, &query("SELECT 1"));
        let rs = result_set(1, 3, false, 2);
        let r0 = c.resp.offset;
        assert_eq!(
            feed(&mut c, R, &rs[..20], 60),
            format!("Dr@{}", r0 + 5 + 4 + DEF.len() as u64)
        );
        assert_eq!(c.pending_queries(), 0);
        assert_eq!(push(&mut c, R, &rs[60..]), "", "no resync mid-answer");
        push(&mut c, Q, &query("SELECT 2"));
        let ev = push(&mut c, R, &rs);
        assert!(ev.starts_with('R') && ev.ends_with("/3"), "{ev}");
        // Request side: garbage, then a command.
        assert!(push(&mut c, Q, b"\x05\0\0\0\x99abcd").starts_with("Dq@"));
        assert_eq!(
            push(&mut c, Q, b"\x05\0\0\x01\x03abcd"),
            "",
            "not a command"
        );
        assert!(push(&mut c, Q, &query("SELECT 3")).ends_with(":SELECT 3"));
    }

    #[test]
    fn looks_like_checks() {
        assert!(looks_like_command(&query("SELECT 1")));
        assert!(looks_like_command(&query("SELECT 1")[..5]));
        assert!(
            looks_like_command(&cmd(0x03, b"\0\x01SELECT 1")),
            "query attributes"
        );
        assert!(looks_like_command(&cmd(0x0e, b"")) && looks_like_command(&cmd(0x19, &[1; 4])));
        let no = [
            pkt(1, b"\x03SELECT 1"),
            cmd(0x03, b"\x01\x02"),
            cmd(0x0e, b"x"),
            cmd(0x42, b"SELECT"),
            b"GET / HTTP/1.1\r\n".to_vec(),
            vec![],
        ];
        assert!(!no.iter().any(|d| looks_like_command(d)), "{no:?}");
        assert!(!looks_like_greeting(&query("SELECT 1")));
        let mut g = greeting(CAPS);
        g[5] = b'x';
        assert!(!looks_like_greeting(&g) && !looks_like_greeting(&g[..6]));
        assert!(looks_like_answer(&ok(1, 0, 2)) && looks_like_answer(&err(1, 1, "x")));
        assert!(looks_like_answer(&result_set(2, 0, false, 2)) && !looks_like_answer(&ok(2, 0, 2)));
        assert!(!looks_like_answer(&pkt(1, b"\x05row00")));
    }

    #[test]
    fn unanswered_commands_are_bounded() {
        let mut c = MySqlConn::new();
        let q = query("SELECT 1");
        let ev = push(&mut c, Q, &q.repeat(MAX_PENDING + 1));
        assert!(ev.contains(" Dr@0 Q"));
        assert_eq!(c.pending_queries(), 1);
        let mut c = MySqlConn::new();
        for i in 0..2 * MAX_STATEMENTS as u32 {
            push(&mut c, Q, &cmd(0x16, b"SELECT 1"));
            let id = i.to_le_bytes();
            push(
                &mut c,
                R,
                &pkt(1, &[0, id[0], id[1], id[2], id[3], 0, 0, 0, 0, 0, 0, 0]),
            );
        }
        assert_eq!(c.prepared_statements(), MAX_STATEMENTS);
    }

    /// A whole conversation, turn by turn: handshake, queries, a prepared statement, an
    /// error, no-answer commands.
    fn conversation() -> Vec<(Dir, Vec<u8>)> {
        vec![
            (R, greeting(CAPS)),
            (Q, handshake(CAPS, "u", "d")),
            (R, ok(2, 0, 2)),
            (Q, query("SELECT a FROM t")),
            (R, result_set(2, 3, false, 2)),
            (Q, cmd(0x16, b"SELECT ?")),
            (R, prepare_ok(3, 1, 1, false)),
            (Q, cmd(0x17, &[3, 0, 0, 0, 0, 1, 0, 0, 0])),
            (R, result_set(1, 1, false, 2)),
            (Q, [query("SELECT nope"), cmd(0x19, &[3, 0, 0, 0])].concat()),
            (R, err(1, 1054, "Unknown column")),
            (Q, query("INSERT INTO t VALUES (1)")),
            (R, ok(1, 1, 2)),
            (Q, cmd(0x01, b"")),
        ]
    }

    /// The conversation, each turn split in pieces of the given sizes.
    fn exchange(sizes: &[usize]) -> Vec<E> {
        let (mut c, mut ev) = (MySqlConn::new(), Vec::new());
        for (dir, data) in conversation() {
            ev.extend(split(&mut c, dir, &data, sizes));
        }
        c.close(&mut ev);
        ev
    }

    #[test]
    fn splits_anywhere_give_the_same_events() {
        let all = show(&exchange(&[]));
        let a = "Hu@d Q83-103:SELECT a FROM t R89-206/3 P116-130:SELECT ? R304-369/1";
        let b = "Q130-146:SELECT nope R369-396!1054 Q155-184:INSERT INTO t VALUES (1) R396-407/1";
        assert_eq!(all, format!("{a} {b}"));
        for i in 1..120 {
            assert_eq!(show(&exchange(&[i])), all, "split at {i}");
        }
        assert_eq!(show(&exchange(&[1; 200])), all, "one byte at a time");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let sizes = rng.sizes([2, 7, 60, 700], 200);
            assert_eq!(show(&exchange(&sizes[rng.below(100)..])), all);
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut big = query("x");
        big[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        let bits: Vec<Vec<u8>> = vec![
            query("SELECT 1"),
            cmd(0x16, b"SELECT ?"),
            cmd(0x17, &[1, 0, 0, 0]),
            ok(1, 1, 8),
            eof(2, 8),
            err(1, 1, "x"),
            result_set(2, 2, false, 8),
            prepare_ok(1, 2, 2, true),
            greeting(CAPS),
            handshake(CAPS | DEPRECATE_EOF, "u", "d"),
            pkt(1, b"\xfb"),
            big,
        ];
        let mut bits = bits;
        bits.extend(conversation().into_iter().map(|(_, d)| d));
        let mut rng = Rng(42);
        for _ in 0..3000 {
            let (mut c, mut out) = (MySqlConn::new(), Vec::new());
            for _ in 0..rng.below(40) {
                let data = rng.garbage(&bits, 5, 4, 64, true);
                let len = rng.len(data.len(), 4, 100_000);
                c.push([Q, R][rng.below(2)], &data, len, &mut out);
                assert!(c.req.win.len() <= MAX_WINDOW && c.resp.win.len() <= SERVER_WINDOW);
                assert!(c.pending_queries() <= MAX_PENDING);
            }
            c.close(&mut out);
        }
    }
}
