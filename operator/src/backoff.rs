//! Exponential backoff of failing reconciliations, per job.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Delay before the first retry.
pub const BASE_DELAY: Duration = Duration::from_secs(5);
/// Longest delay between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay before retrying after `failures` consecutive failures (from 1):
/// 5s, 10s, 20s, ... up to 5 minutes.
pub fn delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE_DELAY.saturating_mul(1 << exponent).min(MAX_DELAY)
}

/// Consecutive failures per object key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records one more failure of `key` and returns the delay before its retry.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        delay(*count)
    }

    /// The consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the failures of `key` after a successful reconciliation.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn success_resets_the_count() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("ns/a"), Duration::from_secs(5));
        assert_eq!(backoff.failed("ns/a"), Duration::from_secs(10));
        assert_eq!(backoff.failed("ns/b"), Duration::from_secs(5));
        assert_eq!(backoff.failures("ns/a"), 2);
        backoff.succeeded("ns/a");
        assert_eq!(backoff.failures("ns/a"), 0);
        assert_eq!(backoff.failed("ns/a"), Duration::from_secs(5));
    }
}
