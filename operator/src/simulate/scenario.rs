//! Load scenarios: a rate profile built of segments (constant levels, ramps,
//! a daily curve) and the seeded ±noise laid over it, one rate per simulated
//! second.

use std::f64::consts::TAU;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long one noise draw lasts, in seconds: the load is multiplied by a
/// fresh random factor every 15 s (as often as the autoscalers sample), so
/// that noise survives their averaging instead of cancelling out within one
/// sample.
pub const NOISE_PERIOD_SECS: u64 = 15;

/// The shape of the load over one segment, in events per second.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// The same rate throughout.
    Constant(f64),
    /// A straight line from one rate to another.
    Ramp {
        /// Rate at the segment's start.
        from: f64,
        /// Rate at the segment's end.
        to: f64,
    },
    /// One period of a daily curve: `low` at the start and the end (night),
    /// `high` in the middle, following a cosine.
    Daily {
        /// Night-time rate.
        low: f64,
        /// Peak rate.
        high: f64,
    },
}

impl Shape {
    /// The rate at `fraction` (0 to 1) of the segment.
    fn rate(&self, fraction: f64) -> f64 {
        match *self {
            Shape::Constant(rate) => rate,
            Shape::Ramp { from, to } => from + (to - from) * fraction,
            Shape::Daily { low, high } => low + (high - low) * (1.0 - (TAU * fraction).cos()) / 2.0,
        }
    }
}

/// One piece of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Length in seconds.
    pub secs: u64,
    /// The load over it.
    pub shape: Shape,
}

/// A named load profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short name, as `--scenario` takes it.
    pub name: &'static str,
    /// What the load does, in words.
    pub description: &'static str,
    /// The segments, in order.
    pub segments: Vec<Segment>,
}

/// The name of every built-in scenario, in the order they run.
pub const NAMES: [&str; 4] = ["steady", "step", "ramp", "daily"];

const MINUTE: u64 = 60;

impl Scenario {
    /// The built-in scenario called `name`, if there is one.
    pub fn named(name: &str) -> Option<Scenario> {
        let (description, segments) = match name {
            "steady" => (
                "40k/s for an hour: noise only, nothing to scale for",
                vec![segment(60 * MINUTE, Shape::Constant(40_000.0))],
            ),
            "step" => (
                "10k/s for 10 min, a step to 35k/s for 30 min, back to 10k/s for 20 min",
                vec![
                    segment(10 * MINUTE, Shape::Constant(10_000.0)),
                    segment(30 * MINUTE, Shape::Constant(35_000.0)),
                    segment(20 * MINUTE, Shape::Constant(10_000.0)),
                ],
            ),
            "ramp" => (
                "5k/s, a 30-min ramp to 60k/s, 10 min at 60k/s, a 15-min ramp back down",
                vec![
                    segment(5 * MINUTE, Shape::Constant(5_000.0)),
                    segment(
                        30 * MINUTE,
                        Shape::Ramp {
                            from: 5_000.0,
                            to: 60_000.0,
                        },
                    ),
                    segment(10 * MINUTE, Shape::Constant(60_000.0)),
                    segment(
                        15 * MINUTE,
                        Shape::Ramp {
                            from: 60_000.0,
                            to: 5_000.0,
                        },
                    ),
                ],
            ),
            "daily" => (
                "a day: 4k/s at night, 50k/s at the midday peak",
                vec![segment(
                    24 * 60 * MINUTE,
                    Shape::Daily {
                        low: 4_000.0,
                        high: 50_000.0,
                    },
                )],
            ),
            _ => return None,
        };
        Some(Scenario {
            name: NAMES.iter().copied().find(|n| *n == name)?,
            description,
            segments,
        })
    }

    /// Every built-in scenario.
    pub fn all() -> Vec<Scenario> {
        NAMES
            .iter()
            .filter_map(|name| Scenario::named(name))
            .collect()
    }

    /// Length of the profile in seconds.
    pub fn secs(&self) -> u64 {
        self.segments.iter().map(|s| s.secs).sum()
    }

