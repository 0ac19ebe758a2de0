//! Event- and processing-time timers of a task, in time order.
//!
//! The earliest timers of each domain are held in memory, at most
//! [`StateOptions::memory_timers`](super::StateOptions) of them; the later
//! ones, past a per-domain boundary, only in RocksDB. Memory timers reach
//! RocksDB at [`TaskState::flush_cache`] (before every checkpoint): those
//! registered since the last flush and still pending are put, those of the
//! last flush that fired since are deleted. A timer registered and fired
//! between two checkpoints (most window and pattern timers) never touches
//! RocksDB, and firing never scans it but to refill memory in chunks from
//! the boundary on. When memory holds too many, the latest half goes to
//! RocksDB and the boundary moves down. (Taking due timers used to write a
//! range deletion each time, which every later read had to fragment again:
//! the cost grew with the square of the timers until the memtable flushed.)

use std::collections::{BTreeSet, HashSet};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::keys::{order_preserving, parse_timer_key, timer_key, timer_key_time};
use super::{StateError, TaskState, TimeDomain, Timer, db_error};

/// The pending timers of a task, by their RocksDB key (domain, time, step,
/// kind, payload), which orders them by time within a domain.
#[derive(Debug)]
pub(super) struct TimerQueue {
    /// The timers held in memory: per domain, those before its boundary.
    memory: BTreeSet<Vec<u8>>,
    /// Memory timers not in RocksDB yet.
    unwritten: HashSet<Vec<u8>>,
    /// Timers in RocksDB that fired since the last flush.
    fired: HashSet<Vec<u8>>,
    /// Per domain ([`TimeDomain::index`]), the first timer held only in RocksDB:
    /// every pending timer of the domain from it on is there, not in
    /// memory.
    boundary: [Option<Vec<u8>>; TimeDomain::ALL.len()],
    /// Most timers held in memory.
    limit: usize,
}

/// The first key of `domain` in `db` from `from` on, skipping `skip`.
fn first_stored(
    db: &DB,
    domain: TimeDomain,
    from: &[u8],
    skip: &HashSet<Vec<u8>>,
) -> Result<Option<Vec<u8>>, StateError> {
    let mut keys = Vec::new();
    scan(db, domain, from, 1, skip, &mut keys)?;
    Ok(keys.pop())
}

/// Appends to `out` up to `count` keys of `domain` in `db` from `from` on,
/// skipping `skip`.
fn scan(
    db: &DB,
    domain: TimeDomain,
    from: &[u8],
    count: usize,
    skip: &HashSet<Vec<u8>>,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), StateError> {
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound([domain.prefix() + 1]);
    let wanted = out.len() + count;
    for item in db.iterator_opt(IteratorMode::From(from, Direction::Forward), read) {
        let (key, _) = item.map_err(db_error("timer scan"))?;
        if !skip.contains(key.as_ref()) {
            out.push(key.to_vec());
            if out.len() == wanted {
                break;
            }
        }
    }
    Ok(())
}

impl TimerQueue {
    /// The timers stored in `db` (as of its last flush): all behind the
    /// boundaries, read into memory as they come due.
    pub(super) fn load(db: &DB, limit: usize) -> Result<TimerQueue, StateError> {
        let mut queue = TimerQueue {
            memory: BTreeSet::new(),
            unwritten: HashSet::new(),
            fired: HashSet::new(),
            boundary: [None, None, None],
            limit: limit.max(2),
        };
        for domain in TimeDomain::ALL {
            queue.boundary[domain.index()] =
                first_stored(db, domain, &[domain.prefix()], &HashSet::new())?;
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

    /// Moves the latest half of the memory timers to RocksDB, lowering the
    /// boundaries of their domains.
    fn spill(&mut self, db: &DB, write: &WriteOptions) -> Result<(), StateError> {
        let keep = self.limit / 2;
        let mut batch = WriteBatch::default();
        while self.memory.len() > keep {
            let Some(key) = self.memory.pop_last() else {
                break;
            };
            let Some(domain) = TimeDomain::of_timer_key(&key) else {
                continue;
            };
            batch.put(&key, b"");
            self.unwritten.remove(&key);
            let boundary = &mut self.boundary[domain.index()];
            if boundary.as_ref().is_none_or(|b| key < *b) {
                *boundary = Some(key);
            }
        }
        db.write_opt(batch, write).map_err(db_error("timer spill"))
    }

    /// Reads the next chunk of `domain`'s timers from RocksDB into memory,
    /// raising its boundary.
    fn refill(&mut self, db: &DB, domain: TimeDomain) -> Result<(), StateError> {
        let slot = domain.index();
        let Some(from) = self.boundary[slot].take() else {
            return Ok(());
        };
        let room = (self.limit / 2).max(1);
        let mut keys = Vec::with_capacity(room + 1);
        scan(db, domain, &from, room + 1, &self.fired, &mut keys)?;
        if keys.len() > room {
            self.boundary[slot] = keys.pop();
        }
        self.memory.extend(keys);
        Ok(())
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
        if queue.boundary[domain.index()]
            .as_ref()
            .is_some_and(|b| key >= *b)
        {
            // Past the boundary: RocksDB only.
            queue.fired.remove(&key);
            return self
                .db
                .put_opt(&key, b"", &self.write_options)
                .map_err(db_error("timer write"));
        }
        if !queue.memory.contains(&key) {
            // One that fired since the flush is still in RocksDB.
            if !queue.fired.remove(&key) {
                queue.unwritten.insert(key.clone());
            }
            queue.memory.insert(key);
            if queue.memory.len() > queue.limit {
                queue.spill(&self.db, &self.write_options)?;
            }
        }
        Ok(())
    }

    /// The earliest pending timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        let start = [domain.prefix()];
        let end = [domain.prefix() + 1];
        let in_memory = self
            .timers
            .memory
            .range::<[u8], _>((
                std::ops::Bound::Included(&start[..]),
                std::ops::Bound::Excluded(&end[..]),
            ))
            .next();
        in_memory
            .or(self.timers.boundary[domain.index()].as_ref())
            .and_then(|key| timer_key_time(key))
    }

    /// Number of timers held in memory (more may wait in RocksDB).
    pub fn timers_in_memory(&self) -> usize {
        self.timers.memory.len()
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
        // Called after every record: nothing due must cost nothing.
        if self.next_timer(domain).is_none_or(|next| next > up_to) {
            return Ok(false);
        }
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
        let mut taken = 0;
        loop {
            let queue = &mut self.timers;
            let due: Vec<Vec<u8>> = queue
                .memory
                .range(start.clone()..end.clone())
                .take(limit - taken)
                .cloned()
                .collect();
            taken += due.len();
            for key in due {
                queue.memory.remove(&key);
                if let Some(timer) = parse_timer_key(&key) {
                    out.push(timer);
                }
                if !queue.unwritten.remove(&key) {
                    queue.fired.insert(key);
                }
            }
            let more_stored = queue.boundary[domain.index()]
                .as_ref()
                .is_some_and(|b| *b < end);
            if taken == limit || !more_stored {
                break;
            }
            queue.refill(&self.db, domain)?;
        }
        Ok(self.next_timer(domain).is_some_and(|next| next <= up_to))
    }
}
