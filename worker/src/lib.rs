//! The Weir worker: runs a StreamingJob's pipeline over the Kafka partitions
//! it owns, keeps keyed state in RocksDB and checkpoints it to object storage.
