//! The keyed state of one task: a RocksDB instance with a bounded write-back
//! cache in front of it, and event- and processing-time timers.
//!
//! # Layout
//!
//! Every key starts with a kind byte:
//! - `0x01 step payload`: a state value of pipeline step `step`. The payload
//!   of keyed steps is `len(key) as u32 BE, key, [window start]` (see
//!   [`keyed_payload`]), so all windows of a key are one range scan.
//! - `0x02 time step kind payload`: an event-time timer, `0x03 ...` a
//!   processing-time timer, `0x04 ...` an event-time timer of a step after a
//!   repartition (see [`TimeDomain::Repartitioned`]). Times are big-endian with the sign bit flipped,
//!   so RocksDB keeps timers ordered by time and firing them is a scan from
//!   the start of the range, deleted afterwards by one range deletion.
//!
//! # Durability
//!
//! Writes skip the write-ahead log. The durable copy of the state is the
//! checkpoint: [`TaskState::flush_cache`] writes the cache through and flushes
//! the memtables to SST files, and a RocksDB checkpoint taken right after is
//! complete. After a failure the task restores the last checkpoint and
//! replays Kafka from the offsets stored with it, so whatever the local
//! directory held after that checkpoint is never read: a WAL would only cost
//! a write per update. For the same reason the local directory is only a
//! consistent state right after `flush_cache`.
//!
//! # Memory
//!
//! Accumulators and dedupe entries live in RocksDB; the write-back cache in
//! front of it is bounded in bytes, not entries: the tasks of a worker share
//! one [`CacheBudget`] (by default an eighth of the container's memory, see
//! [`memory`]), each task holding at most its equal share. An entry costs
//! its key (twice: slot and index), its decoded value's heap and a fixed
//! overhead (see [`TaskState::cached_bytes`]). Eviction is a clock, dirty
//! entries are written on eviction. So memory is bounded by the budget, the
//! shared block cache and the memtables, whatever the number of keys or the
//! size of their values (a sketch turning dense, a growing session list).
//! Timers go to RocksDB directly and are taken in bounded chunks
//! ([`TaskState::take_due_timers`]).

mod cache;
pub mod memory;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, DBCompressionType, Direction, IteratorMode, ReadOptions};
use rocksdb::{DB, Options, WriteBatch, WriteOptions};
use thiserror::Error;

use crate::engine::aggregate::{AccumulatorError, Accumulators, Reader};
use crate::engine::window::Window;
pub use cache::CacheBudget;
use cache::WriteBack;
#[cfg(test)]
use cache::entry_bytes;

const STATE: u8 = 0x01;
const EVENT_TIMERS: u8 = 0x02;
const PROCESSING_TIMERS: u8 = 0x03;
const REPARTITIONED_TIMERS: u8 = 0x04;

