//! Tests of the autoscaler: bounds, rates, decisions and their controls.

use super::*;
use proptest::prelude::*;

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;

fn policy(partitions: i32) -> Policy {
    Policy::new(&AutoscalerSpec::default(), partitions)
}

/// A job whose workers each process `capacity` records/s, fed `load(t)`
/// records/s, sampled every 15 s; a rescale stops processing for one
/// interval (savepoint, restart, restore).
struct Simulation {
    autoscaler: Autoscaler,
    capacity: f64,
    parallelism: i32,
    now: i64,
    high_watermarks: f64,
    lag: f64,
    processed: f64,
    last_rescale: i64,
    restarting: bool,
    rescales: Vec<i32>,
}

impl Simulation {
    fn new(policy: Policy, parallelism: i32, capacity: f64) -> Self {
        Self {
            autoscaler: Autoscaler::new(policy),
            capacity,
            parallelism,
            now: 0,
            high_watermarks: 0.0,
            lag: 0.0,
            processed: 0.0,
            last_rescale: 0,
            restarting: false,
            rescales: Vec::new(),
        }
    }

    fn run(&mut self, until: i64, load: impl Fn(i64) -> f64) {
        let step = 15 * SECOND;
        while self.now < until {
            self.now += step;
            let seconds = step as f64 / 1000.0;
            let arrived = load(self.now) * seconds;
            self.high_watermarks += arrived;
            let capacity = if self.restarting {
                0.0
            } else {
                self.capacity * f64::from(self.parallelism) * seconds
            };
            let done = (self.lag + arrived).min(capacity);
            self.lag += arrived - done;
            self.processed += done;
            let busy = if self.restarting {
                None
            } else {
                Some(done / capacity)
            };
            self.restarting = false;
            self.autoscaler.observe(Sample {
                at_ms: self.now,
                high_watermarks: self.high_watermarks as i64,
                lag: self.lag as i64,
                processed: Some(self.processed as u64),
                busy_ratio: busy,
                parallelism: self.parallelism,
            });
            if let Decision::Rescale { to, .. } =
                self.autoscaler.decide(self.parallelism, self.last_rescale)
            {
                self.rescales.push(to);
                self.parallelism = to;
                self.last_rescale = self.now;
                self.restarting = true;
            }
        }
    }
}

/// Deterministic noise in [-amplitude, +amplitude].
fn noise(t: i64, amplitude: f64) -> f64 {
    let x = (t / 1000) as u64;
    let hash = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xD1B5_4A32_D192_ED03;
    let unit = (hash % 10_000) as f64 / 10_000.0;
    (unit * 2.0 - 1.0) * amplitude
}

#[test]
fn a_step_of_load_is_met_in_one_rescale() {
    // 12 partitions, 10k/s per worker, 70% target: 35k/s needs 5 workers,
    // which spread 12 tasks unevenly, so 6.
    let mut sim = Simulation::new(policy(12), 2, 10_000.0);
    sim.run(10 * MINUTE, |_| 10_000.0);
    assert!(sim.rescales.is_empty(), "steady load: {:?}", sim.rescales);
    sim.run(40 * MINUTE, |_| 35_000.0);
    assert_eq!(sim.rescales, [6], "one rescale, straight to 6");
    assert!(sim.lag < 35_000.0, "the lag is worked off: {}", sim.lag);
}

#[test]
fn noise_of_twenty_percent_does_not_cause_rescales() {
    // 40k/s needs 5.7 workers at 70%: noise pushes single readings past
    // 6, which must not send the job to 12.
    let mut sim = Simulation::new(policy(12), 6, 10_000.0);
    sim.run(60 * MINUTE, |t| 40_000.0 * (1.0 + noise(t, 0.2)));
    assert!(sim.rescales.is_empty(), "flapped: {:?}", sim.rescales);
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    let mut sim = Simulation::new(policy(12), 12, 10_000.0);
    // 14k/s needs 2 workers at 70%.
    sim.run(9 * MINUTE, |_| 14_000.0);
    assert!(
        sim.rescales.is_empty(),
        "scaled down within the window: {:?}",
        sim.rescales
    );
    sim.run(30 * MINUTE, |_| 14_000.0);
    assert_eq!(sim.rescales, [2]);
}

