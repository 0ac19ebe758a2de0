//! A cap on the records a worker processes per second. Local mode runs all
//! workers in one process on the machine's few cores; the cap stands for
//! the CPU limit of a pod, so that more workers mean more capacity and the
//! autoscaler has something to scale. Time spent waiting on the cap counts
//! as busy: a capped worker at its cap is a saturated worker.

use std::time::{Duration, Instant};

/// The most the cap saves up while the worker is under it: a second's
/// worth, so an idle worker does not burst far above its cap.
const SAVED: Duration = Duration::from_secs(1);

/// A token bucket over records.
#[derive(Debug)]
pub struct Throttle {
    per_second: f64,
    /// When the record count started.
    since: Instant,
    /// Records processed since `since`.
    records: f64,
}

impl Throttle {
    /// A cap of `per_second` records per second (at least 1), starting at
    /// `now`.
    pub fn new(per_second: u64, now: Instant) -> Throttle {
        Throttle {
            per_second: per_second.max(1) as f64,
            since: now,
            records: 0.0,
        }
    }

    /// Counts `records` processed at `now`; returns how long to wait before
    /// processing more.
    pub fn record(&mut self, records: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.since);
        let earned = elapsed.as_secs_f64() * self.per_second;
        let saved = SAVED.as_secs_f64() * self.per_second;
        if earned - self.records > saved {
            // Under the cap for a while: keep at most a second's credit.
            self.records = earned - saved;
        }
        self.records += records as f64;
        let due = Duration::from_secs_f64(self.records / self.per_second);
        due.saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_is_held_to_the_cap() {
        let start = Instant::now();
        let mut throttle = Throttle::new(1000, start);
        // 500 records at once: half a second's worth.
        assert_eq!(throttle.record(500, start), Duration::from_millis(500));
        // After the wait, another 500 are due a second after the start.
        let later = start + Duration::from_millis(500);
        assert_eq!(throttle.record(500, later), Duration::from_millis(500));
    }

    #[test]
    fn idle_time_saves_at_most_a_second() {
        let start = Instant::now();
        let mut throttle = Throttle::new(1000, start);
        let later = start + Duration::from_secs(10);
        // A second's credit goes free, the rest waits.
        assert_eq!(throttle.record(1000, later), Duration::ZERO);
        assert_eq!(throttle.record(1000, later), Duration::from_secs(1));
    }
}
