//! Content evidence (linker docs, rule 6): the identifier-like tokens a call shares with one
//! in-progress request separate candidates the thread's context cannot. Tokens are hashed and
//! dropped at release; nothing is exported.

use super::held::Handle;
use super::linker::Linker;
use crate::model::Exchange;

/// How many in-progress SERVER spans of a process content matching looks at (newest first).
pub(super) const MAX_CANDIDATES: usize = 256;
/// How many content tokens a span keeps.
const MAX_TOKENS: usize = 8;

/// The content tokens of an exchange (rule 6), hashed: the segments of an HTTP target (path
/// and query, split at `/ ? & = ; , :` and blanks), the words of a database command's key or
/// statement. Only identifier-like segments count — three characters or more with a digit,
/// or twelve or more — so words every request shares (`api`, `users`, `GET`) do not.
pub fn content_tokens(exchange: &Exchange, out: &mut Vec<u64>) {
    let mut add = |text: &str| {
        for t in
            text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
        {
            if out.len() >= MAX_TOKENS {
                return;
            }
            let digit = t.bytes().any(|b| b.is_ascii_digit());
            if (t.len() >= 3 && digit) || t.len() >= 12 {
                let h = {
                    use std::hash::{BuildHasher, BuildHasherDefault};
                    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(t)
                };
                if !out.contains(&h) {
                    out.push(h);
                }
            }
        }
    };
    match exchange {
        Exchange::Http(h) => add(&h.target),
        Exchange::Db(d) => {
            if let Some(c) = &d.collection {
                add(c);
            }
            if let Some(q) = &d.query_text {
                add(q);
            }
        }
        Exchange::Rpc(_) | Exchange::Dns(_) => {}
    }
}

impl Linker {
    /// Rule 6: the in-progress SERVER span of `pid` that shares the most content tokens with a
    /// call, if it shares strictly more than every other; and how many were in progress.
    pub(super) fn by_content(
        &mut self,
        pid: u32,
        call: &[u64],
        at_ns: u64,
    ) -> (Option<Handle>, usize) {
        let Some(list) = self.open_servers.get_mut(&pid) else {
            return (None, 0);
        };
        let recs = &self.recs;
        list.retain(|h| {
            recs.get(h)
                .is_some_and(|r| r.end_ns.is_none() && !r.responding)
        });
        let (mut best, mut best_score, mut second, mut candidates) = (None, 0usize, 0usize, 0);
        for h in list.iter().rev().take(MAX_CANDIDATES) {
            let Some(r) = recs.get(h) else { continue };
            if r.start_ns > at_ns {
                continue;
            }
            candidates += 1;
            let score = call.iter().filter(|t| r.tokens.contains(t)).count();
            if score > best_score {
                second = best_score;
                best_score = score;
                best = Some(*h);
            } else if score > second {
                second = score;
            }
        }
        ((best_score > second).then_some(best).flatten(), candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::context::Io;
    use crate::link::linker::Start;
    use crate::link::testutil::*;
    use crate::model::{HttpExchange, SpanKind};

    fn with_target(mut s: Start, target: &str) -> Start {
        s.exchange = Exchange::Http(HttpExchange {
            method: "GET".into(),
            target: target.into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn content_shared_with_one_request_separates_the_candidates() {
        // The same interleaving, but each call carries its request's id; a third call carries
        // a token both requests share (no margin) and stays unlinked. Without content evidence
        // (evaluation switch) all three abstain.
        for content in [true, false] {
            let mut l = Linker::new(0, 100, None);
            if !content {
                l = l.without_content_evidence();
            }
            let a = l.start(with_target(
                start(SpanKind::Server, 1, 1, 10),
                "/r/a1-7?v=2024",
            ));
            l.io(1, 1, Io::ServerRequest(a));
            let b = l.start(with_target(
                start(SpanKind::Server, 1, 1, 11),
                "/r/b2-9?v=2024",
            ));
            l.io(1, 1, Io::ServerRequest(b));
            let cb = l.start(with_target(start(SpanKind::Client, 1, 1, 12), "/x/b2-9"));
            let ca = l.start(with_target(start(SpanKind::Client, 1, 1, 13), "/y/a1-7"));
            let both = l.start(with_target(start(SpanKind::Client, 1, 1, 14), "/z?v=2024"));
            for (c, t) in [(cb, 15), (ca, 16), (both, 17)] {
                returns(&mut l, 1, 1, c, t);
            }
            reply(&mut l, 1, 1, a, 18);
            reply(&mut l, 1, 1, b, 19);
            let out = settle(&mut l);
            if content {
                assert_eq!(parents(&out), [None, None, Some(1), Some(0), None]);
                assert_eq!(l.stats.content_links, 2);
                assert_eq!(l.stats.abstained_mixed_inputs, 1);
            } else {
                assert_eq!(parents(&out), [None; 5]);
                assert_eq!(l.stats.content_links, 0);
                assert_eq!(l.stats.abstained_mixed_inputs, 3);
            }
        }
    }

    #[test]
    fn a_pool_threads_stale_input_is_not_the_cause() {
        // A handler thread hands its call to a pool thread whose last input answered another
        // request's call: content names the request, the stale input does not.
        let mut l = Linker::new(0, 100, None);
        let a = l.start(with_target(start(SpanKind::Server, 1, 1, 10), "/r/a1-7"));
        l.io(1, 1, Io::ServerRequest(a));
        let ca = l.start(with_target(start(SpanKind::Client, 1, 9, 11), "/b/a1-7"));
        returns(&mut l, 1, 9, ca, 12);
        let b = l.start(with_target(start(SpanKind::Server, 1, 2, 13), "/r/b2-9"));
        l.io(1, 2, Io::ServerRequest(b));
        let cb = l.start(with_target(start(SpanKind::Client, 1, 9, 14), "/b/b2-9"));
        returns(&mut l, 1, 9, cb, 15);
        reply(&mut l, 1, 2, b, 16);
        reply(&mut l, 1, 1, a, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, Some(2)]);
        assert_eq!(l.stats.content_overrode_thread, 1);
    }
}
