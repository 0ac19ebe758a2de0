//! The timers of one time domain held in memory, grouped by when they are
//! due: a sparse timer wheel.
//!
//! The windows of a tumbling or sliding assigner end at a few distinct
//! times, so most timers share their time, step and kind with thousands of
//! others (on Flink's windowed workload, every user's window of a minute).
//! Each such triple is one bucket, a slot of the wheel; the buckets are
//! kept in time order in a B-tree (of a handful of buckets for windows; of
//! one per timer where times differ by the millisecond, as session gaps and
//! TTLs do). Registering a timer is a hash-set insert into its bucket,
//! where a B-tree ordered by the whole timer compared payloads at every
//! level: about a thousand instructions per new window. A bucket of a few
//! timers is searched without an index.
//!
//! Within a bucket, timers are taken mostly in the order they came: the
//! order of timers due at the same time of the same step and kind is not
//! specified, as in Flink (each timer's key is its own), and a spill, a
//! refill from RocksDB or a restore changes it. Only a spill needs the
//! order of payloads, to move the latest timers out: a selection, not a
//! sort.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::Timer;

/// What the timers of a bucket share: their time, step and kind.
pub(super) type Due = (i64, u8, u8);

/// A timer of a bucket.
#[derive(Debug)]
struct Entry {
    /// The timer's payload; empty once taken.
    payload: Box<[u8]>,
    /// The index's hash of the payload.
    hash: u64,
    /// Whether RocksDB holds the timer already.
    stored: bool,
}

/// The timers due at one [`Due`].
#[derive(Debug, Default)]
struct Bucket {
    /// Timers in the order they came; those before `next` were taken.
    entries: Vec<Entry>,
    /// The first entry not taken.
    next: usize,
    /// Positions in `entries` of the timers not taken, by payload; empty
    /// while the bucket holds fewer than [`INDEX_FROM`] timers.
    index: HashTable<usize>,
}

/// Timers a bucket holds from which it indexes them: fewer are compared one
/// by one, without the index's allocation (a bucket per timer is common).
const INDEX_FROM: usize = 8;

impl Bucket {
    /// Timers not taken.
    fn len(&self) -> usize {
        self.entries.len() - self.next
    }

    /// Drops the taken entries and indexes the others again, after their
    /// positions changed.
    fn compact(&mut self) {
        self.entries.drain(..self.next);
        self.next = 0;
        self.reindex();
    }

    /// Indexes the timers not taken, if there are enough of them.
    fn reindex(&mut self) {
        let Bucket {
            entries,
            index,
            next,
        } = self;
        index.clear();
        if entries.len() - *next < INDEX_FROM {
            return;
        }
        for (i, entry) in entries.iter().enumerate().skip(*next) {
            index.insert_unique(entry.hash, i, |&j| entries[j].hash);
        }
    }

    /// Whether it holds a timer of `payload` (with `hash`) not yet taken.
    fn holds(&self, hash: u64, payload: &[u8]) -> bool {
        let entries = &self.entries;
        if self.index.is_empty() {
            entries[self.next..]
                .iter()
                .any(|e| e.hash == hash && *e.payload == *payload)
        } else {
            self.index
                .find(hash, |&i| *entries[i].payload == *payload)
                .is_some()
        }
    }
}

/// The timers of one domain held in memory.
#[derive(Debug, Default)]
pub(super) struct TimerBuckets {
    buckets: BTreeMap<Due, Bucket>,
    /// Timers held, over all buckets.
    len: usize,
    /// The hash of payloads. Payloads come from the task's own records;
    /// the seed is random per process, as the write-back cache's.
    hasher: foldhash::fast::RandomState,
}

/// Taken entries a bucket keeps before it drops them, when they are also
/// more than the entries not taken: a bucket that keeps receiving timers
/// while it fires does not grow without bound.
const COMPACT_AFTER: usize = 4096;

impl TimerBuckets {
    /// Timers held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds a timer (`stored`: RocksDB holds it already); `false` when it
    /// was held already, which leaves it as it was.
    pub(super) fn insert(&mut self, due: Due, payload: &[u8], stored: bool) -> bool {
        let hash = self.hasher.hash_one(payload);
        let bucket = self.buckets.entry(due).or_default();
        if bucket.holds(hash, payload) {
            return false;
        }
        let position = bucket.entries.len();
        if position == 0 {
            // A bucket per timer is common: no room for four.
            bucket.entries.reserve_exact(1);
        }
        bucket.entries.push(Entry {
            payload: payload.into(),
            hash,
            stored,
        });
        if !bucket.index.is_empty() {
            let entries = &bucket.entries;
            bucket
                .index
                .insert_unique(hash, position, |&i| entries[i].hash);
        } else if bucket.len() == INDEX_FROM {
            bucket.reindex();
        }
        self.len += 1;
        true
    }

    /// The time of the earliest timer.
    pub(super) fn first_time(&self) -> Option<i64> {
        self.buckets.first_key_value().map(|(due, _)| due.0)
    }

    /// Removes a timer of the earliest bucket if that is due by `up_to`,
    /// with whether RocksDB holds it.
    pub(super) fn take_due(&mut self, up_to: i64) -> Option<(Timer, bool)> {
        let mut first = self.buckets.first_entry()?;
        let (time, step, kind) = *first.key();
        if time > up_to {
            return None;
        }
        let bucket = first.get_mut();
        let position = bucket.next;
        let entry = &mut bucket.entries[position];
        let payload = std::mem::take(&mut entry.payload);
        let stored = entry.stored;
        if !bucket.index.is_empty() {
            let found = bucket.index.find_entry(entry.hash, |&i| i == position);
            debug_assert!(found.is_ok(), "a timer not taken is indexed");
            if let Ok(found) = found {
                found.remove();
            }
        }
        bucket.next += 1;
        self.len -= 1;
        if bucket.len() == 0 {
            first.remove();
        } else if bucket.next > COMPACT_AFTER && bucket.next > bucket.len() {
            bucket.compact();
        }
        let timer = Timer {
            time,
            step,
            kind,
            payload: payload.into_vec(),
        };
        Some((timer, stored))
    }

