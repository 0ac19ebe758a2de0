//! The write-back cache in front of a task's RocksDB instance, bounded in
//! bytes: the tasks of a worker share a [`CacheBudget`], each holding at
//! most its equal share. An entry costs its key (held once, in its slot), its
//! decoded value's heap ([`StateValue::heap_bytes`]) and [`SLOT_OVERHEAD`];
//! a value changed in place is measured again at the next access, so a
//! sketch turning dense or a session list growing counts. Eviction is a
//! clock; dirty entries are written on eviction.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use rocksdb::{DB, WriteBatch, WriteOptions};

use super::stored_windows::StoredWindows;
use super::{StateError, StateValue, db_error, hex};

/// The bytes the write-back caches of a worker's tasks may hold together,
/// split equally among the tasks open at any time: every [`TaskState`](super::TaskState)
/// opened with options sharing this budget counts itself in while it lives,
/// and evicts down to its share (`bytes / open tasks`) as it loads values,
/// so a task opened later shrinks the others' share.
#[derive(Debug)]
pub struct CacheBudget {
    bytes: usize,
    tasks: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `bytes` for the caches of all tasks that share it.
    pub fn new(bytes: usize) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            bytes,
            tasks: AtomicUsize::new(0),
        })
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many open tasks share it.
    pub fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Relaxed)
    }

    /// The share of one task.
    pub fn per_task(&self) -> usize {
        self.bytes / self.tasks().max(1)
    }
}

/// A cached value.
struct Slot {
    key: Box<[u8]>,
    /// `None`: absent (never stored, or deleted).
    value: Option<StateValue>,
    /// Differs from what RocksDB holds.
    dirty: bool,
    /// RocksDB holds a value for the key (so a deletion must reach it).
    in_db: bool,
    /// Used since the clock hand last passed.
    referenced: bool,
    /// What it costs, as counted in [`WriteBack::bytes`].
    bytes: usize,
}

/// What a cached entry costs besides its key bytes (held once, in the
/// slot) and its value's heap: the slot and the index entry (a slot
/// number and a control byte), each twice for the spare capacity of a
/// growing vector and hash table, and the allocator's headers of the key
/// and the value.
const SLOT_OVERHEAD: usize =
    2 * std::mem::size_of::<Slot>() + 2 * (std::mem::size_of::<usize>() + 1) + 2 * 16;

/// The cost of caching `value` under `key`.
pub(super) fn entry_bytes(key: &[u8], value: Option<&StateValue>) -> usize {
    SLOT_OVERHEAD + key.len() + value.map_or(0, StateValue::heap_bytes)
}

