//! Event- and processing-time timers of a task, kept in memory in time
//! order, and written to RocksDB only by [`TaskState::flush_cache`] (before
//! every checkpoint): the timers registered since the last flush and still
//! pending are put, those of the last flush that fired since are deleted.
//! A timer that is registered and fires between two checkpoints (most
//! window and pattern timers) never touches RocksDB, and firing never scans
//! it: taking due timers used to write a range deletion per take, which
//! every later read had to fragment again (the cost grew with the square
//! of the timers until the memtable flushed).

use std::collections::{BTreeSet, HashSet};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::keys::{order_preserving, parse_timer_key, timer_key};
use super::{StateError, TaskState, TimeDomain, Timer, db_error};

/// The pending timers of a task, by their RocksDB key (domain, time, step,
/// kind, payload), which orders them by time within a domain.
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    pending: BTreeSet<Vec<u8>>,
    /// Pending timers not in RocksDB yet.
    unwritten: HashSet<Vec<u8>>,
    /// Timers in RocksDB that fired since the last flush.
    fired: HashSet<Vec<u8>>,
}

impl TimerQueue {
    /// The timers stored in `db` (as of its last flush).
    pub(super) fn load(db: &DB) -> Result<TimerQueue, StateError> {
        let mut queue = TimerQueue::default();
        for domain in TimeDomain::ALL {
            let mut read = ReadOptions::default();
            read.set_iterate_upper_bound([domain.prefix() + 1]);
            let start = [domain.prefix()];
            for item in db.iterator_opt(IteratorMode::From(&start, Direction::Forward), read) {
                let (key, _) = item.map_err(db_error("timer load"))?;
                queue.pending.insert(key.to_vec());
            }
        }
        Ok(queue)
    }

    /// Adds the writes that make RocksDB hold exactly the pending timers.
    pub(super) fn write_changes(&mut self, batch: &mut WriteBatch) {
        for key in self.unwritten.drain() {
            batch.put(key, b"");
        }
        for key in self.fired.drain() {
            batch.delete(key);
        }
    }
}

impl TaskState {
    /// Registers a timer; registering the same timer twice keeps one.
    pub fn register_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        step: u8,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), StateError> {
        let key = timer_key(domain, time, step, kind, payload);
        let queue = &mut self.timers;
        if !queue.pending.contains(&key) {
            // One that fired since the flush is still in RocksDB.
            if !queue.fired.remove(&key) {
                queue.unwritten.insert(key.clone());
            }
            queue.pending.insert(key);
        }
        Ok(())
    }

    /// The earliest pending timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        let start = [domain.prefix()];
        let end = [domain.prefix() + 1];
        self.timers
            .pending
            .range::<[u8], _>((
                std::ops::Bound::Included(&start[..]),
                std::ops::Bound::Excluded(&end[..]),
            ))
            .next()
            .and_then(|key| parse_timer_key(key))
            .map(|t| t.time)
    }

    /// Number of pending timers.
    pub fn pending_timers(&self) -> usize {
        self.timers.pending.len()
    }

    /// Removes and appends to `out` the timers of `domain` due at or before
    /// `up_to`, in time order, at most `limit` of them: a watermark jump
    /// over a million windows is taken chunk by chunk, never all at once.
    /// Returns whether due timers remain.
    pub fn take_due_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        limit: usize,
        out: &mut Vec<Timer>,
    ) -> Result<bool, StateError> {
        let start = vec![domain.prefix()];
        // Exclusive bound just after `up_to`; up_to == i64::MAX sorts last.
        let end = match up_to.checked_add(1) {
            Some(after) => {
                let mut end = start.clone();
                end.extend_from_slice(&order_preserving(after));
                end
            }
            None => vec![domain.prefix() + 1],
        };
        let queue = &mut self.timers;
        let due: Vec<Vec<u8>> = queue
            .pending
            .range(start..end)
            .take(limit)
            .cloned()
            .collect();
        for key in due {
            queue.pending.remove(&key);
            if let Some(timer) = parse_timer_key(&key) {
                out.push(timer);
            }
            if !queue.unwritten.remove(&key) {
                queue.fired.insert(key);
            }
        }
        Ok(self.next_timer(domain).is_some_and(|next| next <= up_to))
    }
}
