//! The evidence that a task's checkpoint committed.
//!
//! Two things prove it, and nothing else does: the task's committed marker
//! in the store, or the consumer group's offsets carrying the checkpoint's
//! [`CommitToken`] in their metadata. Offsets alone prove nothing: two
//! checkpoints in a row often have equal offsets (no input, or windows fired
//! by processing time into the next transaction), and restoring the wrong
//! one of the two loses or repeats that transaction's output.
//!
//! The token is written with the offsets in the same atomic step as the
//! output (the Kafka transaction, or the at-least-once offset commit), so a
//! worker that died between that commit and the marker is still recognised
//! as committed, and an aborted transaction never is.

use std::collections::HashMap;

use crate::checkpoint::manifest::{SourceOffset, TaskManifest};

/// Prefix of every token, so that offsets committed by other tools (or an
/// older worker) are never mistaken for one.
const TOKEN_PREFIX: &str = "weir-checkpoint";

/// What the offsets committed with a checkpoint carry in their metadata:
/// the checkpoint id and the incarnation of the RocksDB instance that wrote
/// it (ids alone can repeat across owners of a task, incarnations cannot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitToken {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The incarnation of the task's database.
    pub incarnation: String,
}

impl CommitToken {
    /// The token of a manifest.
    pub fn of(manifest: &TaskManifest) -> CommitToken {
        CommitToken {
            checkpoint_id: manifest.checkpoint_id,
            incarnation: manifest.incarnation.clone(),
        }
    }

    /// The metadata text: `weir-checkpoint/<id>/<incarnation>` (`/` cannot
    /// occur in either part: ids are digits, incarnations hex).
    pub fn encode(&self) -> String {
        format!("{TOKEN_PREFIX}/{}/{}", self.checkpoint_id, self.incarnation)
    }

    /// Parses [`CommitToken::encode`]'s text; `None` for anything else.
    pub fn parse(metadata: &str) -> Option<CommitToken> {
        let mut parts = metadata.split('/');
        let (Some(TOKEN_PREFIX), Some(id), Some(incarnation), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id.bytes().all(|b| b.is_ascii_digit()) || !plain(incarnation) {
            return None;
        }
        Some(CommitToken {
            checkpoint_id: id.parse().ok()?,
            incarnation: incarnation.to_owned(),
        })
    }
}

/// What the consumer group holds for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    /// The committed (next) offset.
    pub offset: i64,
    /// The metadata committed with it.
    pub metadata: String,
}

/// The group's committed offsets by (topic, partition).
pub type GroupOffsets = HashMap<(String, i32), GroupOffset>;

/// How a checkpoint is known to have committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Its committed marker is in the store.
    Marker,
    /// The group's offsets of every partition of the task are the
    /// manifest's and carry its token (the worker died before the marker).
    Token,
}

/// Whether the checkpoint of `manifest` committed, and how we know. Pure.
pub fn evidence(
    has_marker: bool,
    manifest: &TaskManifest,
    group: &GroupOffsets,
) -> Option<Evidence> {
    if has_marker {
        return Some(Evidence::Marker);
    }
    let token = CommitToken::of(manifest).encode();
    let carries_token = |o: &SourceOffset| {
        group
            .get(&(o.topic.clone(), o.partition))
            .is_some_and(|g| g.offset == o.offset && g.metadata == token)
    };
    (!manifest.offsets.is_empty() && manifest.offsets.iter().all(carries_token))
        .then_some(Evidence::Token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::MANIFEST_FORMAT;

    fn manifest(id: u64, incarnation: &str, offsets: &[(&str, i64)]) -> TaskManifest {
        TaskManifest {
            format: MANIFEST_FORMAT,
            checkpoint_id: id,
            generation: 1,
            task: 0,
            incarnation: incarnation.into(),
            created_at: String::new(),
            offsets: offsets
                .iter()
                .map(|(topic, offset)| SourceOffset {
                    topic: (*topic).into(),
                    partition: 0,
                    offset: *offset,
                })
                .collect(),
            engine: serde_json::Value::Null,
            files: Vec::new(),
            origin: String::new(),
            steps: Vec::new(),
            source_partitions: 1,
        }
    }

    fn group(entries: &[(&str, i64, String)]) -> GroupOffsets {
        entries
            .iter()
            .map(|(topic, offset, metadata)| {
                (
                    ((*topic).to_owned(), 0),
                    GroupOffset {
                        offset: *offset,
                        metadata: metadata.clone(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn tokens_round_trip_and_refuse_foreign_metadata() {
        let token = CommitToken {
            checkpoint_id: 42,
            incarnation: "a1b2".into(),
        };
        assert_eq!(token.encode(), "weir-checkpoint/42/a1b2");
        assert_eq!(CommitToken::parse(&token.encode()), Some(token));
        for foreign in [
            "",
            "42",
            "weir-checkpoint/42",
            "weir-checkpoint/x/a1",
            "weir-checkpoint/42/",
            "weir-checkpoint/42/a/b",
            "other/42/a1",
        ] {
            assert_eq!(CommitToken::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn equal_offsets_without_the_token_are_no_evidence() {
        // Checkpoints 7 and 8 have the same offsets; 7 committed, 8's
        // transaction aborted. Only 7 carries the group's token.
        let seven = manifest(7, "inc", &[("in", 100)]);
        let eight = manifest(8, "inc", &[("in", 100)]);
        let committed = group(&[("in", 100, CommitToken::of(&seven).encode())]);
        assert_eq!(evidence(false, &seven, &committed), Some(Evidence::Token));
        assert_eq!(evidence(false, &eight, &committed), None);
        // Plain offsets (an older worker, another tool) prove nothing.
        assert_eq!(
            evidence(false, &seven, &group(&[("in", 100, String::new())])),
            None
        );
        assert_eq!(evidence(true, &eight, &committed), Some(Evidence::Marker));
    }

    #[test]
    fn another_incarnation_with_the_same_id_is_no_evidence() {
        // Two owners of a task can both write a checkpoint 5.
        let mine = manifest(5, "mine", &[("in", 10)]);
        let theirs = manifest(5, "theirs", &[("in", 10)]);
        let committed = group(&[("in", 10, CommitToken::of(&theirs).encode())]);
        assert_eq!(evidence(false, &mine, &committed), None);
    }

    #[test]
    fn every_partition_of_the_task_must_carry_the_token() {
        let m = manifest(3, "inc", &[("in", 10), ("weir.ns.job.keyBy", 4)]);
        let token = CommitToken::of(&m).encode();
        assert_eq!(
            evidence(
                false,
                &m,
                &group(&[
                    ("in", 10, token.clone()),
                    ("weir.ns.job.keyBy", 4, token.clone())
                ])
            ),
            Some(Evidence::Token)
        );
        assert_eq!(
            evidence(false, &m, &group(&[("in", 10, token.clone())])),
            None
        );
        assert_eq!(
            evidence(
                false,
                &m,
                &group(&[("in", 10, token.clone()), ("weir.ns.job.keyBy", 5, token)])
            ),
            None
        );
        // A manifest without offsets cannot be proven by offsets.
        assert_eq!(
            evidence(false, &manifest(3, "inc", &[]), &GroupOffsets::new()),
            None
        );
    }
}
