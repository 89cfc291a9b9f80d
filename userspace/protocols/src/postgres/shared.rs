//! What both directions share: the exchanges awaiting their ReadyForQuery, the extended batch
//! being read, what the server's next responses are about, the named statements and the
//! startup parameters.

use std::{collections::VecDeque, sync::Arc};

use crate::Dir;
use crate::sql::{TextCache, cstr, text};

use crate::dbconn::db_shared;

use super::*;

/// Longest query text kept, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Most named prepared statements remembered (and at most 256 KiB of their text).
pub const MAX_STATEMENTS: usize = crate::sql::MAX_CACHED;
/// Most exchanges awaiting their ReadyForQuery.
pub const MAX_PENDING: usize = 256;
pub(super) const SSL_REQUEST: u32 = 80_877_103;
pub(super) const GSS_REQUEST: u32 = 80_877_104;
pub(super) const CANCEL_REQUEST: u32 = 80_877_102;

/// The extended-protocol batch since the last Sync.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) start: Option<u64>,
    pub(super) parse: Option<Arc<str>>,
    pub(super) exec: Option<Arc<str>>,
    /// A Parse or Bind was seen.
    pub(super) fresh: bool,
}

/// What the server's next responses will be about.
#[derive(Default)]
pub(super) struct Answer {
    pub(super) start: Option<u64>,
    pub(super) error: Option<(String, String)>,
    pub(super) rows: Option<u64>,
    pub(super) tag: Option<String>,
}

/// State shared by both directions.
#[derive(Default)]
pub struct Shared {
    /// The client is past its untyped startup-phase messages.
    pub(super) typed: bool,
    /// An SSL/GSS request awaits its one-byte answer: the byte that accepts it.
    pub(super) encryption_asked: Option<u8>,
    /// Encrypted (or closed): nothing more to parse.
    pub(super) stopped: bool,
    pub(super) statements: TextCache<Box<str>>,
    pub(super) portals: TextCache<Box<str>>,
    pub(super) batch: Batch,
    /// A batch was reported at a Request-side desync: its tail (no Parse/Bind) and Sync
    /// may still come.
    pub(super) flushed: bool,
    /// Exchanges awaiting their `Z`, oldest first: `true` if reported by a Query event.
    pub(super) pending: VecDeque<bool>,
    pub(super) answer: Answer,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
}

impl Shared {
    pub(super) fn expect(&mut self, reported: bool, resp_offset: u64, out: &mut Vec<PgEvent>) {
        if self.pending.len() >= MAX_PENDING {
            // No answers for ages: give up on them (as after a Response-side desync).
            self.pending.clear();
            self.answer = Answer::default();
            let offset = resp_offset;
            out.push(PgEvent::Desync {
                dir: Dir::Response,
                offset,
            });
        }
        self.pending.push_back(reported);
    }

    /// End the current batch at `end` (its Sync's end, or a desync).
    pub(super) fn sync(&mut self, end: u64, resp_offset: u64, out: &mut Vec<PgEvent>) {
        let batch = std::mem::take(&mut self.batch);
        if std::mem::take(&mut self.flushed) && !batch.fresh {
            return; // the Sync of the batch reported at the desync
        }
        let known = batch.exec.clone().filter(|t| !t.is_empty());
        let text = known.or(batch.parse).or(batch.exec);
        self.expect(text.is_some(), resp_offset, out);
        if let Some(query) = text {
            out.push(PgEvent::Query {
                start: batch.start.unwrap_or(end),
                end,
                query: query.to_string(),
                prepared: true,
            });
        }
    }

