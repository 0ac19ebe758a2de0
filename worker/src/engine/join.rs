//! A compiled join step and the pure rules of its state: which table
//! version a record joins at its event time, which versions the watermark
//! made useless, and when an interval join's waiting records can no longer
//! pair.

use weir_crds::expr::Expression;

use crate::state::JoinRow;

/// A compiled join step.
#[derive(Clone, Debug)]
pub struct Join {
    /// The other topic.
    pub topic: String,
    /// The key of the other topic's records; `None`: their Kafka key.
    pub key: Option<Expression>,
    /// The output field holding the other record.
    pub field: String,
    /// Table or interval, with their parameters.
    pub kind: JoinKind,
}

/// What a join pairs records with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// The row of a table with the record's key.
    Table {
        /// Whether a record without a row is kept (with `null`).
        left: bool,
        /// For a temporal join, the most versions kept per key; `None`:
        /// the latest row read, whatever the event times.
        history: Option<usize>,
    },
    /// The other stream's records of the key with an event time from
    /// `before` milliseconds before the record's to `after` after it.
    Interval {
        /// Milliseconds before the record's event time.
        before: i64,
        /// Milliseconds after it.
        after: i64,
    },
}

impl Join {
    /// Whether the join follows event time: its records wait for or are
    /// dropped by the watermark, and the other topic's partitions take
    /// part in it.
    pub fn is_timed(&self) -> bool {
        !matches!(self.kind, JoinKind::Table { history: None, .. })
    }
}

/// The version of a row valid at `time`: the latest one from at or before
/// it, `None` when there is none or it is a deletion.
pub fn version_at(versions: &[JoinRow], time: i64) -> Option<&[u8]> {
    let at = versions.partition_point(|v| v.time <= time);
    let version = versions[..at].last()?;
    (!version.value.is_empty()).then_some(version.value.as_slice())
}

/// Inserts `version` (sorted by time; one of equal time comes after the
/// ones already there, so the last read wins), then drops what no record
/// can join any more: the versions older than the newest one at or before
/// `watermark` (records from before the watermark are late). That one
/// stays, a deletion too, so that a version read late but older than it
/// cannot come back. Then the oldest beyond `history`, which records not
/// yet joined may have needed. Returns how many of those it dropped.
pub fn insert_version(
    versions: &mut Vec<JoinRow>,
    version: JoinRow,
    watermark: Option<i64>,
    history: usize,
) -> usize {
    insert_by_time(versions, version);
    prune_versions(versions, watermark, history)
}

/// Inserts `row` into `rows` (sorted by time) after the rows of the same
/// time, so rows of equal time stay in the order they came; returns where.
pub fn insert_by_time(rows: &mut Vec<JoinRow>, row: JoinRow) -> usize {
    let at = rows.partition_point(|r| r.time <= row.time);
    rows.insert(at, row);
    at
}

/// Drops the versions no record from after `watermark` can join, and the
/// oldest beyond `history` (see [`insert_version`]); returns how many of
/// the latter it dropped.
pub fn prune_versions(
    versions: &mut Vec<JoinRow>,
    watermark: Option<i64>,
    history: usize,
) -> usize {
    if let Some(wm) = watermark {
        let passed = versions.partition_point(|v| v.time <= wm);
        versions.drain(..passed.saturating_sub(1));
    }
    let excess = versions.len().saturating_sub(history);
    versions.drain(..excess);
    excess
}

/// Whether records at `own` (the stream of the pipeline) and `other` (the
/// join's topic) event times pair in an interval join.
pub fn in_interval(own: i64, other: i64, before: i64, after: i64) -> bool {
    other >= own.saturating_sub(before) && other <= own.saturating_add(after)
}

/// Until when an interval join keeps a record of the pipeline's stream at
/// `time`: an other record pairing with it can come while the watermark is
/// before `time + after`.
pub fn own_expiry(time: i64, after: i64) -> i64 {
    time.saturating_add(after)
}

/// Until when an interval join keeps a record of the other topic at
/// `time`: one of the pipeline's stream pairing with it can come while the
/// watermark is before `time + before`.
pub fn other_expiry(time: i64, before: i64) -> i64 {
    time.saturating_add(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(time: i64, value: &str) -> JoinRow {
        JoinRow {
            time,
            value: value.as_bytes().to_vec(),
        }
    }

    fn times(versions: &[JoinRow]) -> Vec<i64> {
        versions.iter().map(|v| v.time).collect()
    }

    #[test]
    fn a_record_joins_the_version_valid_at_its_event_time() {
        let versions = vec![row(10, "a"), row(20, "b"), row(30, ""), row(40, "d")];
        assert_eq!(version_at(&versions, 5), None, "before the first version");
        assert_eq!(
            version_at(&versions, 10),
            Some(&b"a"[..]),
            "valid from its time"
        );
        assert_eq!(version_at(&versions, 29), Some(&b"b"[..]));
        assert_eq!(version_at(&versions, 35), None, "deleted at 30");
        assert_eq!(version_at(&versions, 99), Some(&b"d"[..]));
    }

    #[test]
    fn the_last_read_of_equal_times_wins() {
        let mut versions = Vec::new();
        insert_version(&mut versions, row(10, "a"), None, 16);
        insert_version(&mut versions, row(10, "b"), None, 16);
        assert_eq!(version_at(&versions, 10), Some(&b"b"[..]));
    }

    #[test]
    fn versions_behind_the_watermark_are_dropped_but_the_current_one() {
        let mut versions = Vec::new();
        for t in [10, 20, 30, 40] {
            insert_version(&mut versions, row(t, "x"), None, 16);
        }
        prune_versions(&mut versions, Some(25), 16);
        assert_eq!(times(&versions), [20, 30, 40], "20 is valid at 26..30");
        prune_versions(&mut versions, Some(45), 16);
        assert_eq!(times(&versions), [40]);
        insert_version(&mut versions, row(50, ""), Some(55), 16);
        assert_eq!(times(&versions), [50], "the deletion is the current row");
        insert_version(&mut versions, row(45, "late"), Some(55), 16);
        assert_eq!(
            version_at(&versions, 60),
            None,
            "an older row read late stays deleted"
        );
        insert_version(&mut versions, row(52, "newer"), Some(55), 16);
        assert_eq!(
            version_at(&versions, 60),
            Some(&b"newer"[..]),
            "a newer one read late counts"
        );
        assert_eq!(times(&versions), [52]);
    }

    #[test]
    fn history_bounds_the_versions_kept() {
        let mut versions = Vec::new();
        let dropped: usize = (0..10)
            .map(|t| insert_version(&mut versions, row(t, "x"), None, 3))
            .sum();
        assert_eq!(times(&versions), [7, 8, 9]);
        assert_eq!(dropped, 7, "counted");
        assert_eq!(
            prune_versions(&mut versions, Some(8), 3),
            0,
            "pruned by the watermark: not counted"
        );
    }

    #[test]
    fn the_interval_includes_both_bounds() {
        assert!(in_interval(100, 90, 10, 5));
        assert!(in_interval(100, 105, 10, 5));
        assert!(!in_interval(100, 89, 10, 5));
        assert!(!in_interval(100, 106, 10, 5));
        assert_eq!(own_expiry(100, 5), 105);
        assert_eq!(other_expiry(100, 10), 110);
    }
}
