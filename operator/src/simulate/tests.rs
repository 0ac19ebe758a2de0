//! Table tests of `weir simulate` over the built-in scenarios, and the
//! model's invariants over random ones.

use proptest::prelude::*;

use super::model::{self, JobParams, Trace};
use super::scenario::{Scenario, Segment, Shape};
use super::*;

fn run(name: &str, seed: u64) -> Run {
    let options = Options {
        seed,
        ..Options::default()
    };
    run_scenario(&Scenario::named(name).unwrap(), &options)
}

#[test]
fn a_step_change_settles_in_one_rescale_to_the_right_parallelism() {
    // 35k/s at 70% of 10k/s per worker needs 5 workers; 5 workers would
    // leave some with 3 of the 12 partitions, so 6.
    for seed in 1..=5 {
        let run = run("step", seed);
        let weir = &run.comparison.weir;
        let ups: Vec<i32> = weir
            .rescales
            .iter()
            .filter(|r| r.to > r.from)
            .map(|r| r.to)
            .collect();
        assert_eq!(ups, [6], "seed {seed}: {:?}", weir.rescales);
        assert!(
            weir.catch_up_secs.iter().all(Option::is_some),
            "seed {seed}: never caught up"
        );
    }
}

#[test]
fn noise_of_twenty_percent_causes_no_rescale() {
    for seed in 1..=5 {
        let run = run("steady", seed);
        assert!(
            run.comparison.weir.rescales.is_empty(),
            "seed {seed}: {:?}",
            run.comparison.weir.rescales
        );
    }
}

#[test]
fn weir_has_fewer_lag_seconds_than_keda_or_says_by_how_much_it_loses_and_why() {
    for name in scenario::NAMES {
        let c = run(name, 1).comparison;
        let verdict = c.verdict();
        if c.weir.lag_seconds < c.keda.lag_seconds {
            assert!(verdict.contains("fewer lag-seconds"), "{name}: {verdict}");
        } else {
            assert!(
                verdict.contains("Weir loses") && verdict.contains("% more lag-seconds"),
                "{name}: {verdict}"
            );
            assert!(verdict.contains("workers on average"), "{name}: {verdict}");
        }
    }
}

#[test]
fn weir_runs_fewer_workers_and_rescales_less_than_keda() {
    for name in scenario::NAMES {
        let c = run(name, 1).comparison;
        assert!(
            c.weir.worker_seconds < c.keda.worker_seconds,
            "{name}: {}",
            c.verdict()
        );
        assert!(
            c.weir.rescales.len() <= c.keda.rescales.len(),
            "{name}: {}",
            c.verdict()
        );
    }
}

#[test]
fn on_a_noisy_steady_load_keda_pays_pauses_weir_does_not() {
    let c = run("steady", 1).comparison;
    assert_eq!(c.weir.paused_secs, 0);
    assert_eq!(c.weir.lag_seconds, 0.0);
    assert!(
        c.keda.paused_secs > 0 && c.keda.lag_seconds > 0.0,
        "{}",
        c.verdict()
    );
}

#[test]
fn every_rescale_costs_the_same_pause_on_both_sides() {
    let run = run("step", 1);
    let (weir, keda) = (&run.comparison.weir, &run.comparison.keda);
    // Weir decides only while the job runs: pauses never overlap.
    assert_eq!(weir.paused_secs, 30 * weir.rescales.len() as u64);
    // KEDA may change replicas during a rebalance, which starts it again.
    assert!(keda.paused_secs <= 30 * keda.rescales.len() as u64);
    assert!(keda.paused_secs >= 30);
}

#[test]
fn the_same_seed_gives_the_same_numbers() {
    assert_eq!(run("ramp", 9).comparison, run("ramp", 9).comparison);
}

#[test]
fn all_scenarios_run_and_unknown_ones_are_refused() {
    let options = Options {
        duration_secs: Some(600),
        ..Options::default()
    };
    let runs = simulate(&options).unwrap();
    assert_eq!(runs.len(), scenario::NAMES.len());
    assert!(runs.iter().all(|r| r.input.len() == 600));
    let unknown = Options {
        scenarios: vec!["spike".into()],
        ..Options::default()
    };
    let error = simulate(&unknown).unwrap_err();
    assert!(
        error.to_string().contains("steady, step, ramp, daily"),
        "{error}"
    );
    let no_capacity = Options {
        capacity: 0.0,
        ..Options::default()
    };
    assert!(simulate(&no_capacity).is_err());
}

#[test]
fn the_plot_draws_every_scenario() {
    let options = Options {
        scenarios: vec!["step".into(), "ramp".into()],
        duration_secs: Some(1200),
        ..Options::default()
    };
    let doc = svg::plot(&simulate(&options).unwrap());
    assert_eq!(doc.matches("<polyline").count(), 2 * 5);
    assert!(doc.contains("step: ") && doc.contains("ramp: "));
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (0f64..150_000.0).prop_map(Shape::Constant),
        (0f64..150_000.0, 0f64..150_000.0).prop_map(|(from, to)| Shape::Ramp { from, to }),
        (0f64..50_000.0, 50_000f64..150_000.0).prop_map(|(low, high)| Shape::Daily { low, high }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec((30u64..600, shape()), 1..5).prop_map(|segments| Scenario {
        name: "random",
        description: "random",
        segments: segments
            .into_iter()
            .map(|(secs, shape)| Segment { secs, shape })
            .collect(),
    })
}

fn check_invariants(trace: &Trace, input: &[u64], min: i32, max: i32) -> Result<(), TestCaseError> {
    let (mut arrived, mut processed) = (0u64, 0u64);
    for (tick, &events) in trace.ticks.iter().zip(input) {
        arrived += events;
        processed += tick.processed;
        prop_assert!(tick.parallelism >= min && tick.parallelism <= max);
        // The backlog is what arrived and was not processed: never
        // negative, and never more than the lag Kafka shows.
        prop_assert!(processed <= arrived);
        prop_assert_eq!(tick.backlog, arrived - processed);
        prop_assert!(tick.lag >= tick.backlog && tick.lag <= arrived);
        prop_assert!(!tick.paused || tick.processed == 0);
    }
    prop_assert_eq!(arrived, input.iter().sum::<u64>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn both_autoscalers_keep_the_model_s_invariants(
        scenario in scenario(),
        seed in any::<u64>(),
        capacity in 2_000f64..40_000.0,
        partitions in 1i32..48,
        pause_secs in 0u64..120,
        commit_interval_secs in 0u64..30,
    ) {
        let options = Options {
            seed,
            capacity,
            partitions,
            pause_secs,
            commit_interval_secs,
            ..Options::default()
        };
        let run = run_scenario(&scenario, &options);
        let policy = options.policy();
        check_invariants(&run.weir, &run.input, policy.min, policy.max)?;
        check_invariants(&run.keda, &run.input, policy.min, policy.max)?;
        for summary in [&run.comparison.weir, &run.comparison.keda] {
            // Events are conserved: what came in was processed or is lag.
            prop_assert_eq!(summary.events_in, summary.events_processed + summary.final_lag);
        }
    }

    #[test]
    fn a_job_never_processes_more_than_its_workers_can(
        input in prop::collection::vec(0u64..200_000, 1..200),
        parallelism in 1i32..16,
    ) {
        let params = JobParams {
            capacity: 10_000.0,
            partitions: 12,
            pause_secs: 5,
            commit_interval_secs: 10,
        };
        let mut job = model::Job::new(params.clone(), parallelism);
        for events in input {
            let tick = job.advance(events);
            prop_assert!(tick.processed as f64 <= params.throughput(parallelism));
        }
    }
}
