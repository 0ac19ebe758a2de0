//! The heartbeat of a worker's processing loop, behind `/healthz`.
//!
//! The loop stamps it at every turn (also while stopped after a
//! stop-with-savepoint, when it only waits for commands) and between the
//! chunks of a long timer firing. A loop that has not beaten for
//! [`HEARTBEAT_TIMEOUT`] is stuck (a producer queue that never drains, a
//! hung storage call), and `/healthz` says so with 503, so that Kubernetes
//! restarts the pod, which restores from the last checkpoint. Before the
//! first beat (restoring, which may download a lot of state) the worker
//! counts as alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the processing loop may go without beating before `/healthz`
/// fails: two minutes, longer than any checkpoint should block the loop (a
/// producer flush and a transaction commit may take up to
/// [`crate::kafka::producer::TRANSACTION_TIMEOUT`], a minute, each).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(120);

/// When the processing loop last beat, shared between the loop and the
/// HTTP handlers (cloning shares it).
#[derive(Clone, Debug)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What the stamps count from.
    origin: Instant,
    /// Milliseconds from `origin` to the last beat, plus one; 0: never.
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has not beaten yet.
    pub fn new() -> Heartbeat {
        Heartbeat::since(Instant::now())
    }

    fn since(origin: Instant) -> Heartbeat {
        Heartbeat {
            inner: Arc::new(Inner {
                origin,
                last: AtomicU64::new(0),
            }),
        }
    }

    /// Stamps the heartbeat now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.inner.origin).as_millis();
        let stamp = u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1;
        self.inner.last.store(stamp, Ordering::Relaxed);
    }

    /// How long ago the loop last beat at `now`; `None` if it never did.
    pub fn age_at(&self, now: Instant) -> Option<Duration> {
        let stamp = self.inner.last.load(Ordering::Relaxed);
        let last = self.inner.origin + Duration::from_millis(stamp.checked_sub(1)?);
        Some(now.saturating_duration_since(last))
    }

    /// Why the loop counts as stuck at `now` with a bound of `timeout`:
    /// `None` while it beats (or before its first beat).
    pub fn stuck_at(&self, now: Instant, timeout: Duration) -> Option<String> {
        let age = self.age_at(now)?;
        (age > timeout).then(|| {
            format!(
                "the processing loop has not made progress for {} s (bound {} s)",
                age.as_secs(),
                timeout.as_secs()
            )
        })
    }
}

#[cfg(test)]
impl Heartbeat {
    /// A heartbeat whose clock started `ago` and that beat `beat_ago` ago.
    pub(crate) fn beaten(ago: Duration, beat_ago: Duration) -> Heartbeat {
        let now = Instant::now();
        let heartbeat = Heartbeat::since(now.checked_sub(ago).unwrap_or(now));
        heartbeat.beat_at(now.checked_sub(beat_ago).unwrap_or(now));
        heartbeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_stuck() {
        let timeout = Duration::from_secs(60);
        let fresh = Heartbeat::new();
        assert_eq!(fresh.stuck_at(Instant::now(), timeout), None, "not started");
        fresh.beat();
        let now = Instant::now();
        assert_eq!(fresh.stuck_at(now, timeout), None);
        let later = now + Duration::from_secs(61);
        let reason = fresh.stuck_at(later, timeout).unwrap();
        assert!(reason.contains("for 61 s (bound 60 s)"), "{reason}");
        let old = Heartbeat::beaten(Duration::from_secs(300), Duration::from_secs(200));
        assert!(old.stuck_at(Instant::now(), timeout).is_some());
        old.beat();
        assert_eq!(old.stuck_at(Instant::now(), timeout), None);
    }
}
