//! Which windows RocksDB may hold state of that the write-back cache does
//! not: a window's key that the cache misses is read from RocksDB only for
//! those. Nearly every event of a workload with few events per key and
//! window creates the state of a new window, and a read of a key never
//! written still costs bloom filter probes in every memtable and level; for
//! a window RocksDB cannot hold, the miss is answered at once.
//!
//! RocksDB holds a window value the cache does not only after
//! - an eviction of the value from the cache (a value still cached, flushed
//!   at a checkpoint or not, is found in the cache), or
//! - an open of an instance that holds values already (a restored
//!   checkpoint): each flush, and each eviction of a window later than any
//!   written before, stores the latest window start written (under
//!   [`LATEST_STORED_WINDOW`]; an empty value when none was), so no later
//!   window has a value in the instance. One without that key (written
//!   before it existed) is scanned once at open.
//!
//! Windows starting at or before a floor (the restored ones), and those
//! with an evicted value, are read; when too many windows had evictions,
//! the latest of them raises the floor.

use std::collections::HashSet;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::keys::{
    LATEST_STORED_WINDOW, STATE, from_order_preserving, order_preserving, window_of_state_key,
};
use super::{StateError, db_error};

/// The most windows with an evicted value remembered one by one.
const MAX_EVICTED_WINDOWS: usize = 4096;

/// The windows of a task whose state RocksDB may hold beyond the cache.
#[derive(Debug, Default)]
pub(super) struct StoredWindows {
    /// Windows starting at or before this may have values in RocksDB that
    /// the cache does not hold: those of the instance as opened, and those
    /// with evictions no longer remembered one by one.
    floor: Option<i64>,
    /// Windows (step, start) of which a value was evicted.
    evicted: HashSet<(u8, i64), foldhash::fast::RandomState>,
    /// The latest window start RocksDB holds or held a value of.
    latest_written: Option<i64>,
}

impl StoredWindows {
    /// The windows `db`, just opened, may hold values of: those starting
    /// at or before the latest one it stored.
    pub(super) fn open(db: &DB) -> Result<StoredWindows, StateError> {
        let floor = match db
            .get(LATEST_STORED_WINDOW)
            .map_err(db_error("read of the latest stored window"))?
        {
            // Written when the instance held no window.
            Some(bytes) if bytes.is_empty() => None,
            Some(bytes) => {
                let bytes =
                    <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| StateError::Corrupt {
                        key: "latest stored window".to_owned(),
                        reason: format!("{} bytes, not 8", bytes.len()),
                    })?;
                Some(from_order_preserving(bytes))
            }
            None => latest_window_in(db)?,
        };
        Ok(StoredWindows {
            floor,
            evicted: HashSet::default(),
            latest_written: floor,
        })
    }

    /// Whether RocksDB may hold a value of `key` that the cache does not
    /// hold: always for a key that is not a window's.
    #[inline]
    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        let Some(window) = window_of_state_key(key) else {
            return true;
        };
        self.floor.is_some_and(|floor| window.1 <= floor) || self.evicted.contains(&window)
    }

    /// Notes that a value of `key` is written to RocksDB in a batch that
    /// [`StoredWindows::store`] adds to.
    pub(super) fn written(&mut self, key: &[u8]) {
        if let Some((_, start)) = window_of_state_key(key) {
            self.latest_written = self.latest_written.max(Some(start));
        }
    }

    /// Notes that a value of `key` was written to `db` alone (an eviction),
    /// and stores a later latest window start with it, so that the
    /// instance never holds a window later than the one it names.
    pub(super) fn written_through(
        &mut self,
        key: &[u8],
        db: &DB,
        write_options: &WriteOptions,
    ) -> Result<(), StateError> {
        let before = self.latest_written;
        self.written(key);
        match self.latest_written {
            Some(latest) if self.latest_written != before => db
                .put_opt(
                    LATEST_STORED_WINDOW,
                    order_preserving(latest),
                    write_options,
                )
                .map_err(db_error("write of the latest stored window")),
            _ => Ok(()),
        }
    }

    /// Notes that a value of `key` left the cache for RocksDB.
    pub(super) fn evicted(&mut self, key: &[u8]) {
        let Some(window) = window_of_state_key(key) else {
            return;
        };
        if self.floor.is_some_and(|floor| window.1 <= floor) {
            return;
        }
        if self.evicted.len() == MAX_EVICTED_WINDOWS && !self.evicted.contains(&window) {
            let latest = self.evicted.drain().map(|(_, start)| start).max();
            self.floor = self.floor.max(latest).max(Some(window.1));
            return;
        }
        self.evicted.insert(window);
    }

    /// Adds the latest window start written to `batch`, for an open of
    /// the instance to find; an empty value when it holds no window (a
    /// job of sessions, joins or patterns), so that no open scans for one.
    pub(super) fn store(&self, batch: &mut WriteBatch) {
        match self.latest_written {
            Some(latest) => batch.put(LATEST_STORED_WINDOW, order_preserving(latest)),
            None => batch.put(LATEST_STORED_WINDOW, []),
        }
    }
}

/// The latest window start of the values in `db`, by a scan of them all.
fn latest_window_in(db: &DB) -> Result<Option<i64>, StateError> {
    let mut latest = None;
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound([STATE + 1]);
    for item in db.iterator_opt(IteratorMode::From(&[STATE], Direction::Forward), read) {
        let (key, _) = item.map_err(db_error("scan of the stored windows"))?;
        latest = latest.max(window_of_state_key(&key).map(|(_, start)| start));
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::keys::{keyed_payload, state_key};

    fn window_key(step: u8, key: &[u8], start: i64) -> Vec<u8> {
        let mut payload = Vec::new();
        keyed_payload(&mut payload, key, Some(start));
        let mut out = Vec::new();
        state_key(&mut out, step, &payload);
        out
    }

    #[test]
    fn only_windows_with_an_evicted_value_are_read_after_a_fresh_open() {
        let mut stored = StoredWindows::default();
        let session = {
            let mut payload = Vec::new();
            keyed_payload(&mut payload, b"u1", None);
            let mut out = Vec::new();
            state_key(&mut out, 1, &payload);
            out
        };
        assert!(stored.may_hold(&session), "not a window's key: read");
        assert!(!stored.may_hold(&window_key(1, b"u1", 60_000)));
        stored.evicted(&window_key(1, b"u2", 60_000));
        assert!(stored.may_hold(&window_key(1, b"u1", 60_000)));
        assert!(
            !stored.may_hold(&window_key(2, b"u1", 60_000)),
            "another step"
        );
        assert!(!stored.may_hold(&window_key(1, b"u1", 120_000)));
    }

    #[test]
    fn too_many_evicted_windows_become_a_floor() {
        let mut stored = StoredWindows::default();
        for start in 0..=MAX_EVICTED_WINDOWS as i64 {
            stored.evicted(&window_key(1, b"u", start * 10));
        }
        let last = MAX_EVICTED_WINDOWS as i64 * 10;
        for start in (0..=last).step_by(5) {
            assert!(stored.may_hold(&window_key(3, b"v", start)), "{start}");
        }
        assert!(!stored.may_hold(&window_key(1, b"u", last + 1)));
        stored.evicted(&window_key(1, b"u", last + 10));
        assert!(stored.may_hold(&window_key(1, b"w", last + 10)));
    }
}
