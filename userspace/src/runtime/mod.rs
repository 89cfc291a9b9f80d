//! Runs the data path: live capture into the pipeline or a record file (`live`, its sink
//! `destination`), replay of a
//! record file (`replay`), the replay throughput benchmark (`bench`), the I/O-free pipeline that
//! chains the stages, the record file format (`record`) and the sink that writes it
//! (`record_sink`), the daemon's start-up before its seccomp filter (`startup`), when to inspect a
//! process's OpenSSL again (`tls_watch`), and the daemon's own telemetry. This is the shell that wires stages
//! together; stage logic belongs in the stage folders, not here.

pub mod bench;
mod destination;
pub mod live;
pub mod pipeline;
pub mod record;
mod record_sink;
pub mod replay;
mod selection;
mod startup;
pub mod telemetry;
mod tls_watch;
