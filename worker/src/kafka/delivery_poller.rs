//! Serves a producer's delivery reports on a thread that sleeps while there
//! are none.
//!
//! rust-rdkafka's `ThreadedProducer` polls in a loop of 100 ms deadlines,
//! and its poll rounds the time left down to whole milliseconds: the last
//! millisecond of every deadline is spent polling without waiting. That is
//! about half a percent of a core per producer when idle, and
//! exactly-once runs a producer per task (16 idle producers took 7.8% of a
//! core, 16 without a polling thread 0.4%). Here the thread parks until
//! librdkafka reports that the producer's queue turned non-empty
//! (`rd_kafka_queue_cb_event_enable`), then serves what is there, one
//! event per non-waiting poll, and parks again; a timed park bounds how
//! long a missed wake-up could delay a report.

use std::any::Any;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// The longest park between two looks at the queue, should a wake-up be
/// missed.
const PARK_AT_MOST: Duration = Duration::from_millis(100);
/// Most events served between two looks at the stop flag.
const EVENTS_PER_ROUND: usize = 10_000;

/// The thread serving one producer's events, stopped and joined on drop.
pub struct DeliveryPoller {
    /// The producer's main queue, whose non-empty callback wakes the
    /// thread.
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The thread the callback wakes: its opaque pointer, freed after the
    /// callback is disabled.
    wake: *mut Thread,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The producer, held so that its client outlives `queue` (fields go
    /// after `drop`'s body, which releases the queue).
    _producer: Arc<dyn Any + Send + Sync>,
}

// SAFETY: librdkafka's queue handles may be used from any thread, and the
// `Thread` behind `wake` is only read (unparked), by any thread.
unsafe impl Send for DeliveryPoller {}
// SAFETY: as above; `&self` never touches the pointers.
unsafe impl Sync for DeliveryPoller {}

/// Wakes the polling thread: librdkafka calls it when an event is queued
/// on the empty queue.
extern "C" fn wake_poller(_client: *mut rd::rd_kafka_t, thread: *mut c_void) {
    // SAFETY: the opaque is the `Thread` the poller registered; it is
    // freed only after the callback is disabled.
    unsafe { &*thread.cast::<Thread>() }.unpark();
}

impl DeliveryPoller {
    /// Starts a thread named `name` serving `producer`'s events (delivery
    /// reports, errors, logs) until the poller is dropped.
    pub fn start<C: ProducerContext + 'static>(
        producer: Arc<BaseProducer<C>>,
        name: &str,
    ) -> std::io::Result<Self> {
        // SAFETY: the producer is alive, and held by `self` until after
        // `drop` released the reference taken here.
        let queue =
            NonNull::new(unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) })
                .ok_or_else(|| std::io::Error::other("librdkafka returned no main queue"))?;
        let client: Arc<dyn Any + Send + Sync> = producer.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let queue = SendQueue(queue);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || serve(&producer, &queue, &stop))
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                // SAFETY: taken above, not registered anywhere.
                unsafe { rd::rd_kafka_queue_destroy(queue.as_ptr()) };
                return Err(e);
            }
        };
        let wake = Box::into_raw(Box::new(thread.thread().clone()));
        // SAFETY: `wake` lives until `drop` disables the callback.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(queue.as_ptr(), Some(wake_poller), wake.cast())
        };
        // Events queued before the callback was set are served at the
        // thread's first look.
        thread.thread().unpark();
        Ok(Self {
            queue,
            wake,
            stop,
            thread: Some(thread),
            _producer: client,
        })
    }
}

/// A queue handle the polling thread may hold (librdkafka's queues are
/// thread-safe).
struct SendQueue(NonNull<rd::rd_kafka_queue_t>);
// SAFETY: see above.
unsafe impl Send for SendQueue {}

/// The polling thread: serve every waiting event, then park until woken.
fn serve<C: ProducerContext>(producer: &BaseProducer<C>, queue: &SendQueue, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut emptied = false;
        for _ in 0..EVENTS_PER_ROUND {
            // SAFETY: the handle lives until the thread is joined.
            if unsafe { rd::rd_kafka_queue_length(queue.0.as_ptr()) } == 0 {
                emptied = true;
                break;
            }
            // Serves one event (a delivery report covers a whole produce
            // request's records) without waiting.
            producer.poll(Duration::ZERO);
        }
        // Woken only when the queue turns non-empty: a round that left
        // events goes on without parking.
        if emptied {
            std::thread::park_timeout(PARK_AT_MOST);
        }
    }
}

impl Drop for DeliveryPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        // SAFETY: the callback is disabled before its opaque is freed, and
        // the queue reference taken in `start` is released once.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            drop(Box::from_raw(self.wake));
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use rdkafka::ClientContext;
    use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DeliveryResult};

    use super::*;

    /// Counts the delivery reports served.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ClientContext for Count {}

    impl ProducerContext for Count {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
            assert!(result.is_ok(), "delivery failed");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn delivery_reports_are_served_without_the_sender_polling_and_the_thread_ends_on_drop() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("out", 1, 1).expect("topic");
        let producer = Arc::new(
            BaseProducer::from_config_and_context(
                ClientConfig::new()
                    .set("bootstrap.servers", cluster.bootstrap_servers())
                    .set("linger.ms", "1"),
                Count::default(),
            )
            .expect("producer"),
        );
        let poller = DeliveryPoller::start(producer.clone(), "test-deliveries").expect("poller");
        let sent = 500;
        for i in 0..sent {
            let value = i.to_string();
            producer
                .send(BaseRecord::<(), String, ()>::with_opaque_to("out", ()).payload(&value))
                .map_err(|(e, _)| e)
                .expect("send");
            // In rounds, so that the thread parks and is woken again.
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while producer.context().0.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(producer.context().0.load(Ordering::Relaxed), sent);
        drop(poller);
        assert_eq!(
            Arc::strong_count(&producer),
            1,
            "the polling thread and the poller let go of the producer"
        );
    }
}
