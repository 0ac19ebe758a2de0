//! Everything that talks to Kafka: client configuration, the output
//! producers and the protocol's output side, the repartition topic, the
//! partitioner, credentials, the lag monitor and the source queue the
//! records are read from in batches.

pub mod client;
pub mod credentials;
pub mod delivery_poller;
pub mod lag;
pub mod native_send;
pub mod output;
pub mod partitioner;
pub mod producer;
pub mod repartition;
pub mod source_queue;
