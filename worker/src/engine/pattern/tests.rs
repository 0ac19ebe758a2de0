//! The pattern semantics on the seed examples, with the exact matches.

use serde_json::json;

use super::*;

const MIN: i64 = 60_000;

fn stage(name: &str, condition: &str, quantifier: Quantifier, absent: bool) -> Stage {
    Stage {
        name: name.to_owned(),
        condition: weir_crds::expr::compile(condition).unwrap(),
        quantifier,
        absent,
    }
}

/// Feeds `events` (time, record) in order, then a watermark at `until`;
/// returns each match as its (stage, time) pairs and end.
fn run(
    pattern: &Pattern,
    events: &[(i64, serde_json::Value)],
    until: i64,
) -> Vec<(Vec<(u16, i64)>, i64)> {
    let mut partials = Vec::new();
    let mut out = Vec::new();
    for (time, record) in events {
        pattern.advance(&mut partials, *time, false, &mut out);
        let holds = pattern.conditions(record).unwrap();
        let bytes = serde_json::to_vec(record).unwrap();
        pattern.feed(&mut partials, *time, &bytes, holds, &mut out);
    }
    pattern.advance(&mut partials, until, true, &mut out);
    out.into_iter()
        .map(|m| (m.events.iter().map(|e| (e.stage, e.time)).collect(), m.end))
        .collect()
}

fn fraud(contiguity: Contiguity) -> Pattern {
    Pattern {
        stages: vec![
            stage(
                "failed",
                r#"record.type == "login_failed""#,
                Quantifier::Times(3),
                false,
            ),
            stage(
                "changed",
                r#"record.type == "password_change""#,
                Quantifier::Times(1),
                false,
            ),
        ],
        within: Some(10 * MIN),
        contiguity,
    }
}

fn event(kind: &str) -> serde_json::Value {
    json!({"type": kind})
}

#[test]
fn three_failed_logins_then_a_password_change_within_ten_minutes() {
    let pattern = fraud(Contiguity::Relaxed);
    // A successful login in between is skipped (relaxed contiguity).
    let events = [
        (0, event("login_failed")),
        (MIN, event("login_failed")),
        (MIN + 30_000, event("login_ok")),
        (2 * MIN, event("login_failed")),
        (5 * MIN, event("password_change")),
    ];
    assert_eq!(
        run(&pattern, &events, 20 * MIN),
        vec![(vec![(0, 0), (0, MIN), (0, 2 * MIN), (1, 5 * MIN)], 5 * MIN)]
    );
    // The change 11 minutes after the first failure is too late.
    let late = [
        (0, event("login_failed")),
        (MIN, event("login_failed")),
        (2 * MIN, event("login_failed")),
        (11 * MIN, event("password_change")),
    ];
    assert_eq!(run(&pattern, &late, 20 * MIN), vec![]);
    // Four failures: the oldest three make the match, and the fourth is
    // not reused (skip past last event).
    let four = [
        (0, event("login_failed")),
        (MIN, event("login_failed")),
        (2 * MIN, event("login_failed")),
        (3 * MIN, event("login_failed")),
        (4 * MIN, event("password_change")),
        (5 * MIN, event("password_change")),
    ];
    assert_eq!(
        run(&pattern, &four, 20 * MIN),
        vec![(vec![(0, 0), (0, MIN), (0, 2 * MIN), (1, 4 * MIN)], 4 * MIN)]
    );
}

#[test]
fn strict_contiguity_allows_nothing_in_between() {
    let pattern = fraud(Contiguity::Strict);
    let interrupted = [
        (0, event("login_failed")),
        (MIN, event("login_ok")),
        (2 * MIN, event("login_failed")),
        (3 * MIN, event("login_failed")),
        (4 * MIN, event("password_change")),
    ];
    assert_eq!(run(&pattern, &interrupted, 20 * MIN), vec![]);
    // Four failures in a row: the last three are followed by the change.
    let four = [
        (0, event("login_failed")),
        (MIN, event("login_failed")),
        (2 * MIN, event("login_failed")),
        (3 * MIN, event("login_failed")),
        (4 * MIN, event("password_change")),
    ];
    assert_eq!(
        run(&pattern, &four, 20 * MIN),
        vec![(
            vec![(0, MIN), (0, 2 * MIN), (0, 3 * MIN), (1, 4 * MIN)],
            4 * MIN
        )]
    );
}

