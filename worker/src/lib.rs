//! The Weir worker: runs a StreamingJob's pipeline over the Kafka partitions
//! it owns, keeps keyed state in RocksDB and checkpoints it to object storage.
//!
//! The worker is a library first: [`runtime`] runs one worker instance with
//! its own state directory, HTTP port and cancellation token, so that local
//! mode and tests can run several in one process. The `weir-worker` binary is
//! a thin shell around it.

pub mod aggregate;
pub mod checkpoint;
pub mod config;
pub mod credentials;
pub mod event_time;
pub mod fence;
pub mod hll;
pub mod http;
pub mod kafka;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod partitioner;
pub mod pipeline;
pub mod producer;
pub mod progress;
pub mod record;
pub mod repartition;
pub mod restore;
pub mod retention;
pub mod runtime;
pub mod savepoint;
pub mod state;
pub mod status;
pub mod storage;
#[cfg(test)]
mod storage_tests;
pub mod task;
pub mod transfer;
pub mod watermark;
pub mod window;
