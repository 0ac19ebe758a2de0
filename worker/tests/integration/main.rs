//! The worker's integration tests, in one test binary: each module is one
//! concern, and linking RocksDB and librdkafka once instead of once per file
//! keeps the suite's build fast and small on disk.

mod common;
mod fakes;
mod kill_trials;
mod protocol;
mod real_broker;
mod worker_runtime;
