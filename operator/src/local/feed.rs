//! Feeding the source topic: generated events (or the lines of a file) at
//! the rate of a profile, each also handed to the model, in the order
//! produced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir_worker::kafka::partitioner::partition_for_key;

use super::generator::{EventSource, GeneratedEvent};
use super::profile::RateProfile;

/// One event as produced: where it went, and what the model is fed.
#[derive(Debug)]
pub struct Produced {
    /// The topic (shared by all the events of a feed).
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The Kafka key.
    pub key: Option<Vec<u8>>,
    /// The JSON value.
    pub value: Vec<u8>,
    /// The Kafka timestamp.
    pub timestamp_ms: i64,
}

/// Where events come from.
pub enum Events {
    /// Drawn from a shape.
    Generated(Box<EventSource>),
    /// The lines of a file, in order, with the keys given.
    Lines(std::vec::IntoIter<GeneratedEvent>),
}

impl Events {
    fn next(&mut self, now_ms: i64) -> Option<GeneratedEvent> {
        match self {
            Events::Generated(source) => Some(source.next_event(now_ms)),
            Events::Lines(lines) => lines.next(),
        }
    }
}

/// The running feed.
pub struct Feed {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<u64, String>>,
}

impl Feed {
    /// Starts producing `events` to `topic` (`partitions` partitions) at
    /// `bootstrap` at the rate of `profile`, sending each to `model`; with
    /// `limit`, the feed ends after that many events.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        mut events: Events,
        profile: RateProfile,
        limit: Option<u64>,
        model: Sender<Produced>,
    ) -> Result<Feed, String> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| format!("create the event producer: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let topic: Arc<str> = Arc::from(topic);
        let handle = std::thread::Builder::new()
            .name("weir-run-feed".to_owned())
            .spawn(move || {
                let started = Instant::now();
                let mut sent: u64 = 0;
                let mut round_robin = 0;
                let limit = limit.unwrap_or(u64::MAX);
                'feed: while !stop_flag.load(Ordering::SeqCst) && sent < limit {
                    let due = profile.events_until(started.elapsed()).min(limit);
                    while sent < due {
                        let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
                        let Some(event) = events.next(now_ms) else {
                            break 'feed;
                        };
                        let partition = match &event.key {
                            Some(key) => partition_for_key(key.as_bytes(), partitions),
                            None => {
                                round_robin = (round_robin + 1) % partitions.max(1);
                                round_robin
                            }
                        };
                        loop {
                            let mut record = BaseRecord::to(&topic)
                                .partition(partition)
                                .payload(&event.value)
                                .timestamp(now_ms);
                            if let Some(key) = &event.key {
                                record = record.key(key.as_bytes());
                            }
                            match producer.send(record) {
                                Ok(()) => break,
                                Err((
                                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                    _,
                                )) => {
                                    producer.poll(Duration::from_millis(10));
                                }
                                Err((e, _)) => return Err(format!("produce to {topic}: {e}")),
                            }
                        }
                        sent += 1;
                        // The model may lag; it never blocks the feed.
                        let _ = model.send(Produced {
                            topic: Arc::clone(&topic),
                            partition,
                            key: event.key.map(String::into_bytes),
                            value: event.value,
                            timestamp_ms: now_ms,
                        });
                    }
                    producer.poll(Duration::ZERO);
                    std::thread::sleep(Duration::from_millis(5));
                }
                producer
                    .flush(Duration::from_secs(30))
                    .map_err(|e| format!("flush the events to {topic}: {e}"))?;
                Ok(sent)
            })
            .map_err(|e| format!("start the feed: {e}"))?;
        Ok(Feed { stop, handle })
    }

    /// Whether the feed ended by itself (a file was read to its end, or the
    /// limit was reached), every event delivered.
    pub fn ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the feed; returns the events produced, all delivered.
    pub fn stop(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| "the feed panicked".to_owned())?
    }
}
