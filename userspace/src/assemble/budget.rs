//! The global budget of parser memory: one byte count over every tracked connection's parser
//! (what [`ParserSet::held`](ztrace_protocols::ParserSet::held) reports: partial heads, header
//! blocks, HPACK tables, streams, prepared statements). Each connection has caps of its own,
//! but 65,536 connections times those caps is gigabytes (slowloris heads, CONTINUATION floods);
//! this bounds the sum.
//!
//! The accounting is a move of each connection's charge to what its parser holds after every
//! push, and a release of the whole charge when the connection goes (close, process exit, idle
//! expiry, eviction from a full table, shutdown) or is shed. Only the assembler's thread touches
//! it: no atomics. A connection whose push takes the total over the limit is shed — its parser
//! dropped with everything it buffered — so the total exceeds the limit by at most what one push
//! can add to one parser. It owns the numbers only; what shedding does to a connection's
//! exchanges is the assembler's.

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    /// The sum of every live connection's charge.
    used: usize,
    /// The most `used` ever was.
    pub peak: usize,
    /// Connections shed to stay within the limit.
    pub shed: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(crate::config::DEFAULT_PARSER_BUDGET)
    }
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: 0,
            peak: 0,
            shed: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Bytes charged to live connections now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Moves a connection's charge from `*charged` to `held`. False when the connection grew
    /// and the total is now over the limit: the caller must shed it (see [`Self::release`]).
    #[must_use]
    pub fn charge(&mut self, charged: &mut usize, held: usize) -> bool {
        let grew = held > *charged;
        // `used` is the sum of the charges, so it holds at least this one.
        self.used = self.used.saturating_sub(*charged).saturating_add(held);
        *charged = held;
        self.peak = self.peak.max(self.used);
        !(grew && self.used > self.limit)
    }

    /// The connection's parser is gone: its whole charge comes back.
    pub fn release(&mut self, charged: &mut usize) {
        self.used = self.used.saturating_sub(std::mem::take(charged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_move_and_release_to_zero() {
        let mut b = Budget::new(100);
        let (mut x, mut y) = (0, 0);
        assert!(b.charge(&mut x, 60));
        assert!(b.charge(&mut y, 30));
        assert_eq!(b.used(), 90);
        assert!(b.charge(&mut x, 20), "shrinking is always fine");
        assert_eq!(b.used(), 50);
        assert!(!b.charge(&mut y, 90), "growing over the limit");
        assert_eq!((b.used(), b.peak), (110, 110));
        b.release(&mut y);
        assert_eq!((b.used(), y), (20, 0));
        b.release(&mut x);
        assert_eq!(b.used(), 0);
        b.release(&mut x);
        assert_eq!(b.used(), 0, "a second release is a no-op");
    }
}