    /// Removes the latest `count` timers (or all, when fewer are held) in
    /// [`Timer`]'s order and appends them to `out`, in no order.
    pub(super) fn take_latest(&mut self, mut count: usize, out: &mut Vec<Timer>) {
        while count > 0 {
            let Some(mut last) = self.buckets.last_entry() else {
                return;
            };
            let (time, step, kind) = *last.key();
            let timer = |payload: Box<[u8]>| Timer {
                time,
                step,
                kind,
                payload: payload.into_vec(),
            };
            let bucket = last.get_mut();
            let held = bucket.len();
            if held <= count {
                let Bucket { entries, next, .. } = last.remove();
                out.extend(entries.into_iter().skip(next).map(|e| timer(e.payload)));
                count -= held;
                self.len -= held;
                continue;
            }
            // Keep the earliest `held - count` in the bucket.
            let keep = bucket.next + held - count;
            bucket.entries[bucket.next..]
                .select_nth_unstable_by(held - count, |a, b| a.payload.cmp(&b.payload));
            out.extend(bucket.entries.drain(keep..).map(|e| timer(e.payload)));
            bucket.compact();
            self.len -= count;
            return;
        }
    }

    /// Calls `put` with each timer RocksDB does not hold yet, and marks it
    /// held there.
    pub(super) fn store_new(&mut self, mut put: impl FnMut(Due, &[u8])) {
        for (due, bucket) in &mut self.buckets {
            for entry in &mut bucket.entries[bucket.next..] {
                if !entry.stored {
                    put(*due, &entry.payload);
                    entry.stored = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Due, Vec<u8>),
        TakeDue(i64),
        TakeLatest(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let due = (0_i64..4, 0_u8..2, 0_u8..2);
        let payload = prop::collection::vec(prop_oneof![Just(0_u8), Just(1), any::<u8>()], 0..3);
        prop_oneof![
            6 => (due, payload).prop_map(|(due, payload)| Op::Insert(due, payload)),
            3 => (0_i64..5).prop_map(Op::TakeDue),
            1 => (0_usize..6).prop_map(Op::TakeLatest),
        ]
    }

    fn timer((time, step, kind): Due, payload: &[u8]) -> Timer {
        Timer {
            time,
            step,
            kind,
            payload: payload.to_vec(),
        }
    }

    proptest! {
        /// The buckets hold the set of timers a sorted set would: a timer
        /// is held once, a due one comes from the earliest time, step and
        /// kind, and the latest are the latest in timers' order.
        #[test]
        fn buckets_hold_what_a_sorted_set_holds(
            ops in prop::collection::vec(op(), 0..300),
        ) {
            let mut buckets = TimerBuckets::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(due, payload) => {
                        let new = model.insert(timer(due, &payload));
                        prop_assert_eq!(buckets.insert(due, &payload, false), new);
                    }
                    Op::TakeDue(up_to) => match buckets.take_due(up_to) {
                        Some((taken, _)) => {
                            let first = model.first().unwrap();
                            prop_assert!(taken.time <= up_to);
                            prop_assert_eq!(
                                (taken.time, taken.step, taken.kind),
                                (first.time, first.step, first.kind)
                            );
                            prop_assert!(model.remove(&taken));
                        }
                        None => prop_assert!(model.first().is_none_or(|t| t.time > up_to)),
                    },
                    Op::TakeLatest(count) => {
                        let mut taken = Vec::new();
                        buckets.take_latest(count, &mut taken);
                        taken.sort();
                        let at = model.len().saturating_sub(count);
                        let latest: Vec<Timer> = model.split_off(&model.iter().nth(at).cloned().unwrap_or(Timer {
                            time: i64::MAX,
                            step: u8::MAX,
                            kind: u8::MAX,
                            payload: vec![u8::MAX; 8],
                        })).into_iter().collect();
                        prop_assert_eq!(taken, latest);
                    }
                }
                prop_assert_eq!(buckets.len(), model.len());
                prop_assert_eq!(buckets.first_time(), model.first().map(|t| t.time));
            }
            let mut stored = BTreeSet::new();
            buckets.store_new(|due, payload| { stored.insert(timer(due, payload)); });
            prop_assert_eq!(stored, model);
            buckets.store_new(|_, _| panic!("stored twice"));
        }
    }

    #[test]
    fn a_bucket_that_keeps_receiving_while_it_fires_drops_what_it_fired() {
        let mut buckets = TimerBuckets::default();
        let due = (1, 0, 0);
        assert!(buckets.insert(due, &0_u64.to_be_bytes(), true));
        for i in 0..3 * COMPACT_AFTER as u64 {
            assert!(buckets.insert(due, &(i + 1).to_be_bytes(), false));
            let (taken, stored) = buckets.take_due(1).unwrap();
            assert_eq!(taken.payload, i.to_be_bytes(), "in the order they came");
            assert_eq!(stored, i == 0);
            assert!(!buckets.insert(due, &(i + 1).to_be_bytes(), true));
        }
        assert!(buckets.buckets[&due].entries.len() <= COMPACT_AFTER + 2);
        assert_eq!(buckets.len(), 1);
        let (last, stored) = buckets.take_due(1).unwrap();
        assert_eq!(last.payload, (3 * COMPACT_AFTER as u64).to_be_bytes());
        assert!(!stored, "the repeated insert left it as it was");
        assert_eq!(buckets.first_time(), None);
    }
}
