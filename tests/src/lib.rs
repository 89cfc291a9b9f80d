//! Helpers shared by ztrace tests: an in-process OTLP/gRPC receiver.

pub mod receiver;
