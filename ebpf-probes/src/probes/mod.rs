//! One file per probe family.

pub mod io;
pub mod net;
pub mod record;
pub mod sched;
pub mod sock;
pub mod tls;
