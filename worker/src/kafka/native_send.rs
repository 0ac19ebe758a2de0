//! The two producer calls Weir makes to librdkafka itself rather than
//! through rust-rdkafka 0.39: queueing a record by a topic handle the
//! producer holds, and a flush that sends lingering batches at once.
//!
//! **Topic handles.** rust-rdkafka's `BaseProducer::send` names each
//! record's topic by a string: the record pays for a C string of the name
//! (an allocation and a copy), and librdkafka looks the topic up by name
//! under its write lock and takes and drops a reference to it. End to end
//! on Flink's stateless workload, callgrind put that at about 470 of the
//! 2,000 instructions an output record cost. [`NativeProducer`] creates the handle
//! of a topic on its first record and passes it with every later one
//! (`RD_KAFKA_VTYPE_RKT`): a reference count taken and dropped. It holds
//! the producer, so a handle never outlives its client. Every record goes
//! this way, with headers too (the repartition topic's records, dead
//! letters): their `OwnedHeaders` pass to librdkafka once it queued the
//! record, as rust-rdkafka's `send` passes them.
//!
//! **Flush.** librdkafka holds a batch until `linger.ms` passes, and sends
//! it at once while an `rd_kafka_flush` call is waiting. rust-rdkafka's
//! `flush` calls `rd_kafka_flush` with no wait between its own polls, so
//! the batches of a producer that lingers long went out only when the
//! linger passed. [`NativeProducer::flush`] waits inside `rd_kafka_flush`; the producers'
//! delivery reports, which the flush waits for, are served by their
//! [`crate::kafka::delivery_poller::DeliveryPoller`] thread meanwhile.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, PARTITION_UA, Producer, ProducerContext};
use rdkafka::util::IntoOpaque;

/// A record to queue, stamped with the time it is queued.
#[derive(Debug)]
pub struct OutgoingRecord<'a, O> {
    /// The destination topic.
    pub topic: &'a str,
    /// The destination partition; `None` leaves it to librdkafka's
    /// partitioner.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub payload: &'a [u8],
    /// The headers: taken once the record is queued, left here when it is
    /// not, for the next try.
    pub headers: Option<OwnedHeaders>,
    /// What the delivery report hands back to the producer's context.
    pub delivery_opaque: O,
}

/// A producer that sends by the librdkafka handles of its topics (created
/// on a topic's first record, released before the producer) and flushes
/// through librdkafka.
pub struct NativeProducer<C: ProducerContext> {
    /// Few topics per producer (output, dead letters, late data,
    /// repartition): a list searched by name. Declared before `producer`,
    /// so released first: a handle must not outlive its client.
    topics: Mutex<Vec<(Box<str>, TopicHandle)>>,
    producer: Arc<BaseProducer<C>>,
}

/// One topic handle, released on drop.
struct TopicHandle(NonNull<rd::rd_kafka_topic_t>);

// SAFETY: librdkafka's topic handles may be used and released from any
// thread.
unsafe impl Send for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `rd_kafka_topic_new` and is
        // released once, while its client lives (see `NativeProducer`).
        unsafe { rd::rd_kafka_topic_destroy(self.0.as_ptr()) }
    }
}

impl<C: ProducerContext> NativeProducer<C> {
    /// No handles yet, for `producer`.
    pub fn new(producer: Arc<BaseProducer<C>>) -> Self {
        Self {
            topics: Mutex::new(Vec::new()),
            producer,
        }
    }

    /// The producer, for what rust-rdkafka does as Weir needs it.
    pub fn base(&self) -> &BaseProducer<C> {
        &self.producer
    }

    /// The handle of `topic`, created on its first use. It stays valid
    /// while `self` lives: handles are only released with it.
    fn handle(&self, topic: &str) -> Result<*mut rd::rd_kafka_topic_t, KafkaError> {
        let mut topics = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, handle)) = topics.iter().find(|(name, _)| **name == *topic) {
            return Ok(handle.0.as_ptr());
        }
        let handle = new_topic(self.producer.client().native_ptr(), topic)?;
        let ptr = handle.0.as_ptr();
        topics.push((topic.into(), handle));
        Ok(ptr)
    }

    /// Waits up to `timeout` for every record queued to be delivered,
    /// sending lingering batches at once; times out with
    /// [`RDKafkaErrorCode::OperationTimedOut`]. The delivery reports must
    /// be served by another thread meanwhile (the producer's
    /// `DeliveryPoller`): this waits for them to be.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the client is alive while `self` is.
        let code = unsafe { rd::rd_kafka_flush(self.producer.client().native_ptr(), millis) };
        if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(KafkaError::Flush(RDKafkaErrorCode::from(code)))
        }
    }

    /// Queues `record` (a copy of its key and value, its headers taken) by
    /// the handle of its topic. On an error librdkafka did not take the
    /// record: its headers stay in `record`.
    pub fn send(&self, record: &mut OutgoingRecord<'_, C::DeliveryOpaque>) -> Result<(), KafkaError>
    where
        C::DeliveryOpaque: Copy,
    {
        let topic = self.handle(record.topic)?;
        let (key, key_len) = record
            .key
            .map_or((std::ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        // An `OwnedHeaders` is borrowed as a reference to its native list:
        // rust-rdkafka's `as_borrowed` casts the one to the other.
        // (rust-rdkafka 0.39; checked in debug builds.)
        let headers = record.headers.as_ref().map_or(std::ptr::null_mut(), |h| {
            let native = std::ptr::from_ref(h.as_borrowed()) as *mut rd::rd_kafka_headers_t;
            // SAFETY: `native` is the list `h` owns, alive while `h` is.
            debug_assert_eq!(unsafe { rd::rd_kafka_header_cnt(native) }, h.count());
            native
        });
        let opaque = record.delivery_opaque.into_ptr();
        // SAFETY: the client and the topic handle are alive (the handle is
        // released only with `self`, which is borrowed, and holds the
        // client); the key and value are copied (`RD_KAFKA_MSG_F_COPY`)
        // before the call returns; the headers, if any, are a live list
        // that librdkafka owns only if the record is queued (then they are
        // forgotten below, not released); the argument list is typed as
        // librdkafka's `rd_kafka_producev` reads it and ends with
        // `RD_KAFKA_VTYPE_END`.
        let code = unsafe {
            rd::rd_kafka_producev(
                self.producer.client().native_ptr(),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                topic,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                record.partition.unwrap_or(PARTITION_UA),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                rd::RD_KAFKA_MSG_F_COPY,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                record.payload.as_ptr(),
                record.payload.len(),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key,
                key_len,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                headers,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            // librdkafka owns the headers now.
            std::mem::forget(record.headers.take());
            Ok(())
        } else {
            // Not queued; the opaque is a plain value (`Copy`), with
            // nothing to take back.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(code)))
        }
    }
}

/// A handle of `topic` on `client`, configured as the client's default
/// topic configuration says.
fn new_topic(client: *mut rd::rd_kafka_t, topic: &str) -> Result<TopicHandle, KafkaError> {
    let name = CString::new(topic)?;
    // SAFETY: the client is alive; a null configuration means the
    // client's default topic configuration.
    let handle = unsafe { rd::rd_kafka_topic_new(client, name.as_ptr(), std::ptr::null_mut()) };
    NonNull::new(handle).map(TopicHandle).ok_or_else(|| {
        // SAFETY: reads this thread's last librdkafka error.
        KafkaError::MessageProduction(RDKafkaErrorCode::from(unsafe { rd::rd_kafka_last_error() }))
    })
}
