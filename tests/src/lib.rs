//! Helpers shared by ztrace's tests: an in-process OTLP receiver (gRPC and HTTP; traces, metrics
//! and logs) with readers of what it received, the plumbing that
//! starts the traced services and the ztrace binary, and the ground-truth linking evaluation
//! (a multi-service topology and its scorer; its cross-host variant over network namespaces:
//! netns, xeval, xtopology); scratch directories removed when a test ends (temp).

pub mod eval;
pub mod faults;
pub mod harness;
pub mod kernel;
pub mod netns;
pub mod opamp;
pub mod receiver;
pub mod signals;
pub mod temp;
pub mod topology;
pub mod xeval;
pub mod xtopology;
