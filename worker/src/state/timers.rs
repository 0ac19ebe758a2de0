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
//! In memory, the timers of a domain are grouped by their time, step and
//! kind (see the `timer_buckets` module); those of one time, step and kind
//! fire in no specified order.

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::keys::{parse_timer_key, timer_key};
use super::timer_buckets::TimerBuckets;
use super::{StateError, TaskState, TimeDomain, Timer, db_error};

/// Its RocksDB key in `domain`.
fn key_of(timer: &Timer, domain: TimeDomain) -> Vec<u8> {
    timer_key(domain, timer.time, timer.step, timer.kind, &timer.payload)
}

/// The pending timers of a task.
#[derive(Debug)]
pub(super) struct TimerQueue {
    /// Per domain ([`TimeDomain::index`]), the timers held in memory: those
    /// before its boundary, each with whether RocksDB holds it already.
    memory: [TimerBuckets; TimeDomain::ALL.len()],
    /// Keys of timers in RocksDB that fired since they were last written
    /// there: deleted at the next flush, or before RocksDB's timers are read
    /// or written otherwise.
    fired: Vec<Vec<u8>>,
    /// Per domain, the first timer held only in RocksDB: every pending
    /// timer of the domain from it on is there, not in memory.
    boundary: [Option<Timer>; TimeDomain::ALL.len()],
    /// Most timers held in memory.
    limit: usize,
}

/// Appends to `out` up to `count` timers of `domain` in `db` from the key
/// `from` on.
fn scan(
    db: &DB,
    domain: TimeDomain,
    from: &[u8],
    count: usize,
    out: &mut Vec<Timer>,
) -> Result<(), StateError> {
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound([domain.prefix() + 1]);
    for item in db
        .iterator_opt(IteratorMode::From(from, Direction::Forward), read)
        .take(count)
    {
        let (key, _) = item.map_err(db_error("timer scan"))?;
        out.extend(parse_timer_key(&key));
    }
    Ok(())
}

impl TimerQueue {
    /// The timers stored in `db` (as of its last flush): all behind the
    /// boundaries, read into memory as they come due.
    pub(super) fn load(db: &DB, limit: usize) -> Result<TimerQueue, StateError> {
        let mut queue = TimerQueue {
            memory: Default::default(),
            fired: Vec::new(),
            boundary: [None, None, None],
            limit: limit.max(2),
        };
        for domain in TimeDomain::ALL {
            let mut first = Vec::new();
            scan(db, domain, &[domain.prefix()], 1, &mut first)?;
            queue.boundary[domain.index()] = first.pop();
        }
        Ok(queue)
    }

    /// Timers held in memory, over all domains.
    fn held(&self) -> usize {
        self.memory.iter().map(TimerBuckets::len).sum()
    }

    /// Adds the writes that make RocksDB hold exactly the pending timers:
    /// the fired ones are deleted before the new ones are put, so that a
    /// timer that fired and was registered again stays.
    pub(super) fn write_changes(&mut self, batch: &mut WriteBatch) {
        self.delete_fired(batch);
        for domain in TimeDomain::ALL {
            self.memory[domain.index()].store_new(|(time, step, kind), payload| {
                batch.put(timer_key(domain, time, step, kind, payload), b"");
            });
        }
    }

    /// Adds the deletes of the fired timers to `batch`: it must reach
    /// RocksDB before RocksDB's timers are scanned or written otherwise.
    fn delete_fired(&mut self, batch: &mut WriteBatch) {
        for key in self.fired.drain(..) {
            batch.delete(key);
        }
    }

    /// Moves the latest half of the memory timers to RocksDB (from the
    /// domains of the highest key prefix first), lowering the boundaries
    /// of their domains.
    fn spill(&mut self, db: &DB, write: &WriteOptions) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        self.delete_fired(&mut batch);
        let keep = self.limit / 2;
        let mut spilled = Vec::new();
        // `TimeDomain::ALL` is in prefix order.
        for domain in TimeDomain::ALL.into_iter().rev() {
            let held = self.held();
            if held <= keep {
                break;
            }
            let slot = domain.index();
            self.memory[slot].take_latest(held - keep, &mut spilled);
            let boundary = &mut self.boundary[slot];
            for timer in spilled.drain(..) {
                batch.put(key_of(&timer, domain), b"");
                if boundary.as_ref().is_none_or(|b| timer < *b) {
                    *boundary = Some(timer);
                }
            }
        }
        db.write_opt(batch, write).map_err(db_error("timer spill"))
    }

    /// Reads the next chunk of `domain`'s timers from RocksDB into memory,
    /// raising its boundary.
    fn refill(
        &mut self,
        db: &DB,
        write: &WriteOptions,
        domain: TimeDomain,
    ) -> Result<(), StateError> {
        if !self.fired.is_empty() {
            let mut batch = WriteBatch::default();
            self.delete_fired(&mut batch);
            db.write_opt(batch, write)
                .map_err(db_error("delete of fired timers"))?;
        }
        let slot = domain.index();
        let Some(from) = self.boundary[slot].take() else {
            return Ok(());
        };
        let room = (self.limit / 2).max(1);
        let mut timers = Vec::with_capacity(room + 1);
        scan(db, domain, &key_of(&from, domain), room + 1, &mut timers)?;
        if timers.len() > room {
            self.boundary[slot] = timers.pop();
        }
        for timer in timers {
            self.memory[slot].insert((timer.time, timer.step, timer.kind), &timer.payload, true);
        }
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
        let queue = &mut self.timers;
        let slot = domain.index();
        if queue.boundary[slot].as_ref().is_some_and(|b| {
            (time, step, kind, payload) >= (b.time, b.step, b.kind, b.payload.as_slice())
        }) {
            // Past the boundary: RocksDB only.
            let mut batch = WriteBatch::default();
            queue.delete_fired(&mut batch);
            batch.put(timer_key(domain, time, step, kind, payload), b"");
            return self
                .db
                .write_opt(batch, &self.write_options)
                .map_err(db_error("timer write"));
        }
        // A timer held already stays as it was. A new one is not known to
        // be in RocksDB: one that fired since it was written there is
        // deleted first at the flush, then put again.
        if queue.memory[slot].insert((time, step, kind), payload, false)
            && queue.held() > queue.limit
        {
            queue.spill(&self.db, &self.write_options)?;
        }
        Ok(())
    }

    /// The earliest pending timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        let slot = domain.index();
        self.timers.memory[slot]
            .first_time()
            .or(self.timers.boundary[slot].as_ref().map(|timer| timer.time))
    }

    /// Number of timers held in memory (more may wait in RocksDB).
    pub fn timers_in_memory(&self) -> usize {
        self.timers.held()
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
        let slot = domain.index();
        let mut taken = 0;
        while taken < limit {
            let queue = &mut self.timers;
            if let Some((timer, stored)) = queue.memory[slot].take_due(up_to) {
                if stored {
                    queue.fired.push(key_of(&timer, domain));
                }
                out.push(timer);
                taken += 1;
            } else if queue.boundary[slot]
                .as_ref()
                .is_some_and(|b| b.time <= up_to)
            {
                // Memory holds no due timer: the next waits in RocksDB.
                queue.refill(&self.db, &self.write_options, domain)?;
            } else {
                break;
            }
        }
        Ok(self.next_timer(domain).is_some_and(|next| next <= up_to))
    }
}