fn equipment(absent: bool) -> Pattern {
    Pattern {
        stages: vec![
            stage(
                "spike",
                "record.temperature_c > 90.0",
                Quantifier::Times(1),
                false,
            ),
            stage(
                "vibration",
                r#"record.alarm == "vibration""#,
                Quantifier::Times(1),
                absent,
            ),
        ],
        within: Some(5 * MIN),
        contiguity: Contiguity::Relaxed,
    }
}

fn reading(temperature: f64) -> serde_json::Value {
    json!({"temperature_c": temperature, "alarm": "none"})
}

fn alarm() -> serde_json::Value {
    json!({"temperature_c": 70.0, "alarm": "vibration"})
}

#[test]
fn a_temperature_spike_followed_by_a_vibration_alarm_within_five_minutes() {
    let pattern = equipment(false);
    let events = [
        (0, reading(95.0)),
        (MIN, reading(60.0)),
        (3 * MIN, alarm()),
        // A spike whose alarm comes 6 minutes later: no match.
        (10 * MIN, reading(99.0)),
        (16 * MIN, alarm()),
    ];
    assert_eq!(
        run(&pattern, &events, 30 * MIN),
        vec![(vec![(0, 0), (1, 3 * MIN)], 3 * MIN)]
    );
}

#[test]
fn a_spike_not_followed_by_an_alarm_fires_when_the_watermark_passes_its_bound() {
    let pattern = equipment(true);
    let events = [
        // Followed by an alarm within 5 minutes: no match.
        (0, reading(95.0)),
        (2 * MIN, alarm()),
        // Not followed: a match confirmed at 10 + 5 minutes.
        (10 * MIN, reading(97.0)),
        (11 * MIN, reading(50.0)),
        // An alarm exactly at the bound still counts as within.
        (20 * MIN, reading(96.0)),
        (25 * MIN, alarm()),
    ];
    assert_eq!(
        run(&pattern, &events, 40 * MIN),
        vec![(vec![(0, 10 * MIN)], 15 * MIN)]
    );
    // Not yet confirmed while the watermark is short of the bound.
    assert_eq!(run(&pattern, &events[2..4], 15 * MIN - 1), vec![]);
    assert_eq!(
        run(&pattern, &events[2..4], 15 * MIN),
        vec![(vec![(0, 10 * MIN)], 15 * MIN)]
    );
}

#[test]
fn one_or_more_takes_every_event_until_the_next_stage() {
    let pattern = Pattern {
        stages: vec![
            stage("a", r#"record.t == "a""#, Quantifier::OneOrMore, false),
            stage("b", r#"record.t == "b""#, Quantifier::Times(1), false),
        ],
        within: None,
        contiguity: Contiguity::Relaxed,
    };
    let events = [
        (1, json!({"t": "a"})),
        (2, json!({"t": "x"})),
        (3, json!({"t": "a"})),
        (4, json!({"t": "b"})),
        (5, json!({"t": "b"})),
    ];
    assert_eq!(
        run(&pattern, &events, 100),
        vec![(vec![(0, 1), (0, 3), (1, 4)], 4)]
    );
}

#[test]
fn a_key_keeps_a_bounded_number_of_partial_matches() {
    let pattern = Pattern {
        stages: vec![
            stage("a", r#"record.t == "a""#, Quantifier::Times(1), false),
            stage("b", r#"record.t == "b""#, Quantifier::Times(1), false),
        ],
        within: None,
        contiguity: Contiguity::Relaxed,
    };
    let mut partials = Vec::new();
    let mut out = Vec::new();
    let holds = pattern.conditions(&json!({"t": "a"})).unwrap();
    let mut dropped = 0;
    for t in 0..(MAX_PARTIAL_MATCHES as i64 + 5) {
        dropped += pattern.feed(&mut partials, t, b"{}", holds, &mut out);
    }
    assert_eq!(partials.len(), MAX_PARTIAL_MATCHES);
    assert_eq!(dropped, 5);
    assert_eq!(partials[0].start, 5);
}
