//! The worker's source records, read from librdkafka in batches.
//!
//! rust-rdkafka's `BaseConsumer::poll` hands out one record per call, and
//! each call takes the queue's lock, reads the clock three times and builds
//! and reference-counts an event: about a thousand instructions per record,
//! half of what the stateless pipeline itself costs. Here the fetch queue
//! of every assigned partition is forwarded to one queue of the worker's
//! own, read with `rd_kafka_consume_batch_queue`: one call returns a batch
//! of records, each taken from the queue under its lock but without the
//! event, the clock reads or the reference counts.
//!
//! The consumer's own queue keeps everything else librdkafka reports
//! (logs, errors, commit results): [`SourceQueue::serve_events`] polls it.
//! Records never reach it: the partitions are forwarded before they are
//! assigned, so that nothing is fetched into the consumer's queue first
//! (librdkafka keeps a forward the application set when it starts
//! fetching). The worker assigns its partitions once: a partition assigned
//! again after an unassignment would have to be forwarded again.
//!
//! This module and [`crate::kafka::delivery_poller`] are the worker's only
//! foreign-function code: the pointers are librdkafka's, each `unsafe`
//! block says why it holds.

use std::ffi::{CStr, CString, c_char, c_void};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Most events of the consumer's queue served per call of
/// [`SourceQueue::serve_events`], so that a storm of logs cannot hold up
/// the records.
const MAX_EVENTS_PER_SERVE: usize = 1000;

/// Why the source queue could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceQueueError {
    /// librdkafka has no queue for the partition.
    #[error("librdkafka has no fetch queue for partition {partition} of topic {topic}")]
    NoPartitionQueue {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// librdkafka has no queue for the consumer (it has no group).
    #[error("the consumer has no queue of its own (no group.id)")]
    NoConsumerQueue,
    /// librdkafka could not create a queue.
    #[error("librdkafka could not create the source queue")]
    NoQueue,
    /// A record arrived on the consumer's own queue instead of the source
    /// queue: its partition was not forwarded, and the order of its
    /// records is no longer known.
    #[error(
        "a record of partition {partition} arrived outside the source queue (not forwarded before assignment)"
    )]
    RecordOutsideQueue {
        /// Its partition.
        partition: i32,
    },
}

/// The fetch queues of the assigned source partitions, forwarded to one
/// queue read in batches; also serves the events of the consumer's own
/// queue.
pub struct SourceQueue {
    /// The queue every partition's fetch queue is forwarded to.
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The partitions' fetch queues (held to undo the forward on drop).
    partitions: Vec<NonNull<rd::rd_kafka_queue_t>>,
    /// The consumer's own queue (events only), to see whether it holds any.
    consumer_queue: NonNull<rd::rd_kafka_queue_t>,
    /// The records of the last read, owned until the next read or
    /// [`SourceQueue::release`].
    batch: Vec<*mut rd::rd_kafka_message_t>,
    /// The consumer whose queues these are: it outlives them.
    consumer: Arc<BaseConsumer>,
}

impl SourceQueue {
    /// Forwards the fetch queue of every `(topic, partition)` to a new
    /// queue. Call it before the partitions are assigned.
    pub fn new(
        consumer: Arc<BaseConsumer>,
        partitions: &[(String, i32)],
    ) -> Result<Self, SourceQueueError> {
        let client = consumer.client().native_ptr();
        // SAFETY: `client` is the live consumer's handle (held by
        // `consumer` for as long as `self` lives); the reference returned
        // is released in `drop`.
        let consumer_queue = NonNull::new(unsafe { rd::rd_kafka_queue_get_consumer(client) })
            .ok_or(SourceQueueError::NoConsumerQueue)?;
        // SAFETY: as above; the queue created is owned by `self`.
        let Some(queue) = NonNull::new(unsafe { rd::rd_kafka_queue_new(client) }) else {
            // SAFETY: taken above and not used again.
            unsafe { rd::rd_kafka_queue_destroy(consumer_queue.as_ptr()) };
            return Err(SourceQueueError::NoQueue);
        };
        // From here on `drop` releases whatever was taken.
        let mut source = SourceQueue {
            queue,
            partitions: Vec::with_capacity(partitions.len()),
            consumer_queue,
            batch: Vec::new(),
            consumer,
        };
        for (topic, partition) in partitions {
            let no_queue = || SourceQueueError::NoPartitionQueue {
                topic: topic.clone(),
                partition: *partition,
            };
            let name = CString::new(topic.as_str()).map_err(|_| no_queue())?;
            // SAFETY: `client` is live, `name` a NUL-terminated string
            // that outlives the call; the reference returned is released
            // in `drop`.
            let fetch_queue = NonNull::new(unsafe {
                rd::rd_kafka_queue_get_partition(client, name.as_ptr(), *partition)
            })
            .ok_or_else(no_queue)?;
            // SAFETY: both queues are live references of this client.
            unsafe { rd::rd_kafka_queue_forward(fetch_queue.as_ptr(), queue.as_ptr()) };
            source.partitions.push(fetch_queue);
        }
        Ok(source)
    }

