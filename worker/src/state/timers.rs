//! Event- and processing-time timers of a task, kept ordered by time in
//! RocksDB so that firing them is a scan.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::keys::{order_preserving, parse_timer_key, timer_key};
use super::{StateError, TaskState, TimeDomain, Timer, db_error};

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

    pub(super) fn first_timer(&self, domain: TimeDomain) -> Result<Option<i64>, StateError> {
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