    /// The same profile stretched or squeezed to last `secs` seconds (each
    /// segment keeps its share; none shorter than a second).
    pub fn with_duration(&self, secs: u64) -> Scenario {
        let total = self.secs().max(1) as f64;
        let segments = self
            .segments
            .iter()
            .map(|s| Segment {
                secs: ((s.secs as f64 * secs as f64 / total).round() as u64).max(1),
                shape: s.shape.clone(),
            })
            .collect();
        Scenario {
            segments,
            ..self.clone()
        }
    }

    /// The rate without noise at each second.
    pub fn nominal_rates(&self) -> Vec<f64> {
        self.segments
            .iter()
            .flat_map(|s| (0..s.secs).map(move |t| s.shape.rate(t as f64 / s.secs as f64)))
            .collect()
    }

    /// Events arriving in each second: the nominal rate times a factor drawn
    /// uniformly from `[1 - noise, 1 + noise]` every [`NOISE_PERIOD_SECS`],
    /// from a generator seeded with `seed` (the same seed, the same load).
    pub fn rates(&self, noise: f64, seed: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = noise.clamp(0.0, 1.0);
        let mut factor = 1.0;
        self.nominal_rates()
            .into_iter()
            .enumerate()
            .map(|(t, rate)| {
                if (t as u64).is_multiple_of(NOISE_PERIOD_SECS) {
                    factor = 1.0 + rng.random_range(-noise..=noise);
                }
                (rate * factor).round().max(0.0) as u64
            })
            .collect()
    }

    /// The seconds at which the load steps up (a segment starting more than
    /// 10% above where the previous one ended): where time-to-catch-up is
    /// measured.
    pub fn step_ups(&self) -> Vec<u64> {
        let mut steps = Vec::new();
        let mut at = 0;
        for pair in self.segments.windows(2) {
            at += pair[0].secs;
            if pair[1].shape.rate(0.0) > pair[0].shape.rate(1.0) * 1.1 {
                steps.push(at);
            }
        }
        steps
    }
}

fn segment(secs: u64, shape: Shape) -> Segment {
    Segment { secs, shape }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_scenario() {
        assert_eq!(Scenario::all().len(), NAMES.len());
        assert!(Scenario::named("nope").is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_load_and_another_seed_another() {
        let step = Scenario::named("step").unwrap();
        assert_eq!(step.rates(0.2, 7), step.rates(0.2, 7));
        assert_ne!(step.rates(0.2, 7), step.rates(0.2, 8));
    }

    #[test]
    fn noise_stays_within_its_bounds_and_is_held_for_a_period() {
        let steady = Scenario::named("steady").unwrap();
        let rates = steady.rates(0.2, 1);
        assert!(rates.iter().all(|&r| (32_000..=48_000).contains(&r)));
        for chunk in rates.chunks(NOISE_PERIOD_SECS as usize) {
            assert!(chunk.iter().all(|&r| r == chunk[0]));
        }
        let spread = rates.iter().max().unwrap() - rates.iter().min().unwrap();
        assert!(spread > 8_000, "noise this narrow is no test: {spread}");
    }

    #[test]
    fn a_squeezed_profile_keeps_its_shape() {
        let step = Scenario::named("step").unwrap().with_duration(600);
        assert_eq!(step.secs(), 600);
        assert_eq!(step.step_ups(), [100]);
        let rates = step.nominal_rates();
        assert_eq!(
            (rates[50], rates[150], rates[550]),
            (10_000.0, 35_000.0, 10_000.0)
        );
    }

    #[test]
    fn the_daily_curve_peaks_at_midday() {
        let daily = Scenario::named("daily").unwrap();
        let rates = daily.nominal_rates();
        let peak = rates.iter().cloned().fold(0.0, f64::max);
        assert!((rates[12 * 3600] - 50_000.0).abs() < 1.0 && (peak - 50_000.0).abs() < 1.0);
        assert!((rates[0] - 4_000.0).abs() < 1.0);
        assert!(daily.step_ups().is_empty());
    }
}
