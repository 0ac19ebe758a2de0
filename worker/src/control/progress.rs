//! Rates and busy ratio over a sliding window, from samples of cumulative
//! counters. Pure: times are given, not read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Cumulative counters at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When the sample was taken.
    pub at: Instant,
    /// Records read so far.
    pub records_in: u64,
    /// Records written to the sink so far.
    pub records_out: u64,
    /// Wall time spent waiting for input (or stopped) so far.
    pub idle: Duration,
}

/// What a window of samples says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Records read per second.
    pub input_per_sec: f64,
    /// Records written per second.
    pub output_per_sec: f64,
    /// Share of wall time not spent waiting for input, in [0, 1].
    pub busy_ratio: f64,
}

/// Keeps the samples of the last `window`.
#[derive(Debug)]
pub struct ProgressWindow {
    window: Duration,
    samples: VecDeque<Sample>,
}

impl ProgressWindow {
    /// A window of the given length.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample and forgets those older than the window (keeping one
    /// at or beyond its start so the window stays covered).
    pub fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|s| sample.at.duration_since(s.at) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Rates and busy ratio between the oldest and the newest sample.
    pub fn progress(&self) -> Progress {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Progress::default();
        };
        let wall = last.at.duration_since(first.at).as_secs_f64();
        if wall <= 0.0 {
            return Progress::default();
        }
        let idle = last.idle.saturating_sub(first.idle).as_secs_f64();
        Progress {
            input_per_sec: last.records_in.saturating_sub(first.records_in) as f64 / wall,
            output_per_sec: last.records_out.saturating_sub(first.records_out) as f64 / wall,
            busy_ratio: (1.0 - idle / wall).clamp(0.0, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, secs: u64, records_in: u64, idle_ms: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_secs(secs),
            records_in,
            records_out: records_in / 2,
            idle: Duration::from_millis(idle_ms),
        }
    }

    #[test]
    fn rates_and_busy_ratio_over_the_window() {
        let t0 = Instant::now();
        let mut w = ProgressWindow::new(Duration::from_secs(10));
        assert_eq!(w.progress(), Progress::default());
        w.push(sample(t0, 0, 0, 0));
        assert_eq!(w.progress(), Progress::default());
        w.push(sample(t0, 2, 2000, 500));
        let p = w.progress();
        assert_eq!(p.input_per_sec, 1000.0);
        assert_eq!(p.output_per_sec, 500.0);
        assert_eq!(p.busy_ratio, 0.75);
        // Old samples fall out: only the last 10 s count.
        for s in 3..=30 {
            w.push(sample(t0, s, 2000 + (s - 2) * 100, 500 + (s - 2) * 1000));
        }
        let p = w.progress();
        assert!((p.input_per_sec - 100.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.busy_ratio, 0.0);
        assert!(w.samples.len() <= 12);
    }
}
