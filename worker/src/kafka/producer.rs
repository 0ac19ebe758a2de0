//! The output side of a task: a Kafka producer that is transactional
//! (exactly-once, one per task, `transactional.id` `weir-<ns>-<job>-<task>`)
//! or merely idempotent (at-least-once), with delivery failures recorded so
//! that a checkpoint never commits offsets past lost output.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// How long producer flushes and transaction operations may take.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why output could not be written or committed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer could not be created.
    #[error("cannot create the producer {name}: {source}")]
    Create {
        /// The producer's name (its transactional id or `shared`).
        name: String,
        /// The underlying error.
        source: KafkaError,
    },
    /// A record could not be queued.
    #[error("cannot send to {topic}: {source}")]
    Send {
        /// The destination topic.
        topic: String,
        /// The underlying error.
        source: KafkaError,
    },
    /// Records were not delivered.
    #[error("{count} records were not delivered by producer {name}; first error: {first}")]
    Delivery {
        /// The producer's name.
        name: String,
        /// How many failed.
        count: u64,
        /// The first failure.
        first: String,
    },
    /// A flush or transaction operation failed.
    #[error("{operation} failed for producer {name}: {source}")]
    Operation {
        /// What was attempted.
        operation: &'static str,
        /// The producer's name.
        name: String,
        /// The underlying error.
        source: KafkaError,
    },
}

/// Records delivery failures reported by librdkafka.
#[derive(Default)]
pub struct DeliveryContext {
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let mut first = self
                .first_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// One producer of output records.
pub struct OutputProducer {
    name: String,
    transactional: bool,
    producer: ThreadedProducer<DeliveryContext>,
}

impl OutputProducer {
    /// Creates a producer; with `transactional_id`, it also initialises
    /// transactions (fencing any previous owner of the id) and begins the
    /// first one.
    pub fn new(
        config: &ClientConfig,
        transactional_id: Option<&str>,
    ) -> Result<Self, ProduceError> {
        let name = transactional_id.unwrap_or("shared").to_owned();
        let config = crate::kafka::client::producer_config(config, transactional_id);
        let producer =
            ThreadedProducer::from_config_and_context(&config, DeliveryContext::default())
                .map_err(|source| ProduceError::Create {
                    name: name.clone(),
                    source,
                })?;
        let this = Self {
            name,
            transactional: transactional_id.is_some(),
            producer,
        };
        if this.transactional {
            this.producer
                .init_transactions(TRANSACTION_TIMEOUT)
                .map_err(|e| this.op_error("init_transactions", e))?;
            this.producer
                .begin_transaction()
                .map_err(|e| this.op_error("begin_transaction", e))?;
        }
        Ok(this)
    }

    /// Whether output is written in transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Queues a record, waiting while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.enqueue(record)
    }

    /// Queues a record for a given partition with a given timestamp (epoch
    /// milliseconds), waiting while librdkafka's queue is full.
    pub fn send_to_partition(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: Option<i64>,
        headers: OwnedHeaders,
    ) -> Result<(), ProduceError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(partition)
            .payload(value)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(t) = timestamp_ms {
            record = record.timestamp(t);
        }
        self.enqueue(record)
    }

    fn enqueue(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), ProduceError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((source, back)) => {
                    return Err(ProduceError::Send {
                        topic: back.topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Waits until every queued record is delivered and fails if any was
    /// not.
    pub fn flush(&self) -> Result<(), ProduceError> {
        self.producer
            .flush(TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("flush", e))?;
        self.check_delivery()
    }

    /// Fails if any record was not delivered since the producer started.
    pub fn check_delivery(&self) -> Result<(), ProduceError> {
        let ctx = self.producer.context();
        let count = ctx.failures.load(Ordering::Relaxed);
        if count == 0 {
            return Ok(());
        }
        let first = ctx
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        Err(ProduceError::Delivery {
            name: self.name.clone(),
            count,
            first,
        })
    }

    /// Commits the current transaction together with the source offsets
    /// (the next offset of each partition) and begins the next one.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), ProduceError> {
        self.producer
            .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("send_offsets_to_transaction", e))?;
        self.producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("commit_transaction", e))?;
        self.check_delivery()?;
        self.producer
            .begin_transaction()
            .map_err(|e| self.op_error("begin_transaction", e))
    }

    /// Aborts the current transaction, discarding its output.
    pub fn abort_transaction(&self) -> Result<(), ProduceError> {
        self.producer
            .abort_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("abort_transaction", e))
    }

    fn op_error(&self, operation: &'static str, source: KafkaError) -> ProduceError {
        ProduceError::Operation {
            operation,
            name: self.name.clone(),
            source,
        }
    }
}