/// The write-back cache of one task.
pub(super) struct WriteBack {
    /// Slot by key. Keys are hashed four times per new key (look-up,
    /// insert, and the eviction's remove and move): a fast hash, not
    /// SipHash; the keys come from the task's own records, and a flood of
    /// colliding keys would only slow the task that reads them.
    index: HashTable<usize>,
    /// The index's hash of keys.
    hasher: foldhash::fast::RandomState,
    slots: Vec<Slot>,
    /// The budget this cache takes its share of.
    budget: Arc<CacheBudget>,
    /// Sum of the slots' `bytes`.
    bytes: usize,
    /// The slot last handed out by [`WriteBack::value_mut`], whose value
    /// may have changed size since.
    changed: Option<usize>,
    hand: usize,
    scratch: Vec<u8>,
    /// The windows RocksDB may hold values of that the cache does not: a
    /// miss of any other window's key reads nothing.
    stored: StoredWindows,
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.budget.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WriteBack {
    /// An empty cache counted in `budget` while it lives, in front of a
    /// RocksDB instance that may hold the values of the `stored` windows.
    pub(super) fn new(budget: Arc<CacheBudget>, stored: StoredWindows) -> WriteBack {
        budget.tasks.fetch_add(1, Ordering::Relaxed);
        WriteBack {
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            slots: Vec::new(),
            budget,
            bytes: 0,
            changed: None,
            hand: 0,
            scratch: Vec::new(),
            stored,
        }
    }

    /// Number of cached values.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The estimated memory of the cache, as of the last access.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The value in slot `i`.
    pub(super) fn value(&self, i: usize) -> Option<&StateValue> {
        self.slots[i].value.as_ref()
    }

    /// The value in slot `i` for update: marked dirty, and measured again
    /// at the next access.
    pub(super) fn value_mut(&mut self, i: usize) -> &mut Option<StateValue> {
        self.changed = Some(i);
        let slot = &mut self.slots[i];
        slot.dirty = true;
        &mut slot.value
    }

    /// Adds every dirty value to `batch` (puts and deletes), and the latest
    /// window start RocksDB holds a value of; they count as clean
    /// afterwards and stay cached.
    pub(super) fn write_dirty(&mut self, batch: &mut WriteBatch) {
        self.remeasure();
        let mut buf = Vec::new();
        for slot in &mut self.slots {
            if !slot.dirty {
                continue;
            }
            match &slot.value {
                Some(value) => {
                    buf.clear();
                    value.encode(&mut buf);
                    batch.put(&slot.key, &buf);
                    slot.in_db = true;
                    self.stored.written(&slot.key);
                }
                None => {
                    if slot.in_db {
                        batch.delete(&slot.key);
                    }
                    slot.in_db = false;
                }
            }
            slot.dirty = false;
        }
        self.stored.store(batch);
    }

    /// Measures again the value last handed out for update; drops it
    /// when it was deleted and RocksDB does not hold it either (a fired
    /// window), as there is nothing to write and a read finds nothing.
    fn remeasure(&mut self) {
        if let Some(i) = self.changed.take() {
            let slot = &mut self.slots[i];
            if slot.value.is_none() && !slot.in_db {
                self.remove(i);
                return;
            }
            let bytes = entry_bytes(&slot.key, slot.value.as_ref());
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.bytes = bytes;
        }
    }

    /// The slot of `key`, read from `db` on a miss (unless it is the key of
    /// a window RocksDB cannot hold, see [`StoredWindows`]) after making
    /// room within this cache's share (evicted dirty values are written
    /// with `write_options`).
    pub(super) fn load(
        &mut self,
        db: &DB,
        write_options: &WriteOptions,
        key: &[u8],
    ) -> Result<usize, StateError> {
        self.remeasure();
        // A value that grew in place since the last access may have taken
        // the cache over its share even though the access is a hit.
        let share = self.budget.per_task();
        self.make_room(db, write_options, share, 0, 1)?;
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        if let Some(&i) = self.index.find(hash, |&i| *slots[i].key == *key) {
            self.slots[i].referenced = true;
            return Ok(i);
        }
        let stored = if self.stored.may_hold(key) {
            db.get_pinned(key)
                .map_err(db_error("read"))?
                .map(|bytes| {
                    StateValue::decode(&bytes).map_err(|e| StateError::Corrupt {
                        key: hex(key),
                        reason: e.to_string(),
                    })
                })
                .transpose()?
        } else {
            None
        };
        let bytes = entry_bytes(key, stored.as_ref());
        // Make room within this task's share, which shrinks when more tasks
        // open; a value larger than the share still gets cached alone.
        self.make_room(db, write_options, share, bytes, 0)?;
        self.slots.push(Slot {
            key: key.into(),
            in_db: stored.is_some(),
            value: stored,
            dirty: false,
            referenced: true,
            bytes,
        });
        self.bytes += bytes;
        let i = self.slots.len() - 1;
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(&*slots[j].key));
        Ok(i)
    }

    /// Evicts until `incoming` more bytes fit within `share`, keeping at
    /// least `keep` slots (a value larger than the share stays cached
    /// alone).
    fn make_room(
        &mut self,
        db: &DB,
        write_options: &WriteOptions,
        share: usize,
        incoming: usize,
        keep: usize,
    ) -> Result<(), StateError> {
        while self.slots.len() > keep && self.bytes + incoming > share {
            let victim = self.victim();
            self.evict(db, write_options, victim)?;
        }
        Ok(())
    }

    /// The next slot the clock hand finds unreferenced.
    fn victim(&mut self) -> usize {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let slot = &mut self.slots[i];
            if slot.referenced {
                slot.referenced = false;
            } else {
                return i;
            }
        }
    }

    /// Writes slot `i` back if dirty and removes it from the cache (the
    /// last slot takes its place).
    fn evict(&mut self, db: &DB, write_options: &WriteOptions, i: usize) -> Result<(), StateError> {
        let slot = &self.slots[i];
        if slot.dirty {
            match &slot.value {
                Some(value) => {
                    self.scratch.clear();
                    value.encode(&mut self.scratch);
                    db.put_opt(&slot.key, &self.scratch, write_options)
                        .map_err(db_error("write of an evicted value"))?;
                    self.stored.written_through(&slot.key, db, write_options)?;
                }
                None if slot.in_db => db
                    .delete_opt(&slot.key, write_options)
                    .map_err(db_error("delete of an evicted value"))?,
                None => {}
            }
        }
        if slot.value.is_some() {
            self.stored.evicted(&slot.key);
        }
        self.remove(i);
        Ok(())
    }

    /// Removes slot `i` (the last slot takes its place).
    fn remove(&mut self, i: usize) {
        let hash = self.hasher.hash_one(&*self.slots[i].key);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let slot = self.slots.swap_remove(i);
        self.bytes -= slot.bytes;
        // The last slot moved to `i`.
        let moved = self.slots.len();
        if let Some(moved_slot) = self.slots.get(i) {
            let hash = self.hasher.hash_one(&*moved_slot.key);
            if let Some(index) = self.index.find_mut(hash, |&j| j == moved) {
                *index = i;
            }
        }
    }
}
