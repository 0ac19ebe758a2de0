//! The operator's integration tests, in one test binary: each module is one
//! concern, and linking the worker, RocksDB and librdkafka once instead of
//! once per file keeps the suite's build fast and small on disk.

mod autoscaling;
mod cli;
mod lifecycle;
mod local_run;
mod monitoring;
mod reconciler;
mod snapshots;
mod support;
mod tls;
