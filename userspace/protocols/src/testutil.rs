//! Helpers shared by the parsers' unit tests: a tiny deterministic PRNG with the random
//! inputs the tests draw from it, and feeding a connection whole or in pieces.

use crate::{Dir, Parser};

/// Tiny deterministic PRNG (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as usize % n.max(1)
    }

    /// Fewer than `max` random bytes (the count is drawn first, then each byte).
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.below(256) as u8).collect()
    }

    /// Piece sizes for a random split: a largest size drawn from `maxes`, then `n` sizes in
    /// `1..=max`.
    pub(crate) fn sizes(&mut self, maxes: [usize; 4], n: usize) -> Vec<usize> {
        let max = maxes[self.below(4)];
        (0..n).map(|_| 1 + self.below(max)).collect()
    }

    /// Garbage made of fewer than `pieces` pieces: one in `kinds` is fewer than `random`
    /// random bytes, the others one of `bits` (with `suffixes`, half the time a random
    /// suffix of it).
    pub(crate) fn garbage<B: AsRef<[u8]>>(
        &mut self,
        bits: &[B],
        pieces: usize,
        kinds: usize,
        random: usize,
        suffixes: bool,
    ) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..self.below(pieces) {
            match self.below(kinds) {
                0 => data.extend(self.bytes(random)),
                _ => {
                    let b = bits[self.below(bits.len())].as_ref();
                    if suffixes {
                        let from = self.below(b.len());
                        data.extend_from_slice(&b[[0, from][self.below(2)]..]);
                    } else {
                        data.extend_from_slice(b);
                    }
                }
            }
        }
        data
    }

    /// A true byte count for `n` captured bytes: one in `kinds` times followed by a gap of
    /// fewer than `gap` bytes, one in `kinds` times a huge one, else exactly `n`.
    pub(crate) fn len(&mut self, n: usize, kinds: usize, gap: usize) -> u64 {
        match self.below(kinds) {
            0 => (n + self.below(gap)) as u64,
            1 => u64::MAX >> self.below(64),
            _ => n as u64,
        }
    }
}

/// The events of one push.
pub(crate) fn feed<C: Parser>(c: &mut C, dir: Dir, data: &[u8], len: u64) -> Vec<C::Event> {
    let mut out = Vec::new();
    c.push(dir, data, len, &mut out);
    out
}

/// Feed `data` in pieces of the given sizes, then the rest.
pub(crate) fn split<C: Parser>(c: &mut C, dir: Dir, data: &[u8], sizes: &[usize]) -> Vec<C::Event> {
    let (mut out, mut rest) = (Vec::new(), data);
    for &n in sizes.iter().chain([&usize::MAX]) {
        let (a, b) = rest.split_at(n.max(1).min(rest.len()));
        c.push(dir, a, a.len() as u64, &mut out);
        rest = b;
    }
    out
}
