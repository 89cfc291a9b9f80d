//! Shutdown and deadlines shared by the span worker and the OTLP outputs: the shutdown request
//! ([`Control`]), [`sleep_until`] and [`FOREVER`]. Owns no queue and no output.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Reads the shutdown request (a deadline) for the worker and the outputs.
pub(crate) struct Control {
    pub(super) rx: watch::Receiver<Option<Instant>>,
    /// Set when the [`Exporter`] was dropped without `shutdown`: flush for `grace`, then stop.
    pub(super) fallback: Option<Instant>,
    pub(super) grace: Duration,
}

impl Control {
    /// The shutdown deadline, once shutdown was requested.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (*self.rx.borrow()).or(self.fallback)
    }

    /// Completes once shutdown has been requested (immediately if it already was).
    pub(crate) async fn requested(&mut self) {
        while self.deadline().is_none() {
            if self.rx.changed().await.is_err() {
                self.fallback = Some(Instant::now() + self.grace);
            }
        }
    }
}

/// Completes at `at`, or never.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stands in for "never" where a deadline must be an [`Instant`].
pub const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
