//! Whether restored state can be read by the pipeline that restores it.
//!
//! Every stateful step has a stable id (its `name`, or `<operation>#<n>`)
//! and a fingerprint of what its state layout depends on. A checkpoint
//! records both with the slot (key prefix byte) its state is stored under.
//! On restore, each step of the new pipeline takes over the slot its id had,
//! so inserting or removing a stateless step never shifts state to another
//! step; a step whose fingerprint changed, or restored state no step claims,
//! refuses the restore with the step named, unless the user allows dropping
//! state of removed steps (as Flink's allowNonRestoredState). Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::checkpoint::manifest::StepState;

/// How the new pipeline's stateful steps map onto restored state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateBinding {
    /// The slot of every stateful step of the new pipeline, by step id.
    pub slots: BTreeMap<String, u8>,
    /// Slots of restored steps no longer in the pipeline: their state is
    /// deleted.
    pub dropped: Vec<u8>,
}

/// Why restored state cannot be read by the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IncompatibleState {
    /// A step's state was written by a different definition.
    #[error(
        "step {id:?}: its restored state was written by `{restored}`, the pipeline now has `{current}`, which cannot read it; give the changed step a new name to start it with empty state"
    )]
    Changed {
        /// The step id.
        id: String,
        /// The restored fingerprint.
        restored: String,
        /// The current fingerprint.
        current: String,
    },
    /// Restored state belongs to a step the pipeline no longer has.
    #[error(
        "step {id:?} (`{fingerprint}`) has state in the restored checkpoint but is not in the pipeline; set spec.allowNonRestoredState: true to drop its state"
    )]
    Removed {
        /// The step id.
        id: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The source topics have another partition count than when the state
    /// was written.
    #[error(
        "the restored state was written for {restored} source partitions, the source topics now have {current}: tasks are partitions, so the state cannot be mapped (restore from none to start over)"
    )]
    Partitions {
        /// The partition count recorded in the manifest.
        restored: u32,
        /// The partition count now.
        current: u32,
    },
    /// The tasks of one worker were restored from checkpoints of different
    /// pipelines.
    #[error(
        "the restored tasks disagree on the pipeline's state layout (tasks {first} and {other})"
    )]
    Inconsistent {
        /// A task.
        first: u32,
        /// A task whose steps differ from `first`'s.
        other: u32,
    },
}

/// Binds the new pipeline's stateful steps (`current`, with the slots the
/// pipeline would use without restored state) to the `restored` ones.
/// Steps new to the pipeline get slots no restored step uses.
pub fn bind(
    current: &[StepState],
    restored: &[StepState],
    allow_non_restored_state: bool,
) -> Result<StateBinding, IncompatibleState> {
    let mut slots = BTreeMap::new();
    let mut dropped = Vec::new();
    let restored_ids: BTreeSet<&str> = restored.iter().map(|s| s.id.as_str()).collect();
    for old in restored {
        match current.iter().find(|c| c.id == old.id) {
            Some(new) if new.fingerprint != old.fingerprint => {
                return Err(IncompatibleState::Changed {
                    id: old.id.clone(),
                    restored: old.fingerprint.clone(),
                    current: new.fingerprint.clone(),
                });
            }
            Some(new) => {
                slots.insert(new.id.clone(), old.slot);
            }
            None if allow_non_restored_state => dropped.push(old.slot),
            None => {
                return Err(IncompatibleState::Removed {
                    id: old.id.clone(),
                    fingerprint: old.fingerprint.clone(),
                });
            }
        }
    }
    let mut taken: BTreeSet<u8> = restored.iter().map(|s| s.slot).collect();
    for new in current
        .iter()
        .filter(|c| !restored_ids.contains(c.id.as_str()))
    {
        let slot = if taken.contains(&new.slot) {
            (0..=u8::MAX)
                .find(|s| !taken.contains(s))
                .unwrap_or(new.slot)
        } else {
            new.slot
        };
        taken.insert(slot);
        slots.insert(new.id.clone(), slot);
    }
    Ok(StateBinding { slots, dropped })
}

/// Checks that state written for `restored` source partitions (0: not
/// recorded) fits a job with `current` partitions.
pub fn check_partitions(restored: u32, current: u32) -> Result<(), IncompatibleState> {
    if restored != 0 && restored != current {
        return Err(IncompatibleState::Partitions { restored, current });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, slot: u8, fingerprint: &str) -> StepState {
        StepState {
            id: id.into(),
            slot,
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn a_filter_inserted_on_top_keeps_every_step_on_its_state() {
        // Before: [keyBy, window+aggregate (slot 2), dedupe (slot 3)].
        let restored = [
            step("aggregate#0", 2, "aggregate(tumbling 60000ms; count)"),
            step("dedupe#0", 3, "dedupe"),
        ];
        // After a filter at the top every position moved by one.
        let current = [
            step("aggregate#0", 3, "aggregate(tumbling 60000ms; count)"),
            step("dedupe#0", 4, "dedupe"),
        ];
        let binding = bind(&current, &restored, false).unwrap();
        assert_eq!(binding.slots["aggregate#0"], 2);
        assert_eq!(binding.slots["dedupe#0"], 3);
        assert!(binding.dropped.is_empty());
    }

    #[test]
    fn a_changed_step_is_refused_by_name() {
        let restored = [step("totals", 2, "aggregate(tumbling 60000ms; count)")];
        let current = [step("totals", 2, "aggregate(tumbling 60000ms; count,sum)")];
        let err = bind(&current, &restored, true).unwrap_err();
        assert!(matches!(&err, IncompatibleState::Changed { id, .. } if id == "totals"));
        assert!(err.to_string().starts_with("step \"totals\":"), "{err}");
    }

    #[test]
    fn removed_state_needs_permission_and_is_then_dropped() {
        let restored = [step("totals", 2, "a"), step("seen", 5, "dedupe")];
        let current = [step("totals", 2, "a")];
        let err = bind(&current, &restored, false).unwrap_err();
        assert!(matches!(&err, IncompatibleState::Removed { id, .. } if id == "seen"));
        assert!(err.to_string().contains("allowNonRestoredState"), "{err}");
        let binding = bind(&current, &restored, true).unwrap();
        assert_eq!(binding.dropped, vec![5]);
    }

    #[test]
    fn new_steps_never_take_a_restored_slot() {
        // The new dedupe would use slot 2, which the restored aggregate has.
        let restored = [step("totals", 2, "a")];
        let current = [step("dedupe#0", 2, "dedupe"), step("totals", 3, "a")];
        let binding = bind(&current, &restored, false).unwrap();
        assert_eq!(binding.slots["totals"], 2);
        assert_ne!(binding.slots["dedupe#0"], 2);
        // Nor a dropped step's slot, whose state is being deleted.
        let restored = [step("gone", 1, "dedupe")];
        let current = [step("new", 1, "dedupe")];
        let binding = bind(&current, &restored, true).unwrap();
        assert_eq!(binding.dropped, vec![1]);
        assert_ne!(binding.slots["new"], 1);
    }

    #[test]
    fn partition_counts_must_match() {
        assert_eq!(check_partitions(0, 8), Ok(()));
        assert_eq!(check_partitions(8, 8), Ok(()));
        let err = check_partitions(4, 8).unwrap_err();
        assert!(err.to_string().contains("4 source partitions"), "{err}");
    }
}
