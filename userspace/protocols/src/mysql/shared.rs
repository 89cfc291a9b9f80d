//! What both directions share: the commands awaiting an answer, the answer being read, the
//! server's capabilities and the prepared statements.

use std::{collections::VecDeque, sync::Arc};

use crate::Dir;
use crate::sql::{TextCache, cstr, text};

use crate::dbconn::db_shared;

use super::*;

/// Longest query text kept, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Most prepared statements remembered (and at most 256 KiB of their text).
pub const MAX_STATEMENTS: usize = crate::sql::MAX_CACHED;
/// Most commands awaiting their answer.
pub const MAX_PENDING: usize = 256;

pub(super) const CONNECT_WITH_DB: u32 = 0x8;
pub(super) const COMPRESS: u32 = 0x20;
pub(super) const PROTOCOL_41: u32 = 0x200;
pub(super) const SSL: u32 = 0x800;
pub(super) const SECURE_CONNECTION: u32 = 0x8000;
pub(super) const PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
pub(super) const DEPRECATE_EOF: u32 = 0x100_0000;
pub(super) const ZSTD: u32 = 0x400_0000;
pub(super) const QUERY_ATTRIBUTES: u32 = 0x800_0000;
pub(super) const MORE_RESULTS: u16 = 0x8;
pub(super) const CURSOR_EXISTS: u16 = 0x40;