/// Why state could not be opened, read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// RocksDB refused to open the directory.
    #[error("cannot open RocksDB state in {path}: {source}")]
    Open {
        /// The state directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A RocksDB read or write failed.
    #[error("RocksDB {operation} failed: {source}")]
    Db {
        /// What was being done.
        operation: &'static str,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupt state value under key {key}: {reason}")]
    Corrupt {
        /// The key, hex-encoded.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn db_error(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> StateError {
    move |source| StateError::Db { operation, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tuning of the RocksDB instances of a worker.
#[derive(Clone)]
pub struct StateOptions {
    /// The block cache shared by every task of the worker.
    pub block_cache: Arc<rocksdb::Cache>,
    /// Size of each memtable of a task, in bytes.
    pub write_buffer_size: usize,
    /// The write-back cache budget shared by every task of the worker.
    pub cache: Arc<CacheBudget>,
}

impl StateOptions {
    /// Options with a new block cache of `block_cache_bytes` and a new
    /// write-back cache budget (to be shared by cloning these options for
    /// every task of the worker), and memtables of `write_buffer_size`
    /// bytes. The write-back caches get
    /// [`memory::MemoryBudget::state_cache_bytes`] of the container this
    /// process runs in: no spec field sizes them (the spec's `state` sizes
    /// RocksDB's block cache and memtables only), and a share of the pod's
    /// memory is what keeps them within it whatever the key count.
    pub fn new(block_cache_bytes: usize, write_buffer_size: usize) -> StateOptions {
        StateOptions {
            block_cache: Arc::new(rocksdb::Cache::new_lru_cache(block_cache_bytes)),
            write_buffer_size,
            cache: CacheBudget::new(memory::MemoryBudget::detect().state_cache_bytes()),
        }
    }

    /// These options with a write-back cache budget of its own of `bytes`
    /// for all tasks opened with them.
    pub fn with_cache_bytes(mut self, bytes: usize) -> StateOptions {
        self.cache = CacheBudget::new(bytes);
        self
    }
}

impl Default for StateOptions {
    /// A 128 MiB block cache and 16 MiB memtables, the spec's defaults.
    fn default() -> Self {
        StateOptions::new(128 << 20, 16 << 20)
    }
}

impl std::fmt::Debug for StateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateOptions")
            .field("write_buffer_size", &self.write_buffer_size)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// One session window of a key with its accumulators.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The session's extent.
    pub window: Window,
    /// Whether its result was emitted (it stays for the allowed lateness).
    pub fired: bool,
    /// The aggregate so far.
    pub accumulators: Accumulators,
}

/// A value kept in state.
#[derive(Clone, Debug, PartialEq)]
pub enum StateValue {
    /// The accumulators of a key (and tumbling or sliding window).
    Accumulators(Accumulators),
    /// The open session windows of a key.
    Sessions(Vec<Session>),
    /// When a dedupe key expires.
    Expiry(i64),
}

const VALUE_ACCUMULATORS: u8 = 1;
const VALUE_SESSIONS: u8 = 2;
const VALUE_EXPIRY: u8 = 3;

impl StateValue {
    /// An estimate of the heap memory the decoded value holds.
    pub fn heap_bytes(&self) -> usize {
        match self {
            StateValue::Accumulators(accs) => accs.heap_bytes(),
            StateValue::Sessions(sessions) => {
                sessions.capacity() * std::mem::size_of::<Session>()
                    + sessions
                        .iter()
                        .map(|s| s.accumulators.heap_bytes())
                        .sum::<usize>()
            }
            StateValue::Expiry(_) => 0,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StateValue::Accumulators(accs) => {
                out.push(VALUE_ACCUMULATORS);
                accs.encode(out);
            }
            StateValue::Sessions(sessions) => {
                out.push(VALUE_SESSIONS);
                out.extend_from_slice(&(sessions.len() as u32).to_le_bytes());
                for s in sessions {
                    out.extend_from_slice(&s.window.start.to_le_bytes());
                    out.extend_from_slice(&s.window.end.to_le_bytes());
                    out.push(u8::from(s.fired));
                    s.accumulators.encode(out);
                }
            }
            StateValue::Expiry(t) => {
                out.push(VALUE_EXPIRY);
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
    }

    /// Decodes a value written by [`StateValue::encode`].
    pub fn decode(bytes: &[u8]) -> Result<StateValue, AccumulatorError> {
        let mut r = Reader::new(bytes);
        let value = match r.u8()? {
            VALUE_ACCUMULATORS => StateValue::Accumulators(Accumulators::read(&mut r)?),
            VALUE_SESSIONS => {
                let n = r.u32()?;
                let mut sessions = Vec::new();
                for _ in 0..n {
                    let start = r.u64()? as i64;
                    let end = r.u64()? as i64;
                    let fired = r.u8()? != 0;
                    let accumulators = Accumulators::read(&mut r)?;
                    sessions.push(Session {
                        window: Window { start, end },
                        fired,
                        accumulators,
                    });
                }
                StateValue::Sessions(sessions)
            }
            VALUE_EXPIRY => StateValue::Expiry(r.u64()? as i64),
            _ => return Err(AccumulatorError::Corrupt("unknown state value tag")),
        };
        if r.is_empty() {
            Ok(value)
        } else {
            Err(AccumulatorError::Corrupt("trailing bytes"))
        }
    }
}

/// Appends the payload of a keyed value: the key, length-prefixed, then the
/// window start if any, so that keys sort by (key, window start).
pub fn keyed_payload(out: &mut Vec<u8>, key: &[u8], window_start: Option<i64>) {
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(start) = window_start {
        out.extend_from_slice(&order_preserving(start));
    }
}

/// Splits a payload written by [`keyed_payload`] into the key and the window
/// start; `None` when it is not such a payload.
pub fn parse_keyed_payload(payload: &[u8]) -> Option<(&[u8], Option<i64>)> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let key = payload.get(4..4 + len)?;
    let rest = payload.get(4 + len..)?;
    match rest.len() {
        0 => Some((key, None)),
        8 => Some((key, Some(from_order_preserving(rest.try_into().ok()?)))),
        _ => None,
    }
}

fn order_preserving(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_order_preserving(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// The task watermark over the source partitions.
    Event,
    /// The wall clock given to [`crate::engine::task::TaskProcessor::advance_time`].
    Processing,
    /// The watermark of the records read back from a repartition topic: the
    /// minimum over the upstream tasks' watermarks.
    Repartitioned,
}

impl TimeDomain {
    /// Every domain.
    const ALL: [TimeDomain; 3] = [
        TimeDomain::Event,
        TimeDomain::Processing,
        TimeDomain::Repartitioned,
    ];

    fn prefix(self) -> u8 {
        match self {
            TimeDomain::Event => EVENT_TIMERS,
            TimeDomain::Processing => PROCESSING_TIMERS,
            TimeDomain::Repartitioned => REPARTITIONED_TIMERS,
        }
    }

    fn index(self) -> usize {
        match self {
            TimeDomain::Event => 0,
            TimeDomain::Processing => 1,
            TimeDomain::Repartitioned => 2,
        }
    }
}

/// A due timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// When it was due.
    pub time: i64,
    /// The step that registered it.
    pub step: u8,
    /// What the step does when it fires.
    pub kind: u8,
    /// The state payload it is about.
    pub payload: Vec<u8>,
}

fn timer_key(domain: TimeDomain, time: i64, step: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + payload.len());
    key.push(domain.prefix());
    key.extend_from_slice(&order_preserving(time));
    key.push(step);
    key.push(kind);
    key.extend_from_slice(payload);
    key
}

fn parse_timer_key(key: &[u8]) -> Option<Timer> {
    Some(Timer {
        time: from_order_preserving(key.get(1..9)?.try_into().ok()?),
        step: *key.get(9)?,
        kind: *key.get(10)?,
        payload: key.get(11..)?.to_vec(),
    })
}

/// The keyed state of one task.
pub struct TaskState {
    db: DB,
    path: PathBuf,
    write_options: WriteOptions,
    cache: WriteBack,
    /// Lower bounds of the earliest timer per domain, `None` if none.
    next_timer: [Option<i64>; TimeDomain::ALL.len()],
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState")
            .field("path", &self.path)
            .field("cached", &self.cache.len())
            .field("cached_bytes", &self.cache.bytes())
            .finish_non_exhaustive()
    }
}

impl TaskState {
    /// Opens (creating if needed) the RocksDB instance of a task in `dir`.
    pub fn open(dir: &Path, options: &StateOptions) -> Result<TaskState, StateError> {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&options.block_cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_block_size(16 << 10);
        table.set_format_version(5);

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.set_block_based_table_factory(&table);
        db_options.set_write_buffer_size(options.write_buffer_size.max(1 << 20));
        db_options.set_max_write_buffer_number(3);
        db_options.set_compression_type(DBCompressionType::Lz4);
        db_options.set_level_compaction_dynamic_level_bytes(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(2);

        let db = DB::open(&db_options, dir).map_err(|source| StateError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let mut state = TaskState {
            db,
            path: dir.to_owned(),
            write_options,
            cache: WriteBack::new(Arc::clone(&options.cache)),
            next_timer: [None; TimeDomain::ALL.len()],
        };
        for domain in TimeDomain::ALL {
            state.next_timer[domain.index()] = state.first_timer(domain)?;
        }
        Ok(state)
    }

    /// The RocksDB instance, for checkpoints. Call
    /// [`TaskState::flush_cache`] first.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The directory of the RocksDB instance.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes every dirty cached value to RocksDB and flushes the memtables,
    /// so that a checkpoint taken right after holds the whole state. Cached
    /// values stay cached.
    pub fn flush_cache(&mut self) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        self.cache.write_dirty(&mut batch);
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(db_error("write of the cache"))?;
        self.db.flush().map_err(db_error("memtable flush"))
    }

    /// Deletes every state value of the step stored under `slot` (a step
    /// removed from the pipeline). Its timers stay until due and are then
    /// ignored, as no step has the slot. Call it before processing: cached
    /// values are not looked at.
    pub fn delete_step_state(&mut self, slot: u8) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        let end = match slot.checked_add(1) {
            Some(next) => vec![STATE, next],
            None => vec![STATE + 1],
        };
        batch.delete_range(vec![STATE, slot], end);
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(db_error("deletion of a removed step's state"))
    }

    /// Number of values in the write-back cache.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// The estimated memory of the write-back cache: per entry its key
    /// twice, its value's heap ([`StateValue::heap_bytes`]) and a fixed
    /// overhead for the slot, the index entry and allocator headers. As of
    /// the last access: a value changed through [`TaskState::get_mut`] is
    /// measured again at the next one.
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The value of a state key (built by [`state_key`]), loading it into
    /// the cache.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&StateValue>, StateError> {
        let slot = self.cache.load(&self.db, &self.write_options, key)?;
        Ok(self.cache.value(slot))
    }

    /// The value of a state key for update: whatever the caller leaves there
    /// (`None` deletes) is written back on eviction or flush.
    pub fn get_mut(&mut self, key: &[u8]) -> Result<&mut Option<StateValue>, StateError> {
        let slot = self.cache.load(&self.db, &self.write_options, key)?;
        Ok(self.cache.value_mut(slot))
    }

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
        self.db
            .put_opt(key, b"", &self.write_options)
            .map_err(db_error("timer write"))?;
        let next = &mut self.next_timer[domain.index()];
        *next = Some(next.map_or(time, |n| n.min(time)));
        Ok(())
    }

    /// The earliest pending timer of `domain` (a lower bound: it may have
    /// been taken already).
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        self.next_timer[domain.index()]
    }

    fn first_timer(&self, domain: TimeDomain) -> Result<Option<i64>, StateError> {
        let prefix = [domain.prefix()];
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound([domain.prefix() + 1]);
        let mut iter = self
            .db
            .iterator_opt(IteratorMode::From(&prefix, Direction::Forward), read);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item.map_err(db_error("timer scan"))?;
                Ok(parse_timer_key(&key).map(|t| t.time))
            }
        }
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
        if limit == 0 || self.next_timer(domain).is_none_or(|next| next > up_to) {
            return Ok(self.next_timer(domain).is_some_and(|next| next <= up_to));
        }
        let start = [domain.prefix()];
        let mut end = Vec::with_capacity(9);
        end.push(domain.prefix());
        // Exclusive bound just after `up_to`; up_to == i64::MAX sorts last.
        match up_to.checked_add(1) {
            Some(after) => end.extend_from_slice(&order_preserving(after)),
            None => end = vec![domain.prefix() + 1],
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound([domain.prefix() + 1]);
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), read);
        let mut next = None;
        // Exclusive end of the deletion: `end`, or the first timer left
        // when the limit stops the scan.
        let mut delete_to = None;
        for (taken, item) in iter.enumerate() {
            let (key, _) = item.map_err(db_error("timer scan"))?;
            let due = key.as_ref() < end.as_slice();
            if !due || taken == limit {
                next = parse_timer_key(&key).map(|t| t.time);
                if due {
                    delete_to = Some(key.to_vec());
                }
                break;
            }
            if let Some(timer) = parse_timer_key(&key) {
                out.push(timer);
            }
        }
        let delete_to = delete_to.unwrap_or(end);
        let mut batch = WriteBatch::default();
        batch.delete_range(&start[..], &delete_to[..]);
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(db_error("timer deletion"))?;
        self.next_timer[domain.index()] = next;
        Ok(next.is_some_and(|next| next <= up_to))
    }
}