    /// Drops the last read's records and reads up to `max` new ones,
    /// waiting up to `timeout` for the first when none is buffered (and
    /// not for more: a batch is whatever is there). [`SourceQueue::records`]
    /// gives them.
    pub fn read(&mut self, max: usize, timeout: Duration) -> Read {
        self.release();
        let mut waited = Duration::ZERO;
        if max == 0 {
            return Read { records: 0, waited };
        }
        if !timeout.is_zero() {
            // librdkafka's batch read waits up to its timeout for the
            // whole batch: wait for one record only, then take the rest.
            let start = Instant::now();
            self.read_into(1, timeout);
            waited = start.elapsed();
            if self.batch.is_empty() {
                return Read { records: 0, waited };
            }
        }
        self.read_into(max - self.batch.len(), Duration::ZERO);
        Read {
            records: self.batch.len(),
            waited,
        }
    }

    /// Appends up to `max` records to the batch, waiting up to `timeout`.
    fn read_into(&mut self, max: usize, timeout: Duration) {
        if max == 0 {
            return;
        }
        self.batch.reserve(max);
        let start = self.batch.len();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the buffer has room for `max` pointers past `start`;
        // librdkafka writes at most that many and returns how many it
        // wrote (never more than `max`, or -1 for none).
        let read = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.batch.as_mut_ptr().add(start),
                max,
            )
        };
        let read = usize::try_from(read).unwrap_or(0).min(max);
        // SAFETY: the first `start + read` elements are initialised.
        unsafe { self.batch.set_len(start + read) };
    }

    /// The records of the last read, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = SourceMessage<'_>> {
        self.batch.iter().map(|&raw| SourceMessage {
            // SAFETY: every pointer of the batch is a message librdkafka
            // handed out and `release` has not destroyed yet; it lives as
            // long as `&self` (a read needs `&mut self`).
            raw: unsafe { &*raw },
        })
    }

    /// Serves the events waiting on the consumer's own queue (librdkafka's
    /// logs, errors and results, each handled by rust-rdkafka as one poll
    /// does), at most a thousand of them. Consumer errors
    /// are returned for the caller to log (librdkafka retries them). A
    /// record there is an error: its partition was not forwarded.
    pub fn serve_events(&self) -> Result<Vec<KafkaError>, SourceQueueError> {
        let mut errors = Vec::new();
        for _ in 0..MAX_EVENTS_PER_SERVE {
            // SAFETY: the consumer queue is a live reference held by self.
            if unsafe { rd::rd_kafka_queue_length(self.consumer_queue.as_ptr()) } == 0 {
                break;
            }
            match self.consumer.poll(Duration::ZERO) {
                None => {}
                Some(Err(e)) => errors.push(e),
                Some(Ok(message)) => {
                    use rdkafka::Message;
                    return Err(SourceQueueError::RecordOutsideQueue {
                        partition: message.partition(),
                    });
                }
            }
        }
        Ok(errors)
    }

    /// Moves `partition` of `topic` back to `next`, the next record to
    /// process, after a consumer error for it; the caller skips the
    /// partition's remaining records of the batch (the move discards what
    /// was fetched after them, and fetches again from `next`).
    ///
    /// A batch read moves a partition's position past every message it
    /// returns, errors included: an error at offset `x` (the next record to
    /// fetch) leaves the position at `x + 1`, so that a pause and resume
    /// would skip record `x`, and an error without an offset leaves it at
    /// 0. One poll per record never moved it for an error.
    pub fn rewind(&self, topic: &str, partition: i32, next: i64) -> Result<(), KafkaError> {
        // Without waiting: librdkafka applies it before the partition's
        // next fetch.
        self.consumer
            .seek(topic, partition, Offset::Offset(next), Duration::ZERO)
    }

    /// Destroys the records of the last read (each holds on to the whole
    /// fetch response it came in).
    pub fn release(&mut self) {
        for raw in self.batch.drain(..) {
            // SAFETY: each message is destroyed once, after which no
            // `SourceMessage` of it exists (they borrow `self`).
            unsafe { rd::rd_kafka_message_destroy(raw) };
        }
    }
}

