//! Which workers run an out-of-date pod template.
//!
//! The StatefulSet's updateStrategy is OnDelete, so a new pod template (a new
//! job file, image, resources or environment) reaches the workers only when
//! their pods are replaced. The pods whose revision differs from the
//! StatefulSet's update revision are outdated; when there are any and no
//! operation is in flight, [`crate::operation::plan`] starts an upgrade,
//! which stops and restarts every worker by `spec.upgradeMode` (savepoint,
//! lastState or stateless), fenced, with the old workers gone before the
//! new ones start. A parallelism change never comes this way: the operation
//! protocol moves the parallelism, and the pod template carries only what
//! the workers read ([`crate::builders::worker_view`]).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Label the StatefulSet controller puts on each pod: its revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The names of the pods of `stateful_set` that run an older revision than its update
/// revision and are not already terminating. Nothing is outdated while the
/// StatefulSet controller has not observed the latest spec (its revisions
/// would be stale).
pub fn outdated_pods(stateful_set: &StatefulSet, pods: &[Pod]) -> Vec<String> {
    let Some(status) = &stateful_set.status else {
        return Vec::new();
    };
    if status.observed_generation < stateful_set.metadata.generation {
        return Vec::new();
    }
    let Some(update_revision) = &status.update_revision else {
        return Vec::new();
    };
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.labels()
                .get(REVISION_LABEL)
                .is_some_and(|revision| revision != update_revision)
        })
        .map(|pod| pod.name_any())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn sts(generation: i64, observed: i64, update_revision: &str) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                update_revision: Some(update_revision.into()),
                replicas: 2,
                ..StatefulSetStatus::default()
            }),
        }
    }

    fn pod(name: &str, revision: &str, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([(REVISION_LABEL.to_owned(), revision.to_owned())].into()),
                deletion_timestamp: terminating.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn pods_of_an_older_revision_are_outdated() {
        let pods = [
            pod("clicks-0", "clicks-old", false),
            pod("clicks-1", "clicks-new", false),
            pod("clicks-2", "clicks-old", true),
        ];
        assert_eq!(outdated_pods(&sts(2, 2, "clicks-new"), &pods), ["clicks-0"]);
    }

    #[test]
    fn nothing_is_outdated_before_the_statefulset_controller_catches_up() {
        let pods = [pod("clicks-0", "clicks-old", false)];
        assert!(outdated_pods(&sts(3, 2, "clicks-new"), &pods).is_empty());
        assert!(outdated_pods(&sts(2, 2, "clicks-old"), &pods).is_empty());
    }
}
