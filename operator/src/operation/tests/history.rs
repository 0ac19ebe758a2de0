//! What a finished operation leaves in `status.scalingHistory`.

use super::*;
use crate::autoscaler::REASON_PREFIX;

fn finish(status: &mut StreamingJobStatus, rescale: &Operation, now: i64) {
    let done = Transition {
        next: Next::Done,
        savepoint_completed: false,
        effects: vec![],
    };
    settle(status, rescale, &done, 3, &at(now));
}

#[test]
fn a_rescale_the_autoscaler_recorded_is_recorded_once() {
    let rescale = op(OperationKind::Rescale, OperationStage::Restoring);
    let decision = ScalingRecord {
        time: at(0),
        from: 2,
        to: 3,
        reason: format!("{REASON_PREFIX}input 9k/s needs 3 workers"),
        input_rate: Some(9000.0),
        lag: Some(0),
        per_worker_rate: Some(4000.0),
    };
    let mut status = StreamingJobStatus {
        scaling_history: vec![decision.clone()],
        ..StreamingJobStatus::default()
    };
    finish(&mut status, &rescale, 60);
    assert_eq!(status.scaling_history, vec![decision]);

    // A rescale by spec.parallelism (no autoscaler record) gets its own.
    let mut by_hand = StreamingJobStatus::default();
    finish(&mut by_hand, &rescale, 60);
    assert_eq!(by_hand.scaling_history.len(), 1);
    assert!(
        by_hand.scaling_history[0]
            .reason
            .contains("spec.parallelism")
    );
}
