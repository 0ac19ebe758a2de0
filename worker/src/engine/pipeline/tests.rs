//! Compilation of sample and hand-written pipelines: decode plans, state
//! ids and fingerprints, repartition cuts and refusals.

use super::*;

fn spec(source_extra: &str, pipeline: &str) -> StreamingJobSpec {
    let yaml = format!(
        r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in]{source_extra}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

#[test]
fn compiles_and_plans_decoding() {
    let p = Pipeline::compile(&spec(
        ", eventTime: {field: ts}",
        r#"[{filter: "record.amount > 0.0"}, {keyBy: {expr: "record.user_id", sourcePartitioned: true}},
            {window: {type: tumbling, size: 60s}}, {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}},
            {filter: "record.n > 1"}]"#,
    ))
    .unwrap();
    assert_eq!(p.steps().len(), 4);
    assert_eq!(
        p.decode_plan(),
        &DecodePlan::fields(vec!["amount".into(), "ts".into(), "user_id".into()])
    );
    assert!(!p.is_passthrough());
    assert_eq!(p.repartition_step(), None);
    assert!(matches!(
        p.steps()[2].operation,
        Operation::Aggregate {
            window: Some(WindowOp {
                assigner: WindowAssigner::Tumbling {
                    size: 60_000,
                    zone: None,
                },
                allowed_lateness: 0
            }),
            ..
        }
    ));
    assert_eq!(p.steps()[2].id, 3);
}

#[test]
fn stateful_steps_have_stable_ids_and_fingerprints() {
    let p = Pipeline::compile(&spec(
        ", eventTime: {field: ts}",
        r#"[{filter: "true"}, {keyBy: {expr: record.user, sourcePartitioned: true}},
            {name: per-minute, window: {type: tumbling, size: 60s}},
            {aggregate: {fields: [{name: n, function: count}, {name: s, function: sum, expr: record.x}]}},
            {dedupe: {key: record.id, ttl: 1m}},
            {name: seen, dedupe: {key: record.id, ttl: 1m}},
            {dedupe: {key: record.id, ttl: 1m}}]"#,
    ))
    .unwrap();
    let states: Vec<(String, u8, String)> = p
        .step_states()
        .into_iter()
        .map(|s| (s.id, s.slot, s.fingerprint))
        .collect();
    assert_eq!(
        states,
        vec![
            (
                "per-minute".into(),
                3,
                "aggregate(by record.user; tumbling 60000ms; count,sum)".into()
            ),
            ("dedupe#0".into(), 4, "dedupe(record.id)".into()),
            ("seen".into(), 5, "dedupe(record.id)".into()),
            ("dedupe#2".into(), 6, "dedupe(record.id)".into()),
        ]
    );
    // Moving every step down by one keeps the ids: state follows.
    let moved = Pipeline::compile(&spec(
        ", eventTime: {field: ts}",
        r#"[{filter: "true"}, {filter: "true"}, {keyBy: {expr: record.user, sourcePartitioned: true}},
            {name: per-minute, window: {type: tumbling, size: 60s}},
            {aggregate: {fields: [{name: n, function: count}, {name: s, function: sum, expr: record.x}]}}]"#,
    ))
    .unwrap();
    assert_eq!(moved.step_states()[0].id, "per-minute");
    assert_eq!(moved.step_states()[0].slot, 4);
}

#[test]
fn bound_slots_stay_unique() {
    let mut p = Pipeline::compile(&spec(
        "",
        r#"[{filter: "true"}, {dedupe: {key: record.id, ttl: 1m}}, {map: {fields: [{name: a, expr: "1"}]}}]"#,
    ))
    .unwrap();
    let binding = crate::checkpoint::compatibility::StateBinding {
        slots: [("dedupe#0".to_owned(), 0u8)].into_iter().collect(),
        dropped: vec![2],
    };
    p.bind_state(&binding);
    let slots: Vec<u8> = p.steps().iter().map(|s| s.id).collect();
    assert_eq!(slots[1], 0);
    let mut unique = slots.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), slots.len(), "{slots:?}");
    assert!(!slots.contains(&2), "a dropped slot was reused: {slots:?}");
}

#[test]
fn passthrough_and_repartition() {
    let p = Pipeline::compile(&spec(
        "",
        r#"[{filter: "record.a == 1"}, {keyBy: {expr: "record.k"}}]"#,
    ))
    .unwrap();
    assert!(p.is_passthrough());
    assert_eq!(p.repartition_step(), Some(1));
    let p = Pipeline::compile(&spec(
        ", eventTime: {field: ts}",
        r#"[{filter: "record.a == 1"}, {keyBy: {expr: "record.k"}},
            {window: {type: tumbling, size: 1m}},
            {aggregate: {fields: [{name: s, function: sum, expr: record.amount}]}}]"#,
    ))
    .unwrap();
    assert_eq!(p.repartition_step(), Some(1));
    assert_eq!(
        p.decode_plan(),
        &DecodePlan::fields(vec!["a".into(), "amount".into(), "k".into(), "ts".into()])
    );
    assert_eq!(
        p.repartitioned_decode_plan(),
        &DecodePlan::fields(vec!["amount".into()]),
        "after the cut, event time is the Kafka timestamp and the key is the Kafka key"
    );
    let p = Pipeline::compile(&spec(
        "",
        r#"[{map: {keepInput: true, fields: [{name: x, expr: "1"}]}}]"#,
    ))
    .unwrap();
    assert_eq!(p.decode_plan(), &DecodePlan::All);
}

#[test]
fn rejects_bad_pipelines() {
    let cases = [
        ("", r#"[{filter: "record.a +"}]"#, "filter-0: filter"),
        (
            "",
            r#"[{window: {type: tumbling, size: 1s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#,
            "needs source.eventTime",
        ),
        (
            ", eventTime: {}",
            r#"[{window: {type: tumbling, size: 1s}}]"#,
            "must be followed",
        ),
        (
            ", eventTime: {}",
            r#"[{window: {type: tumbling, size: 1s}}, {filter: "true"}]"#,
            "must be followed",
        ),
        (
            "",
            r#"[{aggregate: {fields: [{name: s, function: sum}]}}]"#,
            "needs an expr",
        ),
        ("", r#"[{}]"#, "exactly one"),
        ("", r#"[{dedupe: {key: record.id, ttl: 0s}}]"#, "ttl"),
    ];
    for (source, pipeline, expected) in cases {
        let err = Pipeline::compile(&spec(source, pipeline))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{pipeline}: {err}");
    }
}

#[test]
fn every_sample_job_compiles_and_keyed_samples_repartition() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut compiled = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let job: weir_crds::StreamingJob = serde_yaml::from_str(&text).unwrap();
        let p = Pipeline::compile(&job.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let repartitions = job
            .spec
            .pipeline
            .iter()
            .any(|s| s.key_by.as_ref().is_some_and(|k| !k.source_partitioned));
        assert_eq!(
            p.repartition_step().is_some(),
            repartitions,
            "{}",
            path.display()
        );
        compiled += 1;
    }
    assert_eq!(compiled, 9, "the samples in {}", dir.display());
}
