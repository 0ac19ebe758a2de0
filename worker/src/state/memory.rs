//! The memory budget of a worker: how many bytes the write-back caches of
//! its tasks and the queues of its output producers may hold, derived from
//! the memory of the container it runs in.
//!
//! # Why these shares
//!
//! A worker pod's memory goes to:
//! - what the spec sizes explicitly: the RocksDB block cache shared by the
//!   tasks (`spec.state.blockCacheSize`, default 128Mi) and the memtables
//!   (up to 3 × `spec.state.writeBufferSize` per task, default 16Mi);
//! - the write-back caches of the tasks in front of RocksDB;
//! - the output producers' queues (librdkafka keeps every record until the
//!   broker acknowledged it);
//! - the consumer's prefetch, RocksDB's index and filter blocks, the
//!   engine's working set and allocator slack.
//!
//! No spec field sizes the write-back cache or the producer queues, and
//! both must scale with the pod rather than with the key count or the
//! partition count, so each gets a fixed share of the container's memory
//! limit: [`STATE_CACHE_DIVISOR`] and [`PRODUCER_QUEUE_DIVISOR`] (an eighth
//! each), which leaves three quarters for the explicitly sized parts and
//! headroom. A container without a limit (a laptop, a test) is assumed to
//! have [`ASSUMED_CONTAINER_MEMORY`]. Each share is clamped to
//! [`MIN_SHARE`]..=[`MAX_SHARE`]: below the minimum the cache stops being
//! useful and the producers stop batching; above the maximum more memory
//! buys little and belongs to the block cache, which the user sizes.

use std::path::Path;
use std::sync::OnceLock;

/// The memory assumed when the container has no limit (or none can be
/// read): 2 GiB, a typical worker pod.
pub const ASSUMED_CONTAINER_MEMORY: u64 = 2 << 30;
/// The write-back caches of all tasks of a worker get the container memory
/// divided by this.
pub const STATE_CACHE_DIVISOR: u64 = 8;
/// The queues of all output producers of a worker get the container memory
/// divided by this.
pub const PRODUCER_QUEUE_DIVISOR: u64 = 8;
/// The smallest share: 16 MiB.
pub const MIN_SHARE: u64 = 16 << 20;
/// The largest share: 1 GiB.
pub const MAX_SHARE: u64 = 1 << 30;

/// Limits at or above this mean "unlimited" (cgroup v1 reports a huge
/// number rather than `max`).
const UNLIMITED: u64 = 1 << 60;

/// The memory a worker divides among its caches and queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The container's memory, in bytes.
    pub container_bytes: u64,
}

impl MemoryBudget {
    /// The budget of a container of `container_bytes`.
    pub fn of(container_bytes: u64) -> MemoryBudget {
        MemoryBudget { container_bytes }
    }

    /// The budget of the container this process runs in: its cgroup memory
    /// limit, else [`ASSUMED_CONTAINER_MEMORY`]. Read once per process.
    pub fn detect() -> MemoryBudget {
        static DETECTED: OnceLock<MemoryBudget> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            MemoryBudget::of(
                cgroup_memory_limit(Path::new("/sys/fs/cgroup"))
                    .unwrap_or(ASSUMED_CONTAINER_MEMORY),
            )
        })
    }

    /// Bytes the write-back caches of all the worker's tasks may hold
    /// together (see [`crate::state::CacheBudget`]).
    pub fn state_cache_bytes(&self) -> usize {
        share(self.container_bytes, STATE_CACHE_DIVISOR)
    }

    /// Bytes the queues of all the worker's output producers may hold
    /// together (see [`crate::kafka::producer::QueueBudget`]).
    pub fn producer_queue_bytes(&self) -> usize {
        share(self.container_bytes, PRODUCER_QUEUE_DIVISOR)
    }
}

fn share(total: u64, divisor: u64) -> usize {
    usize::try_from((total / divisor).clamp(MIN_SHARE, MAX_SHARE)).unwrap_or(usize::MAX)
}

/// The memory limit of the cgroup mounted at `root`: cgroup v2's
/// `memory.max`, else cgroup v1's `memory/memory.limit_in_bytes`; `None`
/// when unlimited or unreadable.
pub fn cgroup_memory_limit(root: &Path) -> Option<u64> {
    ["memory.max", "memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|file| std::fs::read_to_string(root.join(file)).ok())
        .and_then(|text| parse_limit(&text))
}

/// A cgroup memory limit file's value: `None` for `max` or a number that
/// means unlimited.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit > 0 && limit < UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_from_cgroup_v2_then_v1() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None, "v1 unlimited");
        std::fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "536870912\n",
        )
        .unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), Some(512 << 20));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), None, "v2 unlimited");
        std::fs::write(dir.path().join("memory.max"), "1073741824\n").unwrap();
        assert_eq!(cgroup_memory_limit(dir.path()), Some(1 << 30));
    }

    #[test]
    fn shares_scale_with_the_container_within_bounds() {
        let gib = MemoryBudget::of(1 << 30);
        assert_eq!(gib.state_cache_bytes(), 128 << 20);
        assert_eq!(gib.producer_queue_bytes(), 128 << 20);
        assert_eq!(MemoryBudget::of(64 << 20).state_cache_bytes(), 16 << 20);
        assert_eq!(MemoryBudget::of(64 << 30).producer_queue_bytes(), 1 << 30);
    }
}