impl Drop for SourceQueue {
    fn drop(&mut self) {
        self.release();
        for fetch_queue in self.partitions.drain(..) {
            // SAFETY: the references were taken in `new` and are released
            // once; undoing the forward first leaves no queue pointing at
            // the one destroyed below.
            unsafe {
                rd::rd_kafka_queue_forward(fetch_queue.as_ptr(), ptr::null_mut());
                rd::rd_kafka_queue_destroy(fetch_queue.as_ptr());
            }
        }
        // SAFETY: both were taken in `new`, are released once, and the
        // consumer (`self.consumer`) is still alive.
        unsafe {
            rd::rd_kafka_queue_destroy(self.consumer_queue.as_ptr());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// What a [`SourceQueue::read`] got.
#[derive(Clone, Copy, Debug)]
pub struct Read {
    /// How many records (and consumer errors) it read.
    pub records: usize,
    /// How long it waited for the first (idle time).
    pub waited: Duration,
}

/// One source record of a batch, borrowed from librdkafka.
#[derive(Clone, Copy)]
pub struct SourceMessage<'a> {
    raw: &'a rd::rd_kafka_message_t,
}

impl<'a> SourceMessage<'a> {
    /// The consumer error this message reports instead of a record, if
    /// any.
    pub fn error(&self) -> Option<KafkaError> {
        (self.raw.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(RDKafkaErrorCode::from(self.raw.err)))
    }

    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.raw.partition
    }

    /// Its offset.
    pub fn offset(&self) -> i64 {
        self.raw.offset
    }

    /// Its topic's name, or `""` when it has no topic (an error not of a
    /// partition) or librdkafka's name is not UTF-8 (a topic name never
    /// is).
    pub fn topic(&self) -> &'a str {
        if self.raw.rkt.is_null() {
            return "";
        }
        // SAFETY: a message's topic handle, when it has one, lives as long
        // as the message and its name is NUL-terminated.
        unsafe { c_str(rd::rd_kafka_topic_name(self.raw.rkt)) }.unwrap_or("")
    }

    /// Its value.
    pub fn payload(&self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's payload is `len` bytes owned by the message.
        unsafe { bytes(self.raw.payload, self.raw.len) }
    }

    /// Its key.
    pub fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: the key is `key_len` bytes owned by the message.
        unsafe { bytes(self.raw.key, self.raw.key_len) }
    }

    /// Its timestamp in epoch milliseconds, if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message and a place for the type.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.raw, &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ms != -1)
            .then_some(ms)
    }

    /// Its headers as (name, value); a header whose name is not UTF-8 is
    /// left out (no header Weir reads has such a name).
    pub fn headers(&self) -> SourceHeaders<'a> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; the headers belong to it (parsed on the
        // first call) and are not destroyed before it.
        let err = unsafe { rd::rd_kafka_message_headers(self.raw, &mut headers) };
        SourceHeaders {
            headers: if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                headers
            } else {
                ptr::null_mut()
            },
            next: 0,
            message: PhantomData,
        }
    }
}

/// The headers of a [`SourceMessage`], in order.
pub struct SourceHeaders<'a> {
    headers: *mut rd::rd_kafka_headers_t,
    next: usize,
    message: PhantomData<&'a rd::rd_kafka_message_t>,
}

impl<'a> Iterator for SourceHeaders<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.headers.is_null() {
            return None;
        }
        loop {
            let (mut name, mut value, mut size): (*const c_char, *const c_void, usize) =
                (ptr::null(), ptr::null(), 0);
            // SAFETY: live headers of a live message; librdkafka fills the
            // three places or returns an error past the last header.
            let err = unsafe {
                rd::rd_kafka_header_get_all(
                    self.headers,
                    self.next,
                    &mut name,
                    &mut value,
                    &mut size,
                )
            };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return None;
            }
            self.next += 1;
            // SAFETY: the name is NUL-terminated and the value `size`
            // bytes, both owned by the message.
            let (name, value) = unsafe { (c_str(name), bytes(value, size)) };
            if let Some(name) = name {
                return Some((name, value));
            }
        }
    }
}

