//! The high watermarks of a worker's partitions, fetched on a thread of
//! their own (with a client of their own) so that lag is known without
//! slowing the processing loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::client;

/// How often high watermarks are fetched.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// High watermarks by (topic, partition).
pub type HighWatermarks = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// The running monitor; stops when dropped.
pub struct LagMonitor {
    high_watermarks: HighWatermarks,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagMonitor {
    /// Starts fetching the high watermarks of `partitions` every two
    /// seconds. Lag is simply not reported when the client or thread cannot
    /// be created (a warning says so).
    pub fn start(base: &ClientConfig, partitions: Vec<(String, i32)>) -> LagMonitor {
        let high_watermarks = HighWatermarks::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = Self::spawn(base, partitions, high_watermarks.clone(), stop.clone());
        LagMonitor {
            high_watermarks,
            stop,
            thread,
        }
    }

    /// The last high watermarks fetched.
    pub fn high_watermarks(&self) -> HashMap<(String, i32), i64> {
        lock(&self.high_watermarks).clone()
    }

    fn spawn(
        base: &ClientConfig,
        partitions: Vec<(String, i32)>,
        high_watermarks: HighWatermarks,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let client: BaseConsumer = match BaseConsumer::from_config(&client::metadata_config(base)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the lag monitor: lag is not reported");
                return None;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("weir-lag".to_owned())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    if Instant::now() >= next {
                        for (topic, partition) in &partitions {
                            match client.fetch_watermarks(topic, *partition, LAG_EVERY) {
                                Ok((_, high)) => {
                                    lock(&high_watermarks)
                                        .insert((topic.clone(), *partition), high);
                                }
                                Err(e) => {
                                    tracing::debug!(%topic, partition, error = %e, "watermarks");
                                }
                            }
                        }
                        next = Instant::now() + LAG_EVERY;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the lag monitor: lag is not reported");
                None
            }
        }
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
