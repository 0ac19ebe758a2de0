//! Kubernetes events about StreamingJobs, published through kube's Recorder.
//! A failure to publish is logged and never fails a reconciliation.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use weir_crds::StreamingJob;

/// Longest note the Events API accepts (1 kB).
const MAX_NOTE: usize = 1024;

/// Truncates `note` to what the Events API accepts, on a character boundary.
pub fn truncate_note(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_owned();
    }
    let mut end = MAX_NOTE - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// Publishes an event about `job`. The Recorder folds repeated events into
/// a series keyed by type, reason, action and `related`, not by note: an
/// event about one of the job's objects names it in `related` so that events
/// about different objects stay apart.
pub async fn publish(
    recorder: &Recorder,
    job: &StreamingJob,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate_note(note)),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(error) = recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(%error, reason, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_truncated_on_a_char_boundary() {
        let note = "é".repeat(1000);
        let truncated = truncate_note(&note);
        assert!(truncated.len() <= MAX_NOTE);
        assert!(truncated.ends_with("..."));
        assert_eq!(truncate_note("short"), "short");
    }
}