/// The UTF-8 string at `ptr`, or `None` when it is null or not UTF-8.
///
/// # Safety
/// `ptr` is null or a NUL-terminated string that lives for `'a`.
unsafe fn c_str<'a>(ptr: *const c_char) -> Option<&'a str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}

/// The `len` bytes at `ptr`, or `None` when it is null.
///
/// # Safety
/// `ptr` is null or points to `len` bytes that live for `'a`.
unsafe fn bytes<'a>(ptr: *const c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

#[cfg(test)]
mod tests {
    use rdkafka::config::FromClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::client::consumer_config;

    type Cluster = MockCluster<'static, DefaultProducerContext>;

    /// A mock cluster with two topics of two partitions, each partition
    /// holding `per_partition` records `<topic>/<partition>/<i>` keyed
    /// `k<i>`, stamped `1000 + i` and with a header `n` = `i`.
    fn cluster_with_records(per_partition: usize) -> Cluster {
        let cluster = MockCluster::new(1).expect("mock cluster");
        for topic in ["a", "b"] {
            cluster.create_topic(topic, 2, 1).expect("topic");
            for partition in 0..2 {
                send_records(&cluster, topic, partition, 0..per_partition);
            }
        }
        cluster
    }

    /// Sends the records `range` of `partition` (see
    /// [`cluster_with_records`]) and waits until they are written.
    fn send_records(cluster: &Cluster, topic: &str, partition: i32, range: std::ops::Range<usize>) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for i in range {
            let value = format!("{topic}/{partition}/{i}");
            let key = format!("k{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(i.to_string().as_bytes()),
            });
            let record = BaseRecord::to(topic)
                .partition(partition)
                .payload(&value)
                .key(&key)
                .timestamp(1000 + i as i64)
                .headers(headers);
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    fn consumer(cluster: &Cluster) -> Arc<BaseConsumer> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers());
        Arc::new(BaseConsumer::from_config(&consumer_config(&base, "g")).expect("consumer"))
    }

    fn assignment(partitions: &[(String, i32)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition_offset(topic, *partition, Offset::Beginning)
                .expect("partition");
        }
        list
    }

    fn all_partitions() -> Vec<(String, i32)> {
        ["a", "b"]
            .iter()
            .flat_map(|t| (0..2).map(move |p| ((*t).to_owned(), p)))
            .collect()
    }

    /// A record as the loop sees it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        topic: String,
        partition: i32,
        offset: i64,
        key: Vec<u8>,
        value: Vec<u8>,
        timestamp_ms: Option<i64>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    }

    #[test]
    fn every_record_of_every_assigned_partition_arrives_in_order_with_its_key_time_and_headers() {
        let per_partition = 300;
        let cluster = cluster_with_records(per_partition);
        let consumer = consumer(&cluster);
        let partitions = all_partitions();
        let mut source = SourceQueue::new(consumer.clone(), &partitions).expect("source queue");
        consumer.assign(&assignment(&partitions)).expect("assign");

        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 4 * per_partition && Instant::now() < deadline {
            assert!(
                source
                    .serve_events()
                    .expect("no record outside the queue")
                    .is_empty()
            );
            // Batches smaller than what is buffered: a read takes what is
            // asked and leaves the rest in order.
            source.read(7, Duration::from_millis(100));
            for m in source.records() {
                assert!(m.error().is_none());
                seen.push(Seen {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().expect("key").to_vec(),
                    value: m.payload().expect("value").to_vec(),
                    timestamp_ms: m.timestamp_ms(),
                    headers: m
                        .headers()
                        .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                        .collect(),
                });
            }
        }
        assert_eq!(seen.len(), 4 * per_partition, "every record arrives once");
        for (topic, partition) in &partitions {
            let of_partition: Vec<&Seen> = seen
                .iter()
                .filter(|s| &s.topic == topic && s.partition == *partition)
                .collect();
            for (i, s) in of_partition.iter().enumerate() {
                let expected = Seen {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: i as i64,
                    key: format!("k{i}").into_bytes(),
                    value: format!("{topic}/{partition}/{i}").into_bytes(),
                    timestamp_ms: Some(1000 + i as i64),
                    headers: vec![("n".to_owned(), Some(i.to_string().into_bytes()))],
                };
                assert_eq!(**s, expected);
            }
        }
    }

    #[test]
    fn a_read_returns_what_is_buffered_without_waiting_for_a_full_batch() {
        let cluster = cluster_with_records(3);
        let consumer = consumer(&cluster);
        let partitions = all_partitions();
        let mut source = SourceQueue::new(consumer.clone(), &partitions).expect("source queue");
        consumer.assign(&assignment(&partitions)).expect("assign");
        let mut read = 0;
        let started = Instant::now();
        while read < 12 && started.elapsed() < Duration::from_secs(20) {
            // A batch of 1000 is never filled: each read ends as soon as
            // the buffered records are taken, not after its 10 s.
            read += source.read(1000, Duration::from_secs(10)).records;
        }
        assert_eq!(read, 12);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reads waited for a full batch: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_record_of_a_partition_not_forwarded_fails_instead_of_being_read_out_of_order() {
        let cluster = cluster_with_records(3);
        let consumer = consumer(&cluster);
        let forwarded = vec![("a".to_owned(), 0)];
        let source = SourceQueue::new(consumer.clone(), &forwarded).expect("source queue");
        // Partition a/1 is assigned without being forwarded: its records
        // reach the consumer's own queue.
        consumer
            .assign(&assignment(&[("a".to_owned(), 0), ("a".to_owned(), 1)]))
            .expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let error = loop {
            assert!(
                Instant::now() < deadline,
                "no record reached the consumer's queue"
            );
            match source.serve_events() {
                Err(e) => break e,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(
            matches!(error, SourceQueueError::RecordOutsideQueue { partition: 1 }),
            "{error}"
        );
    }

    /// Reads until `done` holds for the offsets and errors read so far, or
    /// `within` passes.
    fn read_until(
        source: &mut SourceQueue,
        within: Duration,
        mut on_error: impl FnMut(&SourceQueue, &[i64]),
        done: impl Fn(&[i64], usize) -> bool,
    ) -> (Vec<i64>, usize) {
        let (mut offsets, mut errors) = (Vec::new(), 0);
        let deadline = Instant::now() + within;
        while !done(&offsets, errors) && Instant::now() < deadline {
            source.serve_events().expect("no record outside the queue");
            source.read(100, Duration::from_millis(50));
            let mut error = false;
            for m in source.records() {
                match m.error() {
                    Some(_) => error = true,
                    // Records after an error come again.
                    None if !error => offsets.push(m.offset()),
                    None => {}
                }
            }
            if error {
                errors += 1;
                on_error(source, &offsets);
            }
        }
        (offsets, errors)
    }

    #[test]
    fn a_partition_moved_back_after_a_consumer_error_skips_no_record_when_paused_and_resumed() {
        let cluster = cluster_with_records(10);
        let consumer = consumer(&cluster);
        let partition = vec![("a".to_owned(), 0)];
        let mut source = SourceQueue::new(consumer.clone(), &partition).expect("source queue");
        let list = assignment(&partition);
        consumer.assign(&list).expect("assign");
        let long = Duration::from_secs(20);
        // As the loop does: back to the record after the last one read.
        let rewind = |from: i64| {
            move |source: &SourceQueue, read: &[i64]| {
                let next = read.last().map_or(from, |o| o + 1);
                source.rewind("a", 0, next).expect("rewind");
            }
        };
        let (offsets, _) = read_until(&mut source, long, rewind(0), |o, _| o.len() >= 10);
        assert_eq!(offsets, (0..10).collect::<Vec<i64>>());

        // The next fetch fails: librdkafka reports the error at offset 10
        // (the next record to fetch), and the batch read moves the
        // position to 11. The loop moves it back to its next record.
        // The mock cluster fails the next fetch request it handles, which
        // may not be this consumer's next one (it is pushed again until an
        // error arrives).
        let (mut offsets, mut errors) = (Vec::new(), 0);
        for _ in 0..20 {
            cluster.request_errors(
                RDKafkaApiKey::Fetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
            );
            let within = Duration::from_secs(1);
            let (read, e) = read_until(&mut source, within, rewind(10), |_, e| e > 0);
            offsets.extend(read);
            errors += e;
            if errors > 0 {
                break;
            }
        }
        assert!(offsets.is_empty());
        assert_eq!(errors, 1);

        // A pause and resume restarts from the position.
        consumer.pause(&list).expect("pause");
        send_records(&cluster, "a", 0, 10..12);
        std::thread::sleep(Duration::from_millis(300));
        consumer.resume(&list).expect("resume");
        // (An error pushed twice above may fail a fetch here too.)
        let (offsets, _) = read_until(&mut source, long, rewind(10), |o, _| o.len() >= 2);
        assert_eq!(offsets, vec![10, 11], "every record after the error, once");
    }
}