pub(super) fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A length-encoded integer at the start of `b`, and its size.
pub(super) fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let n = match *b.first()? {
        c @ 0..=0xfa => return Some((u64::from(c), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(b.get(1..=n)?);
    Some((u64::from_le_bytes(v), n + 1))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum State {
    /// Expecting a packet header; `hdr_len` bytes of it are in `hdr`.
    #[default]
    Header,
    /// Collecting the window (first bytes) of a message's first packet.
    Window,
    /// Skipping the rest of a packet: `left` bytes.
    Skip,
    /// Lost framing: skip chunks until one starts plausibly.
    Desync,
}

/// What a command's answer looks like.
#[derive(Debug)]
pub(super) enum Kind {
    /// OK, ERR, EOF, LOCAL INFILE or result sets.
    Query,
    Prepare(Arc<str>),
    /// A database change, applied on OK.
    Use(String),
    /// COM_STMT_FETCH: rows until EOF.
    Fetch,
    /// COM_FIELD_LIST: definitions until EOF.
    FieldList,
    /// COM_CHANGE_USER: authentication until OK/ERR.
    ChangeUser,
    /// COM_STATISTICS: one string packet.
    Single,
}

/// Where an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    First,
    /// Column or parameter definitions left, then what follows them.
    Defs(u64, After),
    /// An EOF may come (classic protocol), then what follows.
    Eof(After),
    Rows,
    /// Until OK or ERR, whatever the sequence ids (LOCAL INFILE, change user).
    UntilOk,
    /// Until EOF or ERR.
    UntilEof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum After {
    Rows,
    /// Prepare's parameter definitions: its column definitions follow.
    PrepCols(u64),
    Done,
}

/// The answer being read.
#[derive(Default)]
pub(super) struct Answer {
    /// Offset of its first packet (`None`: not started).
    pub(super) start: Option<u64>,
    pub(super) next_seq: u8,
    pub(super) last_end: u64,
    pub(super) phase: Option<Phase>,
    pub(super) rows: Option<u64>,
    pub(super) error: Option<(u16, String, String)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Server {
    /// Nothing seen yet: a greeting or (attached mid-stream) answers.
    #[default]
    Start,
    /// Greeting seen: authentication until OK/ERR.
    Auth,
    Commands,
}

/// State shared by both directions.
#[derive(Default)]
pub struct Shared {
    pub(super) server: Server,
    pub(super) handshake_seen: bool,
    pub(super) server_caps: u32,
    pub(super) client_caps: Option<u32>,
    pub(super) deprecate_eof: bool,
    /// Encrypted, compressed or replicating: nothing more to parse.
    pub(super) stopped: bool,
    pub(super) statements: TextCache<u32>,
    /// Commands awaiting their answer, oldest first, and whether they were reported.
    pub(super) pending: VecDeque<(Kind, bool)>,
    pub(super) answer: Answer,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
}

/// A message: the window `w` of its payload (`plen` bytes), its offsets, and the sequence
/// ids of its first and last packets.
pub(super) struct Msg<'w> {
    pub(super) w: &'w [u8],
    pub(super) plen: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) seq: u8,
    pub(super) last_seq: u8,
}

/// The OK packet `w`: affected rows and status flags.
pub(super) fn ok_packet(w: &[u8]) -> (u64, u16) {
    let Some((rows, n)) = w.get(1..).and_then(lenenc) else {
        return (0, 0);
    };
    let id = w.get(1 + n..).and_then(lenenc).map_or(0, |(_, m)| m);
    (rows, u16le(w, 1 + n + id).unwrap_or(0))
}

pub(super) fn err_packet(w: &[u8], plen: u64) -> (u16, String, String) {
    let code = u16le(w, 1).unwrap_or(0);
    let rest = w.get(3..).unwrap_or_default();
    let (state, msg) = match rest {
        [b'#', s @ ..] if s.len() >= 5 => (text(&s[..5], 5, false), &s[5..]),
        _ => (String::new(), rest),
    };
    (code, state, text(msg, 1024, plen > w.len() as u64))
}

impl Shared {
    pub(super) fn expect(
        &mut self,
        kind: Kind,
        reported: bool,
        resp_offset: u64,
        out: &mut Vec<MySqlEvent>,
    ) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear(); // no answers for ages: give up on them
            self.answer = Answer::default();
            let offset = resp_offset;
            out.push(MySqlEvent::Desync {
                dir: Dir::Response,
                offset,
            });
        }
        self.pending.push_back((kind, reported));
    }

    /// The client's handshake response (or SSL request).
    pub(super) fn handshake(&mut self, w: &[u8], plen: u64, out: &mut Vec<MySqlEvent>) {
        self.handshake_seen = true;
        let caps = if w.len() >= 4 {
            u32le(w, 0).unwrap_or(0)
        } else {
            0
        };
        let caps = caps
            & if caps & PROTOCOL_41 != 0 {
                u32::MAX
            } else {
                0xffff
            };
        self.client_caps = Some(caps);
        let both = caps & self.server_caps;
        self.deprecate_eof = both & DEPRECATE_EOF != 0;
        if caps & SSL != 0 && plen == 32 {
            self.stopped = true; // an SSL request: TLS from here on
            return;
        }
        self.stopped = both & (COMPRESS | ZSTD) != 0; // compressed packets from here on
        let at = if caps & PROTOCOL_41 != 0 { 32 } else { 5 };
        let (user, rest) = cstr(w.get(at..).unwrap_or_default());
        let rest = rest.unwrap_or_default();
        let auth = if caps & PROTOCOL_41 == 0 {
            cstr(rest).1.map(|r| rest.len() - r.len())
        } else if caps & PLUGIN_AUTH_LENENC != 0 {
            let n = lenenc(rest).and_then(|(n, m)| n.checked_add(m as u64));
            n.and_then(|n| usize::try_from(n).ok())
        } else if caps & SECURE_CONNECTION != 0 {
            rest.first().map(|&n| 1 + usize::from(n))
        } else {
            cstr(rest).1.map(|r| rest.len() - r.len())
        };
        let db = auth.and_then(|n| rest.get(n..)).map(|r| cstr(r).0);
        let db = db.filter(|d| caps & CONNECT_WITH_DB != 0 && !d.is_empty());
        self.user = Some(text(user, 256, false));
        self.database = db.map(|d| text(d, 256, false));
        let (user, database) = (self.user.clone(), self.database.clone());
        out.push(MySqlEvent::Handshake { user, database });
    }

    /// A client message; `false` if it makes no sense.
    pub(super) fn client(&mut self, m: Msg, resp_offset: u64, out: &mut Vec<MySqlEvent>) -> bool {
        let Msg {
            w,
            plen,
            start,
            end,
            seq,
            ..
        } = m;
        if seq != 0 {
            if seq == 1 && self.server == Server::Auth && !self.handshake_seen {
                self.handshake(w, plen, out);
            }
            return true; // authentication data, LOCAL INFILE contents…
        }
        let Some((&cmd, body)) = w.split_first() else {
            return plen > 0; // payload not captured: unknown command, no answer tracked
        };
        let cut = plen > w.len() as u64;
        let id = u32le(body, 0);
        match cmd {
            0x03 | 0x16 => {
                let attrs = cmd == 0x03
                    && match self.client_caps {
                        Some(caps) => caps & QUERY_ATTRIBUTES != 0,
                        None => body.starts_with(&[0, 1]),
                    };
                let mut q = body;
                if attrs {
                    let params = lenenc(q).filter(|&(n, _)| n == 0);
                    let sets = params.and_then(|(_, n)| q.get(n..)).and_then(lenenc);
                    q = match (params, sets) {
                        (Some((_, a)), Some((_, b))) => &q[a + b..],
                        _ => &[], // parameters: no cheap way to the text
                    };
                }
                let q: Arc<str> = text(q, MAX_QUERY, cut).into();
                if cmd == 0x16 {
                    self.expect(Kind::Prepare(q), false, resp_offset, out);
                    return true;
                }
                let kind = use_db(&q).map_or(Kind::Query, Kind::Use);
                self.expect(kind, true, resp_offset, out);
                let (query, prepared) = (q.to_string(), false);
                out.push(MySqlEvent::Query {
                    start,
                    end,
                    query,
                    prepared,
                });
            }
            0x17 | 0xfa => {
                // COM_STMT_EXECUTE, MariaDB's COM_STMT_BULK_EXECUTE
                let text = id.and_then(|id| self.statements.get(&id));
                let (query, prepared) = (text.map(|t| t.to_string()).unwrap_or_default(), true);
                self.expect(Kind::Query, true, resp_offset, out);
                out.push(MySqlEvent::Query {
                    start,
                    end,
                    query,
                    prepared,
                });
            }
            0x19 => self.statements.remove(&id.unwrap_or(0)),
            0x01 | 0x18 => {} // no answer
            0x02 => {
                let db = Kind::Use(text(body, 256, cut));
                self.expect(db, false, resp_offset, out);
            }
            0x12 | 0x1e => self.stopped = true, // binlog dump: a replication stream
            0x1c => self.expect(Kind::Fetch, false, resp_offset, out),
            0x04 => self.expect(Kind::FieldList, false, resp_offset, out),
            0x11 => self.expect(Kind::ChangeUser, false, resp_offset, out),
            0x09 => self.expect(Kind::Single, false, resp_offset, out),
            0x00..=0x1f => self.expect(Kind::Query, false, resp_offset, out),
            _ => return false,
        }
        true
    }

    /// The current answer ended at `end`.
    pub(super) fn finish(&mut self, end: u64, out: &mut Vec<MySqlEvent>) {
        let a = std::mem::take(&mut self.answer);
        let Some((kind, reported)) = self.pending.pop_front() else {
            return;
        };
        if let (Kind::Use(db), None) = (kind, &a.error) {
            self.database = Some(db);
        }
        if reported {
            out.push(MySqlEvent::Result {
                start: a.start.unwrap_or(end),
                end,
                error: a.error,
                rows: a.rows,
            });
        }
    }

    pub(super) fn add_rows(&mut self, n: u64) {
        self.answer.rows = Some(self.answer.rows.unwrap_or(0).saturating_add(n));
    }

    /// A server message; `false` if out of sequence.
    pub(super) fn server(&mut self, m: Msg, out: &mut Vec<MySqlEvent>) -> bool {
        let Msg {
            w,
            plen,
            start,
            end,
            seq,
            last_seq,
        } = m;
        match self.server {
            Server::Start if seq == 0 && w.first() == Some(&10) => {
                self.server = Server::Auth;
                let version = cstr(w.get(1..).unwrap_or_default()).1.unwrap_or_default();
                let low = u16le(version, 13).unwrap_or(0);
                let high = u16le(version, 18).unwrap_or(0);
                self.server_caps = u32::from(low) | u32::from(high) << 16;
                return true;
            }
            Server::Start => self.server = Server::Commands,
            Server::Auth => {
                if matches!(w.first(), Some(0x00 | 0xff)) {
                    self.server = Server::Commands;
                }
                return true;
            }
            Server::Commands => {}
        }
        loop {
            let Some((kind, _)) = self.pending.front() else {
                return true; // nothing asked: ignore
            };
            if self.answer.start.is_none() {
                if seq != 1 {
                    return true; // the rest of an answer given up on
                }
                let phase = match kind {
                    Kind::Fetch => Phase::Rows,
                    Kind::FieldList => Phase::UntilEof,
                    Kind::ChangeUser => Phase::UntilOk,
                    _ => Phase::First,
                };
                self.answer.start = Some(start);
                self.answer.phase = Some(phase);
            } else if seq != self.answer.next_seq && self.answer.phase != Some(Phase::UntilOk) {
                if seq != 1 {
                    return false;
                }
                self.finish(self.answer.last_end, out); // its end went unnoticed
                continue;
            }
            break;
        }
        self.answer.next_seq = last_seq.wrapping_add(1);
        self.answer.last_end = end;
        self.step(w, plen, end, out);
        true
    }

    /// Advance the current answer by the packet `w` (payload length `plen`).
    pub(super) fn step(&mut self, w: &[u8], plen: u64, end: u64, out: &mut Vec<MySqlEvent>) {
        let first = w.first().copied();
        let eof = first == Some(0xfe) && plen <= 5;
        let terminator = first == Some(0xfe) && plen < MORE;
        let Some(phase) = self.answer.phase else {
            return;
        };
        let next = match (phase, first) {
            (_, Some(0xff)) => {
                self.answer.error = Some(err_packet(w, plen));
                None
            }
            (Phase::First, _) => match &self.pending.front().map(|p| &p.0) {
                Some(Kind::Prepare(q)) => {
                    let (id, cols) = (u32le(w, 1), u16le(w, 5).unwrap_or(0));
                    let params = u16le(w, 7).unwrap_or(0);
                    match (first, id) {
                        (Some(0), Some(id)) => {
                            self.statements.insert(id, q.clone());
                            let (params, cols) = (u64::from(params), u64::from(cols));
                            sections(params, After::PrepCols(cols))
                        }
                        _ => None,
                    }
                }
                Some(Kind::Single) => None,
                _ => match first {
                    Some(0) => {
                        let (rows, status) = ok_packet(w);
                        self.add_rows(rows);
                        (status & MORE_RESULTS != 0).then_some(Phase::First)
                    }
                    Some(0xfb) => Some(Phase::UntilOk),
                    Some(0xfe) | None => None,
                    Some(_) => match lenenc(w) {
                        Some((n, _)) if n > 0 => Some(Phase::Defs(n, After::Rows)),
                        _ => None,
                    },
                },
            },
            (Phase::Defs(n, after), _) if n > 1 => Some(Phase::Defs(n - 1, after)),
            (Phase::Defs(_, After::Rows), _) => Some(Phase::Eof(After::Rows)),
            (Phase::Defs(_, after), _) => match (self.deprecate_eof, after) {
                (true, After::PrepCols(c)) => sections(c, After::Done),
                (true, _) => None,
                (false, _) => Some(Phase::Eof(after)),
            },
            (Phase::Eof(after), _) if eof => {
                let status = u16le(w, 3).unwrap_or(0);
                match after {
                    After::Rows if status & CURSOR_EXISTS != 0 => None,
                    After::Rows => Some(Phase::Rows),
                    After::PrepCols(c) => sections(c, After::Done),
                    After::Done => None,
                }
            }
            (Phase::Eof(after), _) => {
                self.deprecate_eof = true; // no EOF after definitions
                self.answer.phase = match after {
                    After::Rows => Some(Phase::Rows),
                    After::PrepCols(c) => sections(c, After::Done),
                    After::Done => None,
                };
                if self.answer.phase.is_some() {
                    return self.step(w, plen, end, out);
                }
                None
            }
            (Phase::Rows, _) if terminator => {
                let status = match eof {
                    true => u16le(w, 3).unwrap_or(0),
                    false => ok_packet(w).1,
                };
                self.add_rows(0);
                (status & MORE_RESULTS != 0).then_some(Phase::First)
            }
            (Phase::Rows, _) => {
                self.add_rows(1);
                Some(Phase::Rows)
            }
            (Phase::UntilOk, Some(0)) => {
                self.add_rows(ok_packet(w).0);
                None
            }
            (Phase::UntilEof, _) if terminator => None,
            (Phase::UntilOk | Phase::UntilEof, _) => Some(phase),
        };
        match next {
            Some(phase) => self.answer.phase = Some(phase),
            None => self.finish(end, out),
        }
    }
}

/// The phase reading `n` definitions followed by `after` (`None`: the answer is over).
pub(super) fn sections(n: u64, after: After) -> Option<Phase> {
    match (n, after) {
        (0, After::PrepCols(c)) => sections(c, After::Done),
        (0, _) => None,
        (n, after) => Some(Phase::Defs(n, after)),
    }
}

/// `USE db` → db.
pub(super) fn use_db(q: &str) -> Option<String> {
    let rest = q.trim_start();
    let kw = rest.get(..4).filter(|k| k.eq_ignore_ascii_case("use "))?;
    let db = rest[kw.len()..].trim().trim_end_matches(';').trim();
    let db = db
        .strip_prefix('`')
        .and_then(|d| d.strip_suffix('`'))
        .unwrap_or(db);
    (!db.is_empty() && !db.contains(char::is_whitespace)).then(|| db.to_owned())
}

db_shared!(Shared);
