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
//!   so RocksDB keeps timers ordered by time and refilling memory with the
//!   earliest is a scan from the start of the range.
//! - `0x05`: the latest window start RocksDB holds a value of, so that a
//!   read of a later window's key, which it cannot hold, is skipped (see
//!   the `stored_windows` module).
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
//! Timers are held in memory up to [`StateOptions::memory_timers`] per task,
//! the later ones in RocksDB, and are taken in bounded chunks
//! ([`TaskState::take_due_timers`]; see the `timers` module).

mod cache;
mod keys;
pub mod memory;
mod stored_windows;
mod timer_buckets;
mod timers;
mod value;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, DB, DBCompressionType, Options, WriteBatch,
    WriteOptions,
};
use thiserror::Error;

pub use cache::CacheBudget;
use cache::WriteBack;
#[cfg(test)]
use cache::entry_bytes;
use keys::STATE;
pub use keys::{TimeDomain, Timer, keyed_payload, parse_keyed_payload, state_key};
use stored_windows::StoredWindows;
pub use value::{JoinRow, PendingEvent, Session, StateValue};

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
    /// Most timers a task holds in memory (the later ones wait in
    /// RocksDB): [`DEFAULT_MEMORY_TIMERS`] unless set.
    pub memory_timers: usize,
}

/// Timers a task holds in memory by default: about 12 MiB of keys of
/// windows and patterns (some 100 bytes each, up to about 200 where each
/// timer has a time of its own, as session gaps and TTLs do), enough for
/// the open windows of 60k keys without reaching RocksDB.
pub const DEFAULT_MEMORY_TIMERS: usize = 1 << 17;

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
            memory_timers: DEFAULT_MEMORY_TIMERS,
        }
    }

    /// These options with at most `timers` timers in memory per task.
    pub fn with_memory_timers(mut self, timers: usize) -> StateOptions {
        self.memory_timers = timers;
        self
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

/// The keyed state of one task.
pub struct TaskState {
    db: DB,
    path: PathBuf,
    write_options: WriteOptions,
    cache: WriteBack,
    timers: timers::TimerQueue,
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
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Partitioned filters and a two-level index: an SST's filter and
        // index come in blocks of `metadata_block_size` that fit the block
        // cache's shards. A whole-file filter of a large SST (megabytes at
        // a million keys) does not fit a shard of a small cache, so it was
        // read from the file and checksummed again on every lookup that
        // missed the write-back cache: half the CPU at 400k keys.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4 << 10);
        table.set_pin_top_level_index_and_filter(true);
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
        // A bloom filter over the memtable's whole keys: a read of a key
        // that was never written (the state of a new window, most reads of
        // a workload with few events per key and window) skips the
        // memtables' skip lists, as the table filters above skip files.
        db_options.set_memtable_prefix_bloom_ratio(0.05);
        db_options.set_memtable_whole_key_filtering(true);

        let db = DB::open(&db_options, dir).map_err(|source| StateError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let timers = timers::TimerQueue::load(&db, options.memory_timers)?;
        let stored = StoredWindows::open(&db)?;
        Ok(TaskState {
            db,
            path: dir.to_owned(),
            write_options,
            cache: WriteBack::new(Arc::clone(&options.cache), stored),
            timers,
        })
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

    /// Writes every dirty cached value and the timers' changes to RocksDB
    /// and flushes the memtables, so that a checkpoint taken right after
    /// holds the whole state. Cached values stay cached.
    pub fn flush_cache(&mut self) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        self.cache.write_dirty(&mut batch);
        self.timers.write_changes(&mut batch);
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
    /// once, its value's heap ([`StateValue::heap_bytes`]) and a fixed
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
}

#[cfg(test)]
mod tests;
