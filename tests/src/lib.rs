//! Helpers shared by ztrace's tests: an in-process OTLP/gRPC receiver and the plumbing that
//! starts the traced services and the ztrace binary.

pub mod harness;
pub mod receiver;
pub mod signals;