#[test]
fn scale_up_waits_for_the_cooldown() {
    let mut autoscaler = Autoscaler::new(policy(12));
    let saturated = |at_ms: i64, hw: i64, lag: i64, processed: u64| Sample {
        at_ms,
        high_watermarks: hw,
        lag,
        processed: Some(processed),
        busy_ratio: Some(1.0),
        parallelism: 2,
    };
    autoscaler.observe(saturated(0, 0, 0, 0));
    autoscaler.observe(saturated(15_000, 600_000, 300_000, 300_000));
    autoscaler.observe(saturated(30_000, 1_200_000, 600_000, 600_000));
    let decision = autoscaler.decide(2, 0);
    let Decision::Keep { reason } = decision else {
        panic!("rescaled within the cooldown: {decision:?}");
    };
    assert!(reason.contains("cooldown"), "{reason}");
    assert!(matches!(
        autoscaler.decide(2, -10 * MINUTE),
        Decision::Rescale { .. }
    ));
}

#[test]
fn without_a_busy_ratio_the_lag_threshold_rule_applies() {
    let mut autoscaler = Autoscaler::new(policy(12));
    for (i, lag) in [0, 20_000, 45_000].into_iter().enumerate() {
        autoscaler.observe(Sample {
            at_ms: i as i64 * 15_000,
            high_watermarks: lag,
            lag,
            processed: None,
            busy_ratio: None,
            parallelism: 1,
        });
    }
    let recommendation = autoscaler.recommend().unwrap();
    // ceil(45000 / 10000) = 5 workers, raised to 6 to spread 12 tasks.
    assert_eq!(recommendation.parallelism, 6);
    assert!(
        recommendation.reason.contains("no busy ratio"),
        "{}",
        recommendation.reason
    );
}

#[test]
fn even_parallelism_table() {
    let p = policy(12);
    let cases = [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 4),
        (5, 6),
        (6, 6),
        (7, 12),
        (11, 12),
        (40, 12),
    ];
    for (wanted, even) in cases {
        assert_eq!(p.even_parallelism(wanted), even, "wanted {wanted}");
    }
    let capped = Policy {
        max: 5,
        ..policy(12)
    };
    // Five workers would run no faster than four.
    assert_eq!(capped.even_parallelism(5), 4);
    let floor = Policy {
        min: 5,
        ..policy(12)
    };
    // Raised to the minimum, then to the next even spread.
    assert_eq!(floor.even_parallelism(1), 6);
}

#[test]
fn policy_caps_max_at_the_partition_count() {
    let spec = AutoscalerSpec {
        max_parallelism: Some(100),
        min_parallelism: 2,
        ..AutoscalerSpec::default()
    };
    let policy = Policy::new(&spec, 8);
    assert_eq!((policy.min, policy.max), (2, 8));
}

