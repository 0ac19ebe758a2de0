//! The output side of a task: a Kafka producer that is transactional
//! (exactly-once, one per task, `transactional.id` `weir-<ns>-<job>-<task>`)
//! or merely idempotent (at-least-once), with delivery failures recorded so
//! that a checkpoint never commits offsets past lost output.
//!
//! # Memory
//!
//! librdkafka keeps every record until the broker acknowledged it, by
//! default up to 1 GiB per producer, and exactly-once runs a producer per
//! task. The producers of a process share one [`QueueBudget`] (an eighth of
//! the container's memory, see [`crate::state::memory`]): each waits before
//! queueing a record while its unacknowledged records would take more than
//! its equal share, whatever the number of producers. librdkafka's own
//! limits are set to the whole budget as a backstop (see
//! [`crate::kafka::client::producer_config`]). A job that sets
//! `queue.buffering.max.kbytes` itself gets librdkafka's limits only.
//!
//! # Stop and kill
//!
//! A wait for queue space (the broker is slow or gone) gives up with
//! [`ProduceError::Interrupted`] once the condition given to
//! [`OutputProducer::interrupt_when`] holds, so a worker told to stop or
//! killed never stays blocked on a full queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::kafka::delivery_poller::DeliveryPoller;
use crate::kafka::native_send::{NativeProducer, OutgoingRecord};

/// How long producer flushes and transaction operations may take.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a send over its producer's share waits for room before it
/// looks again (and asks whether to give up).
const ROOM_WAIT: Duration = Duration::from_millis(1);

/// What a queued record costs besides its key, value and headers:
/// librdkafka's message structure and allocator headers.
pub const QUEUED_RECORD_OVERHEAD: usize = 256;

/// The bytes the queues of the output producers of a process may hold
/// together (records queued and not yet acknowledged), split equally among
/// the producers alive: each counts itself in while it lives.
#[derive(Debug)]
pub struct QueueBudget {
    bytes: usize,
    producers: AtomicUsize,
}

impl QueueBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Arc<QueueBudget> {
        Arc::new(QueueBudget {
            bytes,
            producers: AtomicUsize::new(0),
        })
    }

    /// The budget of this process: the producers' share of the container's
    /// memory ([`crate::state::memory::MemoryBudget::producer_queue_bytes`]).
    /// One worker runs per pod, so this is the worker's budget.
    pub fn process() -> Arc<QueueBudget> {
        static PROCESS: OnceLock<Arc<QueueBudget>> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                QueueBudget::new(
                    crate::state::memory::MemoryBudget::detect().producer_queue_bytes(),
                )
            })
            .clone()
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many producers share it.
    pub fn producers(&self) -> usize {
        self.producers.load(Ordering::Relaxed)
    }

    /// The share of one producer.
    pub fn per_producer(&self) -> usize {
        self.bytes / self.producers().max(1)
    }
}

