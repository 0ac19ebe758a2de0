//! The input rate of `weir run` over time: `RATE:DURATION` steps such as
//! `2k:20s,30k:60s,2k:60s` (2,000 events per second for 20 s, then 30,000
//! for a minute, then 2,000 again).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The default profile: a quiet start, a burst that needs several workers
/// of the default capacity (2,000 events per second each), and a quiet end
/// that lets the job scale back down. It produces 380,000 events, under
/// what the embedded Kafka keeps per partition when spread over 12.
pub const DEFAULT_PROFILE: &str = "1k:20s,5k:60s,1k:60s";

/// One step of a profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateStep {
    /// Events per second.
    pub rate: f64,
    /// How long the step lasts.
    pub duration: Duration,
}

/// A sequence of constant-rate steps.
#[derive(Clone, Debug, PartialEq)]
pub struct RateProfile {
    steps: Vec<RateStep>,
}

/// Why a profile was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--profile {text:?}: {reason} (expected steps like 2k:20s,30k:60s)")]
pub struct ProfileError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RateProfile {
    /// The total length.
    pub fn length(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// The rate at `elapsed` since the start; after the end, the last
    /// step's rate (the profile holds its last step).
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let mut end = Duration::ZERO;
        for step in &self.steps {
            end += step.duration;
            if elapsed < end {
                return step.rate;
            }
        }
        self.steps.last().map_or(0.0, |s| s.rate)
    }

    /// The same steps at `factor` times the rate.
    pub fn scaled(&self, factor: f64) -> RateProfile {
        RateProfile {
            steps: self
                .steps
                .iter()
                .map(|s| RateStep {
                    rate: s.rate * factor,
                    duration: s.duration,
                })
                .collect(),
        }
    }

    /// Events due in `[0, elapsed)`: the integral of the rate.
    pub fn events_until(&self, elapsed: Duration) -> u64 {
        let mut total = 0.0;
        let mut start = Duration::ZERO;
        for step in &self.steps {
            let end = start + step.duration;
            let covered = elapsed.min(end).saturating_sub(start);
            total += covered.as_secs_f64() * step.rate;
            start = end;
        }
        let after = elapsed.saturating_sub(start);
        total += after.as_secs_f64() * self.steps.last().map_or(0.0, |s| s.rate);
        total as u64
    }
}

fn parse_rate(text: &str) -> Option<f64> {
    let (digits, factor) = match text.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1e3),
        None => match text.strip_suffix(['m', 'M']) {
            Some(d) => (d, 1e6),
            None => (text, 1.0),
        },
    };
    let value: f64 = digits.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * factor)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (digits, factor) = if let Some(d) = text.strip_suffix("ms") {
        (d, 0.001)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1.0)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60.0)
    } else if let Some(d) = text.strip_suffix('h') {
        (d, 3600.0)
    } else {
        return None;
    };
    let value: f64 = digits.parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| Duration::from_secs_f64(value * factor))
}

impl FromStr for RateProfile {
    type Err = ProfileError;

    fn from_str(text: &str) -> Result<Self, ProfileError> {
        let error = |reason: String| ProfileError {
            text: text.to_owned(),
            reason,
        };
        let mut steps = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (rate, duration) = part
                .split_once(':')
                .ok_or_else(|| error(format!("step {part:?} has no `:`")))?;
            let rate = parse_rate(rate)
                .ok_or_else(|| error(format!("{rate:?} is not a rate such as 2k or 500")))?;
            let duration = parse_duration(duration).ok_or_else(|| {
                error(format!("{duration:?} is not a duration such as 20s or 2m"))
            })?;
            steps.push(RateStep { rate, duration });
        }
        Ok(RateProfile { steps })
    }
}

impl fmt::Display for RateProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{}/s for {}s", s.rate, s.duration.as_secs_f64()))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_parses() {
        let profile: RateProfile = DEFAULT_PROFILE.parse().unwrap();
        assert_eq!(profile.length(), Duration::from_secs(140));
        assert_eq!(profile.rate_at(Duration::from_secs(0)), 1000.0);
        assert_eq!(profile.rate_at(Duration::from_secs(20)), 5000.0);
        assert_eq!(profile.rate_at(Duration::from_secs(139)), 1000.0);
        assert_eq!(profile.rate_at(Duration::from_secs(500)), 1000.0);
        assert_eq!(profile.events_until(profile.length()), 380_000);
    }

    #[test]
    fn events_are_the_integral_of_the_rate() {
        let profile: RateProfile = "1k:10s,0:5s,500:1m".parse().unwrap();
        assert_eq!(profile.events_until(Duration::from_secs(5)), 5_000);
        assert_eq!(profile.events_until(Duration::from_secs(15)), 10_000);
        assert_eq!(profile.events_until(Duration::from_secs(75)), 40_000);
        // The last step holds.
        assert_eq!(profile.events_until(Duration::from_secs(85)), 45_000);
    }

    #[test]
    fn bad_profiles_name_the_step() {
        for (text, reason) in [
            ("2k", "has no `:`"),
            ("x:10s", "not a rate"),
            ("2k:10", "not a duration"),
            ("2k:-1s", "not a duration"),
        ] {
            let err = text.parse::<RateProfile>().unwrap_err();
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
    }
}