/// The state key of `payload` for step `step`, written into `out` (cleared
/// first).
pub fn state_key(out: &mut Vec<u8>, step: u8, payload: &[u8]) {
    out.clear();
    out.push(STATE);
    out.push(step);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::aggregate::Accumulator;
    use proptest::prelude::*;
    use weir_crds::job::AggregateFunction;

    /// Options with a cache budget of about `entries` small entries.
    fn options(entries: usize) -> StateOptions {
        StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(entries * small_entry())
    }

    /// What one entry of [`key`] and [`count`] costs.
    fn small_entry() -> usize {
        entry_bytes(&key(100), Some(&count(1)))
    }

    fn count(n: u64) -> StateValue {
        StateValue::Accumulators(Accumulators(vec![Accumulator::Count(n)]))
    }

    fn key(i: u32) -> Vec<u8> {
        let mut payload = Vec::new();
        keyed_payload(&mut payload, format!("user-{i}").as_bytes(), Some(60_000));
        let mut k = Vec::new();
        state_key(&mut k, 3, &payload);
        k
    }

    #[test]
    fn cache_is_bounded_and_writes_back_on_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = TaskState::open(dir.path(), &options(100)).unwrap();
        for i in 0..1000 {
            *state.get_mut(&key(i)).unwrap() = Some(count(u64::from(i)));
            assert!(state.cached_bytes() <= 100 * small_entry());
            assert!(state.cached_entries() <= 110);
        }
        assert!(state.cached_entries() >= 50, "the budget is used");
        for i in 0..1000 {
            assert_eq!(state.get(&key(i)).unwrap(), Some(&count(u64::from(i))));
        }
        // Deletions reach RocksDB too.
        for i in 0..500 {
            *state.get_mut(&key(i)).unwrap() = None;
        }
        state.flush_cache().unwrap();
        for i in 0..1000 {
            let expected = (i >= 500).then(|| count(u64::from(i)));
            assert_eq!(state.get(&key(i)).unwrap(), expected.as_ref());
        }
    }

    #[test]
    fn flushed_state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut state = TaskState::open(dir.path(), &options(10_000)).unwrap();
            *state.get_mut(&key(1)).unwrap() = Some(count(7));
            state
                .register_timer(TimeDomain::Event, 500, 3, 1, b"p")
                .unwrap();
            state.flush_cache().unwrap();
        }
        let mut state = TaskState::open(dir.path(), &options(10_000)).unwrap();
        assert_eq!(state.get(&key(1)).unwrap(), Some(&count(7)));
        assert_eq!(state.next_timer(TimeDomain::Event), Some(500));
        assert_eq!(state.next_timer(TimeDomain::Processing), None);
    }

    #[test]
    fn timers_fire_in_time_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
        for t in [30i64, -5, 10, 20, 10, i64::MAX, i64::MIN] {
            state
                .register_timer(TimeDomain::Event, t, 1, 2, &t.to_be_bytes())
                .unwrap();
        }
        state
            .register_timer(TimeDomain::Processing, 0, 1, 2, b"")
            .unwrap();
        let mut due = Vec::new();
        let more = state
            .take_due_timers(TimeDomain::Event, 10, usize::MAX, &mut due)
            .unwrap();
        assert!(!more);
        let times: Vec<i64> = due.iter().map(|t| t.time).collect();
        assert_eq!(times, vec![i64::MIN, -5, 10]);
        assert_eq!(due[1].payload, (-5i64).to_be_bytes());
        assert_eq!((due[1].step, due[1].kind), (1, 2));
        assert_eq!(state.next_timer(TimeDomain::Event), Some(20));
        due.clear();
        state
            .take_due_timers(TimeDomain::Event, 10, usize::MAX, &mut due)
            .unwrap();
        assert!(due.is_empty());
        state
            .take_due_timers(TimeDomain::Event, i64::MAX, usize::MAX, &mut due)
            .unwrap();
        let times: Vec<i64> = due.iter().map(|t| t.time).collect();
        assert_eq!(times, vec![20, 30, i64::MAX]);
        assert_eq!(state.next_timer(TimeDomain::Event), None);
        assert_eq!(state.next_timer(TimeDomain::Processing), Some(0));
    }

    #[test]
    fn due_timers_are_taken_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
        for t in 0..10_000i64 {
            state
                .register_timer(TimeDomain::Event, t % 1000, 1, 2, &t.to_be_bytes())
                .unwrap();
        }
        state
            .register_timer(TimeDomain::Event, 5000, 1, 2, b"later")
            .unwrap();
        let mut all = Vec::new();
        let mut chunk = Vec::new();
        let mut chunks = 0;
        loop {
            let more = state
                .take_due_timers(TimeDomain::Event, 999, 3000, &mut chunk)
                .unwrap();
            assert!(chunk.len() <= 3000, "a chunk holds {}", chunk.len());
            chunks += 1;
            all.append(&mut chunk);
            if !more {
                break;
            }
        }
        assert_eq!(chunks, 4);
        assert_eq!(all.len(), 10_000, "every due timer once");
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
        assert_eq!(state.next_timer(TimeDomain::Event), Some(5000));
        let mut rest = Vec::new();
        assert!(
            !state
                .take_due_timers(TimeDomain::Event, i64::MAX, 3000, &mut rest)
                .unwrap()
        );
        assert_eq!(rest.len(), 1);
    }

    /// A sparse sketch of `n` distinct values.
    fn distinct(n: u64) -> StateValue {
        let mut hll = crate::engine::hll::HyperLogLog::default();
        for i in 0..n {
            hll.insert(&i.to_le_bytes());
        }
        StateValue::Accumulators(Accumulators(vec![Accumulator::Distinct(hll)]))
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_as_values_grow() {
        // 64 KiB holds hundreds of small sketches but only a few dense ones
        // (16 KiB each): values that grow in place must be measured again.
        let budget = 64 << 10;
        let dir = tempfile::tempdir().unwrap();
        let options = StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(budget);
        let mut state = TaskState::open(dir.path(), &options).unwrap();
        for i in 0..200 {
            *state.get_mut(&key(i)).unwrap() = Some(distinct(1));
        }
        assert!(state.cached_entries() > 100);
        let dense = distinct(20_000);
        for i in 0..200 {
            *state.get_mut(&key(i)).unwrap() = Some(dense.clone());
            assert!(
                state.cached_bytes() <= budget + (20 << 10),
                "{} bytes cached",
                state.cached_bytes()
            );
        }
        assert!(state.cached_entries() <= 4, "{}", state.cached_entries());
        // Nothing was lost to eviction.
        // The last value grew after its load: the next load makes room.
        state.flush_cache().unwrap();
        assert!(state.cached_bytes() > budget);
        assert_eq!(state.get(&key(3)).unwrap(), Some(&dense));
        assert!(state.cached_bytes() <= budget);
    }

    #[test]
    fn the_budget_is_split_among_open_tasks() {
        let budget = 300 * small_entry();
        let options = StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(budget);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut first = TaskState::open(dirs[0].path(), &options).unwrap();
        let fill = |state: &mut TaskState| {
            for i in 0..1000 {
                *state.get_mut(&key(i)).unwrap() = Some(count(1));
            }
            state.cached_bytes()
        };
        assert!(fill(&mut first) > budget / 2);
        let mut others: Vec<TaskState> = dirs[1..]
            .iter()
            .map(|d| TaskState::open(d.path(), &options).unwrap())
            .collect();
        assert_eq!(options.cache.tasks(), 3);
        for state in &mut others {
            assert!(fill(state) <= budget / 3);
        }
        // The first task's share shrank: it evicts down to it as it loads.
        assert!(fill(&mut first) <= budget / 3);
        let total: usize =
            first.cached_bytes() + others.iter().map(TaskState::cached_bytes).sum::<usize>();
        assert!(total <= budget);
        drop(others);
        assert_eq!(options.cache.tasks(), 1);
        assert_eq!(options.cache.per_task(), budget);
    }

    #[test]
    fn corrupt_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
        state.db().put(key(1), [9u8, 9]).unwrap();
        assert!(matches!(
            state.get(&key(1)),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn state_values_round_trip() {
        let sessions = StateValue::Sessions(vec![Session {
            window: Window { start: -3, end: 9 },
            fired: true,
            accumulators: Accumulators(vec![Accumulator::new(AggregateFunction::Last)]),
        }]);
        for v in [count(3), sessions, StateValue::Expiry(-17)] {
            let mut bytes = Vec::new();
            v.encode(&mut bytes);
            assert_eq!(StateValue::decode(&bytes).unwrap(), v);
        }
    }

    proptest! {
        #[test]
        fn payload_order_is_key_then_window(
            a in proptest::collection::vec(any::<u8>(), 0..8),
            b in proptest::collection::vec(any::<u8>(), 0..8),
            s in any::<i64>(),
            t in any::<i64>(),
        ) {
            let mut pa = Vec::new();
            keyed_payload(&mut pa, &a, Some(s));
            let mut pb = Vec::new();
            keyed_payload(&mut pb, &a, Some(t));
            prop_assert_eq!(pa.cmp(&pb), s.cmp(&t));
            prop_assert_eq!(parse_keyed_payload(&pa), Some((&a[..], Some(s))));
            let mut pc = Vec::new();
            keyed_payload(&mut pc, &b, None);
            prop_assert_eq!(parse_keyed_payload(&pc), Some((&b[..], None)));
        }

        #[test]
        fn state_value_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = StateValue::decode(&bytes);
        }
    }
}
