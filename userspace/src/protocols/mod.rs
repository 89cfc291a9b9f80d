//! Protocol parsers: pure functions over captured byte streams (no I/O, no clocks, no globals).

pub mod http1;
