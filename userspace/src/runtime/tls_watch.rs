//! When to look at a traced process's OpenSSL again.
//!
//! A process is inspected when tracing starts and at every exec, but a program may load its
//! TLS library later: Python maps libssl when it first imports `ssl`, often seconds after the
//! exec, a plugin system on first use. Its TLS traffic would never be decoded. So a TLS
//! handshake record on a traced process's socket (the pipeline reports it,
//! [`super::pipeline::ProcChange::TlsHandshake`]) asks for another inspection — unless the
//! process's OpenSSL is probed already or its TLS stack is one ztrace cannot probe (both settled
//! until its next exec). The first handshake after an inspection asks at once, later ones at
//! most once per [`AGAIN_AFTER`] per process (a TLS stack ztrace does not recognise at all would
//! otherwise be read again at every connection). The connection that triggered it is usually
//! missed (it runs while the library is read and probed), later ones are not.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::capture::tls_target::TlsTarget;

/// Least time between two inspections of one process prompted by handshakes.
pub const AGAIN_AFTER: Duration = Duration::from_secs(2);
/// Most processes remembered; past it the memory starts afresh (an extra inspection each).
const MAX_PROCESSES: usize = 65_536;

#[derive(Default)]
pub struct TlsWatch {
    /// Processes whose TLS is decided until their next exec: OpenSSL probed, or uncovered.
    settled: HashSet<u32>,
    /// When a handshake last prompted an inspection of a process.
    asked: HashMap<u32, Instant>,
    /// Inspections prompted by a handshake (the exit summary's count).
    pub rechecks: u64,
}

impl TlsWatch {
    /// An inspection of `pid` was asked for at start, exec or selection: what it finds decides
    /// anew, and its first handshake after may ask again at once (a library is typically loaded
    /// in the first seconds after an exec, after that inspection).
    pub fn inspected(&mut self, pid: u32) {
        self.settled.remove(&pid);
        self.asked.remove(&pid);
    }

    /// What an inspection of `pid` found.
    pub fn answered(&mut self, pid: u32, target: &TlsTarget) {
        if matches!(target, TlsTarget::Probe(_) | TlsTarget::Uncovered(_)) {
            if self.settled.len() >= MAX_PROCESSES {
                self.settled.clear();
            }
            self.settled.insert(pid);
        }
    }

    /// `pid` did a TLS handshake: whether to inspect it again now.
    pub fn handshake(&mut self, pid: u32, now: Instant) -> bool {
        if self.settled.contains(&pid)
            || self
                .asked
                .get(&pid)
                .is_some_and(|&t| now.duration_since(t) < AGAIN_AFTER)
        {
            return false;
        }
        if self.asked.len() >= MAX_PROCESSES {
            self.asked.clear();
        }
        self.asked.insert(pid, now);
        self.rechecks += 1;
        true
    }

    pub fn exited(&mut self, pid: u32) {
        self.settled.remove(&pid);
        self.asked.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_again_only_when_undecided_and_not_too_often() {
        let mut w = TlsWatch::default();
        let t0 = Instant::now();
        w.inspected(7);
        w.answered(7, &TlsTarget::Nothing);
        // The first handshake after the exec's inspection: at once.
        assert!(w.handshake(7, t0));
        assert!(!w.handshake(7, t0 + Duration::from_millis(100)));
        assert!(w.handshake(7, t0 + AGAIN_AFTER));
        assert!(!w.handshake(7, t0 + AGAIN_AFTER + Duration::from_millis(1)));
        // Found something it cannot probe: settled, never again until an exec.
        w.answered(7, &TlsTarget::Uncovered("rustls"));
        assert!(!w.handshake(7, t0 + AGAIN_AFTER * 10));
        w.inspected(7); // its exec
        w.answered(7, &TlsTarget::Nothing);
        assert!(w.handshake(7, t0 + AGAIN_AFTER * 10));
        // A process never inspected (traced before its handshake was seen) is asked at once.
        assert!(w.handshake(8, t0));
        w.exited(8);
        assert!(w.handshake(8, t0));
        assert_eq!(w.rechecks, 5);
    }
}