    /// A frontend message; `false` if it makes no sense.
    pub(super) fn frontend(&mut self, m: Msg, resp_offset: u64, out: &mut Vec<PgEvent>) -> bool {
        let Msg {
            typ,
            w,
            cut,
            start,
            end,
        } = m;
        let name = |b: &[u8]| {
            String::from_utf8_lossy(cstr(b).0)
                .into_owned()
                .into_boxed_str()
        };
        let query = |b: &[u8]| {
            let (q, nul) = cstr(b);
            Arc::<str>::from(text(q, MAX_QUERY, cut && nul.is_none()))
        };
        if matches!(typ, b'Q' | b'P' | b'B') {
            self.flushed = false;
        }
        if matches!(typ, b'P' | b'B' | b'E' | b'D' | b'C') {
            self.batch.start.get_or_insert(start);
        }
        match typ {
            0 if w.len() < 4 => return false,
            0 => match be32(w) {
                SSL_REQUEST => self.encryption_asked = Some(b'S'),
                GSS_REQUEST => self.encryption_asked = Some(b'G'),
                CANCEL_REQUEST => {}
                code if code >> 16 == 3 => {
                    self.typed = true;
                    self.expect(false, resp_offset, out); // authentication ends with a `Z`
                    let mut params = w[4..].split(|&b| b == 0);
                    while let (Some(k), Some(v)) = (params.next(), params.next()) {
                        let v = || Some(text(v, 256, false));
                        match k {
                            b"user" => self.user = v(),
                            b"database" => self.database = v(),
                            _ => {}
                        }
                    }
                    let (user, database) = (self.user.clone(), self.database.clone());
                    out.push(PgEvent::Startup { user, database });
                }
                _ => return false,
            },
            b'Q' => {
                // A Query amid an unsynced batch: the batch's Sync will answer nothing known.
                self.batch = Batch::default();
                self.expect(true, resp_offset, out);
                let query = query(w).to_string();
                out.push(PgEvent::Query {
                    start,
                    end,
                    query,
                    prepared: false,
                });
            }
            b'P' => {
                let (stmt, rest) = cstr(w);
                let text = query(rest.unwrap_or_default());
                self.statements.insert(name(stmt), text.clone());
                self.batch.parse.get_or_insert(text);
                self.batch.fresh = true;
            }
            b'B' => {
                let (portal, rest) = cstr(w);
                let stmt = rest.map(cstr).filter(|(_, nul)| nul.is_some());
                let text = stmt.and_then(|(s, _)| self.statements.get(&*name(s)).cloned());
                self.portals.insert(name(portal), text.unwrap_or_default());
                self.batch.fresh = true;
            }
            b'E' => {
                let text = self.portals.get(&*name(w)).cloned();
                self.batch.exec.get_or_insert(text.unwrap_or_default());
            }
            b'C' => match w.split_first() {
                Some((b'S', n)) => self.statements.remove(&*name(n)),
                Some((b'P', n)) => self.portals.remove(&*name(n)),
                _ => {}
            },
            b'S' => self.sync(end, resp_offset, out),
            b'F' => self.expect(false, resp_offset, out),
            _ => {}
        }
        true
    }

    /// A backend message (always makes sense: its header was checked).
    pub(super) fn backend(&mut self, m: Msg, out: &mut Vec<PgEvent>) -> bool {
        let Msg {
            typ, w, start, end, ..
        } = m;
        if !self.pending.is_empty() && typ != b'A' {
            self.answer.start.get_or_insert(start);
        }
        match typ {
            b'E' if self.answer.error.is_none() => {
                let (mut code, mut msg) = (String::new(), String::new());
                let mut rest = w;
                while let Some((&field, tail)) = rest.split_first() {
                    let (value, next) = cstr(tail);
                    match field {
                        0 => break,
                        b'C' => code = text(value, 16, next.is_none()),
                        b'M' => msg = text(value, 1024, next.is_none()),
                        _ => {}
                    }
                    rest = next.unwrap_or_default();
                }
                self.answer.error = Some((code, msg));
            }
            b'C' => {
                let tag = text(cstr(w).0, 64, false);
                let mut words = tag.split(' ');
                const COUNTED: [&str; 8] = [
                    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "MOVE", "FETCH", "COPY",
                ];
                if words.next().is_some_and(|w| COUNTED.contains(&w))
                    && let Some(Ok(n)) = words.next_back().map(str::parse::<u64>)
                {
                    self.answer.rows = Some(self.answer.rows.unwrap_or(0).saturating_add(n));
                }
                self.answer.tag = Some(tag);
            }
            b'Z' => {
                let a = std::mem::take(&mut self.answer);
                if self.pending.pop_front() == Some(true) {
                    out.push(PgEvent::Result {
                        start: a.start.unwrap_or(start),
                        end,
                        error: a.error,
                        rows: a.rows,
                        command_tag: a.tag,
                    });
                }
            }
            _ => {}
        }
        true
    }
}

db_shared!(Shared);