fn annotations(entries: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn controls_come_from_the_spec_and_annotations() {
    let spec = AutoscalerSpec::default();
    let plain = Controls::new(Some(&spec), &annotations(&[]));
    assert!(plain.acting());
    assert_eq!((plain.mode, plain.idle), (Mode::Act, None));
    let idle_spec = AutoscalerSpec {
        idle_after: Some("10m".parse().unwrap()),
        activation_lag: 500,
        ..AutoscalerSpec::default()
    };
    let set = Controls::new(
        Some(&idle_spec),
        &annotations(&[(PAUSED_ANNOTATION, "true"), (MODE_ANNOTATION, "recommend")]),
    );
    assert!(set.paused && !set.acting());
    assert_eq!(set.mode, Mode::Recommend);
    assert_eq!(
        set.idle,
        Some(IdlePolicy {
            idle_after_ms: 10 * MINUTE,
            activation_lag: 500
        })
    );
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    let disabled = AutoscalerSpec {
        enabled: false,
        ..AutoscalerSpec::default()
    };
    assert!(!Controls::new(Some(&disabled), &annotations(&[])).acting());
    assert!(!Controls::new(None, &annotations(&[])).acting());
}

#[test]
fn invalid_annotations_fail_safe_and_are_reported() {
    let controls = Controls::new(
        Some(&AutoscalerSpec::default()),
        &annotations(&[(PAUSED_ANNOTATION, "yes"), (MODE_ANNOTATION, "auto")]),
    );
    // Unsure what was meant: take no action.
    assert!(controls.paused);
    assert_eq!(controls.mode, Mode::Recommend);
    assert_eq!(controls.problems.len(), 2, "{:?}", controls.problems);
}

#[test]
fn idle_decision_table() {
    let policy = IdlePolicy {
        idle_after_ms: MINUTE,
        activation_lag: 100,
    };
    let p = Some(&policy);
    let now = 10 * MINUTE;
    #[rustfmt::skip]
    let cases = [
        // (policy, acting, parked, lag, zero since, decision)
        (p, true, false, 0, Some(now - MINUTE), IdleDecision::ScaleToZero),
        (p, true, false, 0, Some(now - MINUTE + 1), IdleDecision::Stay),
        (p, true, false, 5, None, IdleDecision::Stay),
        (p, false, false, 0, Some(0), IdleDecision::Stay),
        (None, true, false, 0, Some(0), IdleDecision::Stay),
        (p, true, true, 100, None, IdleDecision::Stay),
        (p, true, true, 101, None, IdleDecision::Wake),
        // Nothing else would resume it.
        (p, false, true, 0, Some(0), IdleDecision::Wake),
        (None, true, true, 0, Some(0), IdleDecision::Wake),
    ];
    for (i, (policy, acting, parked, lag, since, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            idle_decision(policy, acting, parked, lag, since, now),
            expected,
            "case {i}"
        );
    }
    assert_eq!(zero_lag_since(None, 0, 5), Some(5));
    assert_eq!(zero_lag_since(Some(1), 0, 5), Some(1));
    assert_eq!(zero_lag_since(Some(1), 3, 5), None);
}

/// An autoscaler that has seen a saturated job of 2 workers falling
/// behind (it would scale to 12).
fn overloaded() -> Autoscaler {
    let mut autoscaler = Autoscaler::new(policy(12));
    for i in 0..3i64 {
        autoscaler.observe(Sample {
            at_ms: i * 15 * SECOND,
            high_watermarks: 5_000 * 15 * i,
            lag: 3_000 * 15 * i,
            processed: Some(2_000 * 15 * i as u64),
            busy_ratio: Some(1.0),
            parallelism: 2,
        });
    }
    autoscaler
}

fn situation(controls: Controls) -> Situation {
    Situation {
        now_ms: 30 * SECOND,
        controls,
        running: 2,
        settled: true,
        parked: false,
        last_rescale_ms: -MINUTE * 60,
        lag: 90_000,
        zero_lag_since_ms: None,
    }
}

#[test]
fn evaluation_acts_recommends_or_holds() {
    let spec = AutoscalerSpec::default();
    let acting = Controls::new(Some(&spec), &annotations(&[]));
    let outcome = evaluate(&mut overloaded(), &situation(acting.clone()));
    let Outcome::Scale { from, to, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!((*from, *to), (2, 12));
    let record =
        history_record(&outcome, 2, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)).unwrap();
    assert_eq!((record.from, record.to), (2, 12));
    assert_eq!(record.input_rate, Some(5_000.0));
    assert_eq!(record.per_worker_rate, Some(1_000.0));
    assert!(
        record.reason.starts_with(REASON_PREFIX),
        "{}",
        record.reason
    );

    let recommending = Controls::new(Some(&spec), &annotations(&[(MODE_ANNOTATION, "recommend")]));
    let outcome = evaluate(&mut overloaded(), &situation(recommending));
    assert!(
        matches!(
            outcome,
            Outcome::Recommend {
                from: 2,
                to: 12,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        history_record(&outcome, 2, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
        None
    );

    let paused = Controls::new(Some(&spec), &annotations(&[(PAUSED_ANNOTATION, "true")]));
    let outcome = evaluate(&mut overloaded(), &situation(paused));
    assert!(matches!(outcome, Outcome::Hold { .. }), "{outcome:?}");

    let busy = Situation {
        settled: false,
        ..situation(acting)
    };
    let outcome = evaluate(&mut overloaded(), &busy);
    assert!(matches!(outcome, Outcome::Hold { .. }), "{outcome:?}");
}

#[test]
fn evaluation_scales_an_idle_job_to_zero_and_wakes_it() {
    let spec = AutoscalerSpec {
        idle_after: Some("5m".parse().unwrap()),
        ..AutoscalerSpec::default()
    };
    let idle = Controls::new(Some(&spec), &annotations(&[]));
    let quiet = Situation {
        now_ms: 20 * MINUTE,
        lag: 0,
        zero_lag_since_ms: Some(15 * MINUTE),
        ..situation(idle)
    };
    let outcome = evaluate(&mut Autoscaler::new(policy(12)), &quiet);
    assert_eq!(
        outcome,
        Outcome::ScaleToZero {
            from: 2,
            idle_ms: 5 * MINUTE
        }
    );
    let record =
        history_record(&outcome, 2, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)).unwrap();
    assert_eq!((record.from, record.to), (2, 0));

    let parked = Situation {
        parked: true,
        running: 0,
        settled: false,
        ..quiet.clone()
    };
    let outcome = evaluate(&mut Autoscaler::new(policy(12)), &parked);
    assert!(matches!(outcome, Outcome::Hold { .. }), "{outcome:?}");

    let woken = Situation { lag: 1, ..parked };
    let outcome = evaluate(&mut Autoscaler::new(policy(12)), &woken);
    assert!(matches!(outcome, Outcome::Wake { .. }), "{outcome:?}");
    let record =
        history_record(&outcome, 3, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)).unwrap();
    assert_eq!(
        (record.from, record.to),
        (0, 3),
        "resumes at spec.parallelism"
    );
}

#[test]
fn the_cooldown_survives_a_restart_through_the_history() {
    let at = |secs| Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap());
    let record = |secs| ScalingRecord {
        time: at(secs),
        from: 1,
        to: 2,
        reason: String::new(),
        input_rate: None,
        lag: None,
        per_worker_rate: None,
    };
    assert_eq!(
        last_rescale_ms(&[record(50), record(90)], Some(&at(10))),
        90_000
    );
    assert_eq!(last_rescale_ms(&[], Some(&at(10))), 10_000);
    assert_eq!(last_rescale_ms(&[], None), 0);
}

proptest! {
    #[test]
    fn recommendations_stay_within_bounds(
        partitions in 1i32..64,
        min in 1i32..8,
        max in 1i32..64,
        load in 0f64..1e6,
        lag in 0i64..10_000_000,
        busy in proptest::option::of(0f64..1.0),
        parallelism in 1i32..64,
    ) {
        let spec = AutoscalerSpec {
            min_parallelism: min.min(max),
            max_parallelism: Some(max),
            ..AutoscalerSpec::default()
        };
        let policy = Policy::new(&spec, partitions);
        let mut autoscaler = Autoscaler::new(policy.clone());
        for i in 0..3i64 {
            autoscaler.observe(Sample {
                at_ms: i * 15_000,
                high_watermarks: (load * 15.0 * i as f64) as i64,
                lag: lag * i / 2,
                processed: Some((load * 10.0 * i as f64) as u64),
                busy_ratio: busy,
                parallelism,
            });
        }
        let recommendation = autoscaler.recommend().unwrap();
        prop_assert!(recommendation.parallelism >= policy.min);
        prop_assert!(recommendation.parallelism <= policy.max);
        prop_assert!(recommendation.parallelism <= partitions);
    }

    #[test]
    fn even_parallelism_never_lowers_capacity(partitions in 1i32..200, wanted in 1i32..200) {
        let policy = policy(partitions);
        let even = policy.even_parallelism(wanted);
        let wanted = wanted.min(partitions);
        let tasks_per_worker = |p: i32| (partitions + p - 1) / p;
        // Capacity in workers' worth: tasks / the busiest worker's tasks.
        let capacity = |p: i32| f64::from(partitions) / f64::from(tasks_per_worker(p));
        prop_assert!(capacity(even) >= f64::from(wanted) - 1e-9);
        prop_assert!(even >= wanted);
        // And no smaller parallelism gives the same capacity.
        prop_assert!(even == 1 || capacity(even - 1) < capacity(even));
    }
}
