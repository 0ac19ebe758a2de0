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

use std::collections::BTreeMap;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::keys::{parse_timer_key, timer_key};
use super::{StateError, TaskState, TimeDomain, Timer, db_error};

/// A timer of one domain, ordered as its RocksDB key orders it: by time,
/// then step, kind and payload. Comparing one mostly compares two
/// integers, where the key's bytes would need a `memcmp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    time: i64,
    step: u8,
    kind: u8,
    payload: Vec<u8>,
}

impl Entry {
    /// The entry of a timer key of RocksDB.
    fn of_key(key: &[u8]) -> Option<Entry> {
        let Timer {
            time,
            step,
            kind,
            payload,
        } = parse_timer_key(key)?;
        Some(Entry {
            time,
            step,
            kind,
            payload,
        })
    }

    /// Its RocksDB key in `domain`.
    fn key(&self, domain: TimeDomain) -> Vec<u8> {
        timer_key(domain, self.time, self.step, self.kind, &self.payload)
    }
}

/// The pending timers of a task.
#[derive(Debug)]
pub(super) struct TimerQueue {
    /// Per domain ([`TimeDomain::index`]), the timers held in memory: those
    /// before its boundary, each with whether RocksDB holds it already.
    memory: [BTreeMap<Entry, bool>; TimeDomain::ALL.len()],
    /// Timers held in memory, over all domains.
    held: usize,
    /// Keys of timers in RocksDB that fired since they were last written
    /// there: deleted at the next flush, or before RocksDB's timers are read
    /// or written otherwise.
    fired: Vec<Vec<u8>>,
    /// Per domain, the first timer held only in RocksDB: every pending
    /// timer of the domain from it on is there, not in memory.
    boundary: [Option<Entry>; TimeDomain::ALL.len()],
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
    out: &mut Vec<Entry>,
) -> Result<(), StateError> {
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound([domain.prefix() + 1]);
    for item in db
        .iterator_opt(IteratorMode::From(from, Direction::Forward), read)
        .take(count)
    {
        let (key, _) = item.map_err(db_error("timer scan"))?;
        out.extend(Entry::of_key(&key));
    }
    Ok(())
}

impl TimerQueue {
    /// The timers stored in `db` (as of its last flush): all behind the
    /// boundaries, read into memory as they come due.
    pub(super) fn load(db: &DB, limit: usize) -> Result<TimerQueue, StateError> {
        let mut queue = TimerQueue {
            memory: Default::default(),
            held: 0,
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

    /// Adds the writes that make RocksDB hold exactly the pending timers:
    /// the fired ones are deleted before the new ones are put, so that a
    /// timer that fired and was registered again stays.
    pub(super) fn write_changes(&mut self, batch: &mut WriteBatch) {
        for key in self.fired.drain(..) {
            batch.delete(key);
        }
        for domain in TimeDomain::ALL {
            for (entry, stored) in &mut self.memory[domain.index()] {
                if !*stored {
                    batch.put(entry.key(domain), b"");
                    *stored = true;
                }
            }
        }
    }

    /// Deletes the fired timers from RocksDB now: before it is scanned or
    /// written outside a flush.
    fn delete_fired(&mut self, db: &DB, write: &WriteOptions) -> Result<(), StateError> {
        if self.fired.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for key in self.fired.drain(..) {
            batch.delete(key);
        }
        db.write_opt(batch, write)
            .map_err(db_error("delete of fired timers"))
    }

    /// Moves the latest half of the memory timers to RocksDB (from the
    /// domains of the highest key prefix first), lowering the boundaries
    /// of their domains.
    fn spill(&mut self, db: &DB, write: &WriteOptions) -> Result<(), StateError> {
        self.delete_fired(db, write)?;
        let keep = self.limit / 2;
        let mut domains = TimeDomain::ALL;
        domains.sort_by_key(|d| std::cmp::Reverse(d.prefix()));
        let mut batch = WriteBatch::default();
        for domain in domains {
            let slot = domain.index();
            while self.held > keep {
                let Some((entry, _)) = self.memory[slot].pop_last() else {
                    break;
                };
                self.held -= 1;
                batch.put(entry.key(domain), b"");
                let boundary = &mut self.boundary[slot];
                if boundary.as_ref().is_none_or(|b| entry < *b) {
                    *boundary = Some(entry);
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
        self.delete_fired(db, write)?;
        let slot = domain.index();
        let Some(from) = self.boundary[slot].take() else {
            return Ok(());
        };
        let room = (self.limit / 2).max(1);
        let mut entries = Vec::with_capacity(room + 1);
        scan(db, domain, &from.key(domain), room + 1, &mut entries)?;
        if entries.len() > room {
            self.boundary[slot] = entries.pop();
        }
        for entry in entries {
            if self.memory[slot].insert(entry, true).is_none() {
                self.held += 1;
            }
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
        let entry = Entry {
            time,
            step,
            kind,
            payload: payload.to_vec(),
        };
        let queue = &mut self.timers;
        let slot = domain.index();
        if queue.boundary[slot].as_ref().is_some_and(|b| entry >= *b) {
            // Past the boundary: RocksDB only.
            queue.delete_fired(&self.db, &self.write_options)?;
            return self
                .db
                .put_opt(entry.key(domain), b"", &self.write_options)
                .map_err(db_error("timer write"));
        }
        if let std::collections::btree_map::Entry::Vacant(vacant) = queue.memory[slot].entry(entry)
        {
            // Not known to be in RocksDB: one that fired since it was
            // written there is deleted first at the flush, then put again.
            vacant.insert(false);
            queue.held += 1;
            if queue.held > queue.limit {
                queue.spill(&self.db, &self.write_options)?;
            }
        }
        Ok(())
    }

    /// The earliest pending timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        let slot = domain.index();
        self.timers.memory[slot]
            .first_key_value()
            .map(|(entry, _)| entry)
            .or(self.timers.boundary[slot].as_ref())
            .map(|entry| entry.time)
    }

    /// Number of timers held in memory (more may wait in RocksDB).
    pub fn timers_in_memory(&self) -> usize {
        self.timers.held
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
            let due = queue.memory[slot]
                .first_key_value()
                .is_some_and(|(entry, _)| entry.time <= up_to);
            if due {
                if let Some((entry, stored)) = queue.memory[slot].pop_first() {
                    queue.held -= 1;
                    if stored {
                        queue.fired.push(entry.key(domain));
                    }
                    out.push(Timer {
                        time: entry.time,
                        step: entry.step,
                        kind: entry.kind,
                        payload: entry.payload,
                    });
                    taken += 1;
                }
                continue;
            }
            // Memory holds no due timer: the next may wait in RocksDB.
            if queue.boundary[slot]
                .as_ref()
                .is_some_and(|b| b.time <= up_to)
            {
                queue.refill(&self.db, &self.write_options, domain)?;
            } else {
                break;
            }
        }
        Ok(self.next_timer(domain).is_some_and(|next| next <= up_to))
    }
}