/// Tells a producer waiting for queue space to give up (see
/// [`OutputProducer::interrupt_when`]).
pub type Interrupt = Arc<dyn Fn() -> bool + Send + Sync>;

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
    /// The thread serving the producer's delivery reports could not be
    /// started.
    #[error("cannot start the delivery thread of producer {name}: {message}")]
    Poller {
        /// The producer's name.
        name: String,
        /// Why.
        message: String,
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
    /// The producer's queue was full and the worker was told to stop or
    /// killed while waiting for room: nothing more is sent.
    #[error(
        "producer {name} gave up sending to {topic}: its queue is full and the worker is stopping"
    )]
    Interrupted {
        /// The producer's name.
        name: String,
        /// The destination topic.
        topic: String,
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

/// Records delivery failures reported by librdkafka, and the bytes of the
/// records queued and not yet reported.
#[derive(Default)]
pub struct DeliveryContext {
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Cost of the records queued and not yet reported (each record
    /// carries its cost as its delivery opaque).
    queued_bytes: AtomicUsize,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, cost: usize) {
        self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
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
    /// Serves the delivery reports (it holds the producer too, so the
    /// client outlives its thread and queue handle).
    _deliveries: DeliveryPoller,
    /// The producer, sending by topic handles.
    producer: NativeProducer<DeliveryContext>,
    /// The budget whose share the queue keeps to; `None` when the job sets
    /// `queue.buffering.max.kbytes` itself.
    budget: Option<Arc<QueueBudget>>,
    /// When a wait for queue space gives up.
    interrupt: Mutex<Option<Interrupt>>,
}

impl Drop for OutputProducer {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.producers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl OutputProducer {
    /// Creates a producer within the process's [`QueueBudget`]; with
    /// `transactional_id`, it also initialises transactions (fencing any
    /// previous owner of the id) and begins the first one.
    pub fn new(
        config: &ClientConfig,
        transactional_id: Option<&str>,
    ) -> Result<Self, ProduceError> {
        Self::with_budget(config, transactional_id, QueueBudget::process())
    }

    /// Creates a producer whose queue takes its share of `budget` (unless
    /// `config` sets `queue.buffering.max.kbytes`); see
    /// [`OutputProducer::new`].
    pub fn with_budget(
        config: &ClientConfig,
        transactional_id: Option<&str>,
        budget: Arc<QueueBudget>,
    ) -> Result<Self, ProduceError> {
        let name = transactional_id.unwrap_or("shared").to_owned();
        let user_sized = config.get("queue.buffering.max.kbytes").is_some();
        let config =
            crate::kafka::client::producer_config(config, transactional_id, budget.bytes());
        let producer = BaseProducer::from_config_and_context(&config, DeliveryContext::default())
            .map_err(|source| ProduceError::Create {
            name: name.clone(),
            source,
        })?;
        let producer = Arc::new(producer);
        let deliveries =
            DeliveryPoller::start(producer.clone(), "weir-deliveries").map_err(|e| {
                ProduceError::Poller {
                    name: name.clone(),
                    message: e.to_string(),
                }
            })?;
        let budget = (!user_sized).then_some(budget);
        if let Some(budget) = &budget {
            budget.producers.fetch_add(1, Ordering::Relaxed);
        }
        let this = Self {
            name,
            transactional: transactional_id.is_some(),
            _deliveries: deliveries,
            producer: NativeProducer::new(producer),
            budget,
            interrupt: Mutex::new(None),
        };
        if this.transactional {
            this.producer
                .base()
                .init_transactions(TRANSACTION_TIMEOUT)
                .map_err(|e| this.op_error("init_transactions", e))?;
            this.producer
                .base()
                .begin_transaction()
                .map_err(|e| this.op_error("begin_transaction", e))?;
        }
        Ok(this)
    }

    /// Whether output is written in transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Makes a wait for queue space give up with
    /// [`ProduceError::Interrupted`] once `interrupted` returns `true` (the
    /// worker was killed or told to stop). It is asked about once a
    /// millisecond while the queue is full.
    pub fn interrupt_when(&self, interrupted: impl Fn() -> bool + Send + Sync + 'static) {
        *self
            .interrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(interrupted));
    }

    /// The cost of the records queued and not yet acknowledged, as counted
    /// against the [`QueueBudget`].
    pub fn queued_bytes(&self) -> usize {
        self.context().queued_bytes.load(Ordering::Relaxed)
    }

    /// Queues a record, waiting while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        self.enqueue(topic, None, key, value, headers)
    }

    /// Queues a record for a given partition, waiting while librdkafka's
    /// queue is full.
    pub fn send_to_partition(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), ProduceError> {
        self.enqueue(topic, Some(partition), key, value, Some(headers))
    }

    /// Queues a record by the producer's handle of its topic (see
    /// [`NativeProducer`]), its queue cost as its delivery opaque, waiting
    /// while the queue is full or over this producer's share of the
    /// budget; gives up when interrupted.
    fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        let cost = record_cost(key, payload, headers.as_ref());
        let mut record = OutgoingRecord {
            topic,
            partition,
            key,
            payload,
            headers,
            delivery_opaque: cost,
        };
        let queued = &self.context().queued_bytes;
        loop {
            if self.over_share(cost) {
                self.wait_for_room(topic)?;
                continue;
            }
            // Counted before it is queued: its delivery may come first.
            queued.fetch_add(cost, Ordering::Relaxed);
            match self.producer.send(&mut record) {
                Ok(()) => return Ok(()),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    queued.fetch_sub(cost, Ordering::Relaxed);
                    self.wait_for_room(topic)?;
                }
                Err(source) => {
                    queued.fetch_sub(cost, Ordering::Relaxed);
                    return Err(ProduceError::Send {
                        topic: topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// The delivery failures and queued bytes the delivery reports keep.
    fn context(&self) -> &DeliveryContext {
        self.producer.base().context()
    }

    /// Whether queueing a record of `cost` would take the queue over this
    /// producer's share (a record alone always goes).
    fn over_share(&self, cost: usize) -> bool {
        let Some(budget) = &self.budget else {
            return false;
        };
        let queued = self.queued_bytes();
        queued > 0 && queued.saturating_add(cost) > budget.per_producer()
    }

    /// Waits up to a millisecond for the queue to drain, with its lingering
    /// batches sent at once (a producer over its share must not wait out
    /// `linger.ms` for room), or gives up.
    fn wait_for_room(&self, topic: &str) -> Result<(), ProduceError> {
        let interrupt = self
            .interrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if interrupt.is_some_and(|interrupted| interrupted()) {
            return Err(ProduceError::Interrupted {
                name: self.name.clone(),
                topic: topic.to_owned(),
            });
        }
        // Returns once all is delivered or the millisecond passed; either
        // way the caller looks at the queue again.
        let _ = self.producer.flush(ROOM_WAIT);
        Ok(())
    }

    /// Waits until every queued record is delivered, sending lingering
    /// batches at once, and fails if any was not delivered.
    pub fn flush(&self) -> Result<(), ProduceError> {
        self.producer
            .flush(TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("flush", e))?;
        self.check_delivery()
    }

    /// Fails if any record was not delivered since the producer started.
    pub fn check_delivery(&self) -> Result<(), ProduceError> {
        let ctx = self.context();
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
            .base()
            .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("send_offsets_to_transaction", e))?;
        self.producer
            .base()
            .commit_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.op_error("commit_transaction", e))?;
        self.check_delivery()?;
        self.producer
            .base()
            .begin_transaction()
            .map_err(|e| self.op_error("begin_transaction", e))
    }

    /// Aborts the current transaction, discarding its output.
    pub fn abort_transaction(&self) -> Result<(), ProduceError> {
        self.producer
            .base()
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

/// What a record costs in the queue: key, value, headers and
/// [`QUEUED_RECORD_OVERHEAD`].
fn record_cost(key: Option<&[u8]>, payload: &[u8], headers: Option<&OwnedHeaders>) -> usize {
    let headers = headers.map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    key.map_or(0, <[u8]>::len) + payload.len() + headers + QUEUED_RECORD_OVERHEAD
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;

    /// A producer of a cluster that does not answer: what it queues stays.
    fn unreachable(extra: &[(&str, &str)], budget: Arc<QueueBudget>) -> Arc<OutputProducer> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        Arc::new(OutputProducer::with_budget(&config, None, budget).unwrap())
    }

    /// What a send on another thread returned.
    type Sent = mpsc::Receiver<Result<(), ProduceError>>;

    /// Sends `value` on another thread; the channel of its result, and the
    /// result if it came within `wait`.
    fn send_within(
        producer: &Arc<OutputProducer>,
        value: Vec<u8>,
        wait: Duration,
    ) -> (Sent, Option<Result<(), ProduceError>>) {
        let (tx, rx) = mpsc::channel();
        let producer = Arc::clone(producer);
        std::thread::spawn(move || {
            let _ = tx.send(producer.send("out", None, &value, None));
        });
        let result = rx.recv_timeout(wait).ok();
        (rx, result)
    }

    #[test]
    fn a_full_queue_gives_up_when_interrupted() {
        let producer = unreachable(
            &[("queue.buffering.max.messages", "1")],
            QueueBudget::new(64 << 20),
        );
        producer.send("out", None, b"first", None).unwrap();
        let killed = Arc::new(AtomicBool::new(false));
        producer.interrupt_when({
            let killed = Arc::clone(&killed);
            move || killed.load(Ordering::SeqCst)
        });
        let (rx, early) = send_within(&producer, b"second".to_vec(), Duration::from_millis(200));
        assert!(early.is_none(), "a full queue makes the send wait");
        killed.store(true, Ordering::SeqCst);
        let result = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiting send returns once interrupted");
        assert!(
            matches!(result, Err(ProduceError::Interrupted { ref topic, .. }) if topic == "out"),
            "{result:?}"
        );
    }

    #[test]
    fn producers_share_the_queue_budget() {
        let budget = QueueBudget::new(1 << 20);
        let a = unreachable(&[], budget.clone());
        let b = unreachable(&[], budget.clone());
        assert_eq!(budget.producers(), 2);
        let record = vec![0u8; 100_000];
        for _ in 0..5 {
            a.send("out", None, &record, None).unwrap();
        }
        assert!(a.queued_bytes() <= budget.per_producer());
        // The sixth would take `a` over its half: it waits...
        let (rx, early) = send_within(&a, record.clone(), Duration::from_millis(200));
        assert!(early.is_none(), "over its share, a producer waits");
        // ... until the other producer is gone and `a` has the whole budget.
        drop(b);
        assert_eq!(budget.producers(), 1);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the send goes on within the larger share")
            .unwrap();
        assert!(a.queued_bytes() > 512 << 10);
        assert!(a.queued_bytes() <= 1 << 20);
    }

    #[test]
    fn a_job_sizing_the_queue_itself_is_left_alone() {
        let budget = QueueBudget::new(1 << 20);
        let producer = unreachable(&[("queue.buffering.max.kbytes", "65536")], budget.clone());
        assert_eq!(budget.producers(), 0);
        for _ in 0..20 {
            producer.send("out", None, &[0u8; 100_000], None).unwrap();
        }
        assert!(producer.queued_bytes() > 1 << 20);
    }

    /// A producer of a mock cluster with topics `a` and `b` that holds a
    /// batch ten seconds before sending it.
    fn lingering(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        budget: Arc<QueueBudget>,
    ) -> OutputProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "10000");
        OutputProducer::with_budget(&config, None, budget).unwrap()
    }

    fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
        let cluster = MockCluster::new(1).expect("mock cluster");
        for topic in ["a", "b"] {
            cluster.create_topic(topic, 2, 1).expect("topic");
        }
        cluster
    }

    #[test]
    fn a_flush_sends_lingering_records_at_once() {
        let cluster = mock_cluster();
        let producer = lingering(&cluster, QueueBudget::new(64 << 20));
        for i in 0..3 {
            producer
                .send("a", None, format!("{i}").as_bytes(), None)
                .unwrap();
        }
        let started = Instant::now();
        producer.flush().expect("flushed");
        assert_eq!(producer.queued_bytes(), 0, "all delivered");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the flush waited out the 10 s linger: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_send_over_its_share_does_not_wait_out_the_linger() {
        let cluster = mock_cluster();
        // Room for one record of 600 bytes: every next one waits for the
        // one before to be delivered.
        let producer = lingering(&cluster, QueueBudget::new(1_000));
        let started = Instant::now();
        for _ in 0..4 {
            producer.send("a", None, &[7u8; 600], None).unwrap();
            assert!(producer.queued_bytes() <= 1_000, "the share is kept");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sends over the share waited out the 10 s linger: {:?}",
            started.elapsed()
        );
        producer.flush().expect("flushed");
    }

    /// The first `count` records on `partitions` of `topic` as
    /// `key=value` with their headers (`name=value`), sorted.
    fn records_of(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        topic: &str,
        partitions: &[i32],
        count: usize,
    ) -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "read-back")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for &partition in partitions {
            assignment
                .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while records.len() < count && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                let headers: Vec<String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| format!("{}={}", h.key, text(h.value)))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(format!(
                    "{}={} {headers:?}",
                    text(m.key()),
                    text(m.payload())
                ));
            }
        }
        records.sort();
        records
    }

    #[test]
    fn records_reach_the_topic_they_name_with_and_without_headers() {
        let cluster = mock_cluster();
        let producer = lingering(&cluster, QueueBudget::new(64 << 20));
        for i in 0..4 {
            let topic = if i % 2 == 0 { "a" } else { "b" };
            let headers = (i >= 2).then(|| {
                OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: "h",
                    value: Some("v"),
                })
            });
            producer
                .send(topic, Some(b"k"), format!("{topic}{i}").as_bytes(), headers)
                .unwrap();
        }
        producer.flush().expect("flushed");
        assert_eq!(
            records_of(&cluster, "a", &[0, 1], 2),
            ["k=a0 []", "k=a2 [\"h=v\"]"]
        );
        assert_eq!(
            records_of(&cluster, "b", &[0, 1], 2),
            ["k=b1 []", "k=b3 [\"h=v\"]"]
        );
    }

    #[test]
    fn a_record_with_headers_keeps_them_when_a_full_queue_makes_it_wait() {
        let cluster = mock_cluster();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("queue.buffering.max.messages", "1");
        let producer =
            OutputProducer::with_budget(&config, None, QueueBudget::new(64 << 20)).unwrap();
        for value in ["first", "second", "third"] {
            let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "v",
                value: Some(value),
            });
            // Each send after the first finds the queue full and queues
            // its record again once the one before is delivered.
            producer
                .send_to_partition("a", 0, Some(b"k"), value.as_bytes(), headers)
                .unwrap();
        }
        producer.flush().expect("flushed");
        assert_eq!(
            records_of(&cluster, "a", &[0], 3),
            [
                "k=first [\"v=first\"]",
                "k=second [\"v=second\"]",
                "k=third [\"v=third\"]"
            ]
        );
    }

    #[test]
    fn a_record_sent_to_a_partition_reaches_it_with_its_headers() {
        let cluster = mock_cluster();
        let producer = lingering(&cluster, QueueBudget::new(64 << 20));
        for (partition, value) in [(1, "one"), (0, "zero"), (1, "uno")] {
            let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "p",
                value: Some(&partition.to_string()),
            });
            producer
                .send_to_partition("a", partition, Some(b"k"), value.as_bytes(), headers)
                .unwrap();
        }
        producer.flush().expect("flushed");
        assert_eq!(
            records_of(&cluster, "a", &[1], 2),
            ["k=one [\"p=1\"]", "k=uno [\"p=1\"]"]
        );
        assert_eq!(records_of(&cluster, "a", &[0], 1), ["k=zero [\"p=0\"]"]);
    }
}
