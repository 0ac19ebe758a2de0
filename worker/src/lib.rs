//! The Weir worker: runs a StreamingJob's pipeline over the Kafka partitions
//! it owns, keeps keyed state in RocksDB and checkpoints it to object storage.
//!
//! The worker is a library first: [`runtime`] runs one worker instance with
//! its own state directory, HTTP port and cancellation token, so that local
//! mode and tests can run several in one process. The `weir-worker` binary is
//! a thin shell around it.
//!
//! The folders follow the architecture:
//! - [`engine`]: the pipeline and its operators (records, windows,
//!   aggregates, event time and watermarks, the per-task processor);
//! - [`state`]: keyed state and timers in RocksDB behind a write-back cache;
//! - [`checkpoint`]: the checkpoint protocol and everything it writes to
//!   object storage (coordinator, upload, manifests, layout, restore,
//!   retention, savepoints, fence);
//! - [`kafka`]: client configuration, output producers, the repartition
//!   topic, the partitioner and credentials;
//! - [`control`]: the HTTP control API, status reports and metrics;
//! - [`runtime`]: one worker instance: start-up, the event loop, commands.

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod engine;
pub mod kafka;
pub mod runtime;
pub mod state;

/// The Rust allocator of every program built on the worker, with the
/// `mimalloc` feature (on by default; a program that brings its own
/// allocator turns it off): mimalloc, whose thread-local free lists serve
/// the engine's many short-lived record buffers faster than the system
/// allocator. The feature also makes mimalloc the C library's malloc, so
/// RocksDB and librdkafka allocate from it too: a record librdkafka
/// fetched on its broker thread and the loop frees goes back through
/// mimalloc's thread-free list instead of glibc's arena locks.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
