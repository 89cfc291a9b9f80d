//! One file per probe family.

pub mod io;
pub mod sched;
pub mod tls;
