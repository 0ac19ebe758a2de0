//! The discrete-time model of a job reading a Kafka topic, one tick per
//! simulated second, and the loop that runs it under an autoscaler.
//!
//! Each tick the input arrives (the high watermark grows by it); outside a
//! rescale pause the workers process `min(backlog + input, capacity)`, where the capacity of `p` workers over `P` partitions is
//! `perWorker * P / ceil(P / p)`: partitions are spread over workers and the
//! worker with the most of them limits the throughput (12 partitions on 5
//! workers run no faster than on 4). During a pause (savepoint or rebalance,
//! restart, state restore) nothing is processed and the backlog grows.
//! Offsets are committed every commit interval (with each checkpoint) and
//! when workers stop for a rescale, so the lag Kafka shows (high watermark -
//! committed offset), which is what autoscalers read, runs up to one
//! interval of input ahead of the backlog (events not yet processed).

/// What the job is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct JobParams {
    /// Events per second one worker processes at 100% busy.
    pub capacity: f64,
    /// Partitions of the source topic: the most workers that can share it.
    pub partitions: i32,
    /// Seconds without processing after every change of parallelism.
    pub pause_secs: u64,
    /// Seconds between offset commits while running; 0 commits every second.
    pub commit_interval_secs: u64,
}

impl JobParams {
    /// Events per second `parallelism` workers process at 100% busy.
    pub fn throughput(&self, parallelism: i32) -> f64 {
        let partitions = self.partitions.max(1);
        let workers = parallelism.clamp(1, partitions);
        let busiest = (partitions + workers - 1) / workers;
        self.capacity * f64::from(partitions) / f64::from(busiest)
    }

    /// The fewest workers that could process `rate` events per second at
    /// 100% busy (ignoring how partitions spread).
    pub fn needed(&self, rate: u64) -> i32 {
        (rate as f64 / self.capacity).ceil() as i32
    }
}

/// What happened in one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    /// Events that arrived.
    pub input: u64,
    /// Events processed.
    pub processed: u64,
    /// Events arrived and not yet processed, at the end of the tick.
    pub backlog: u64,
    /// Lag at the end of the tick as Kafka shows it: high watermark -
    /// committed offset.
    pub lag: u64,
    /// Workers running (or being restarted) during the tick.
    pub parallelism: i32,
    /// Whether processing was stopped by a rescale.
    pub paused: bool,
}

/// A job under simulation.
#[derive(Clone, Debug)]
pub struct Job {
    params: JobParams,
    parallelism: i32,
    high_watermark: u64,
    processed: u64,
    committed: u64,
    since_commit: u64,
    pause_left: u64,
    processed_since_start: u64,
    busy_worker_secs: f64,
}

impl Job {
    /// A job of `parallelism` workers that has read everything so far.
    pub fn new(params: JobParams, parallelism: i32) -> Self {
        Self {
            params,
            parallelism,
            high_watermark: 0,
            processed: 0,
            committed: 0,
            since_commit: 0,
            pause_left: 0,
            processed_since_start: 0,
            busy_worker_secs: 0.0,
        }
    }

    /// Runs one second in which `input` events arrive.
    pub fn advance(&mut self, input: u64) -> Tick {
        self.high_watermark += input;
        let paused = self.pause_left > 0;
        let processed = if paused {
            self.pause_left -= 1;
            0
        } else {
            let capacity = self.params.throughput(self.parallelism).floor() as u64;
            let done = self.backlog().min(capacity);
            self.processed += done;
            self.processed_since_start += done;
            self.busy_worker_secs += done as f64 / self.params.capacity;
            self.since_commit += 1;
            if self.since_commit >= self.params.commit_interval_secs {
                self.commit();
            }
            done
        };
        Tick {
            input,
            processed,
            backlog: self.backlog(),
            lag: self.lag(),
            parallelism: self.parallelism,
            paused,
        }
    }

    fn commit(&mut self) {
        self.committed = self.processed;
        self.since_commit = 0;
    }

    /// Changes the parallelism: the workers commit what they processed and
    /// stop for the pause, and their counters restart.
    pub fn rescale(&mut self, to: i32) {
        self.commit();
        self.parallelism = to;
        self.pause_left = self.params.pause_secs;
        self.processed_since_start = 0;
    }

    /// The current parallelism.
    pub fn parallelism(&self) -> i32 {
        self.parallelism
    }

    /// Whether the workers are processing (not in a rescale pause).
    pub fn running(&self) -> bool {
        self.pause_left == 0
    }

    /// Sum of the high watermarks: every event that arrived.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// High watermark minus committed offset.
    pub fn lag(&self) -> u64 {
        self.high_watermark - self.committed
    }

    /// Events arrived and not yet processed.
    pub fn backlog(&self) -> u64 {
        self.high_watermark - self.processed
    }

    /// Events the workers processed since they last started.
    pub fn processed_since_start(&self) -> u64 {
        self.processed_since_start
    }

    /// Total time the workers spent processing, in worker-seconds (what
    /// their busy ratios are made of).
    pub fn busy_worker_secs(&self) -> f64 {
        self.busy_worker_secs
    }
}

/// An autoscaler driving the simulated job.
pub trait Scaler {
    /// Called at the end of every tick, `now_secs` after the start; returns
    /// the parallelism to change to, if any.
    fn after_tick(&mut self, now_secs: u64, job: &Job) -> Option<i32>;
}

/// A change of parallelism.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Rescale {
    /// Seconds after the start.
    pub at_secs: u64,
    /// Parallelism before.
    pub from: i32,
    /// Parallelism after.
    pub to: i32,
}

/// Everything that happened in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// One entry per second.
    pub ticks: Vec<Tick>,
    /// Every change of parallelism, in order.
    pub rescales: Vec<Rescale>,
}

/// Runs a job of `initial` workers through `input` (events per second)
/// under `scaler`.
pub fn run(input: &[u64], params: &JobParams, initial: i32, scaler: &mut dyn Scaler) -> Trace {
    let mut job = Job::new(params.clone(), initial);
    let mut trace = Trace::default();
    for (t, &arrived) in input.iter().enumerate() {
        trace.ticks.push(job.advance(arrived));
        let now = t as u64 + 1;
        if let Some(to) = scaler.after_tick(now, &job) {
            let from = job.parallelism();
            if to != from {
                trace.rescales.push(Rescale {
                    at_secs: now,
                    from,
                    to,
                });
                job.rescale(to);
            }
        }
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> JobParams {
        JobParams {
            capacity: 10_000.0,
            partitions: 12,
            pause_secs: 30,
            commit_interval_secs: 0,
        }
    }

    #[test]
    fn an_uneven_spread_runs_at_the_speed_of_the_busiest_worker() {
        let p = params();
        assert_eq!(p.throughput(4), 40_000.0);
        assert_eq!(p.throughput(5), 40_000.0);
        assert_eq!(p.throughput(6), 60_000.0);
        assert_eq!(p.throughput(40), 120_000.0);
    }

    #[test]
    fn a_rescale_stops_processing_for_the_pause_and_the_lag_grows() {
        let mut job = Job::new(params(), 2);
        assert_eq!(job.advance(15_000).lag, 0);
        job.rescale(3);
        for second in 1..=30 {
            let tick = job.advance(15_000);
            assert!(tick.paused && tick.processed == 0);
            assert_eq!(tick.lag, 15_000 * second);
        }
        // 30 s of input behind, 15k/s of 30k/s spare: caught up in 30 s.
        let ticks: Vec<Tick> = (0..30).map(|_| job.advance(15_000)).collect();
        assert!(ticks.iter().all(|t| t.processed == 30_000));
        assert_eq!(job.lag(), 0);
        assert_eq!(job.processed_since_start(), 900_000);
    }

    #[test]
    fn kafka_shows_the_lag_of_the_last_commit() {
        let params = JobParams {
            commit_interval_secs: 10,
            ..params()
        };
        let mut job = Job::new(params, 2);
        let ticks: Vec<Tick> = (0..10).map(|_| job.advance(15_000)).collect();
        assert!(ticks.iter().all(|t| t.backlog == 0));
        assert_eq!(ticks[8].lag, 9 * 15_000);
        assert_eq!(ticks[9].lag, 0, "committed with the 10th second");
        job.advance(15_000);
        job.rescale(3);
        assert_eq!(job.lag(), 0, "a rescale commits first");
    }

    struct Never;

    impl Scaler for Never {
        fn after_tick(&mut self, _: u64, _: &Job) -> Option<i32> {
            None
        }
    }

    #[test]
    fn an_overloaded_job_falls_behind_by_the_difference() {
        let trace = run(&[25_000; 10], &params(), 2, &mut Never);
        assert_eq!(trace.ticks.last().unwrap().backlog, 50_000);
        assert!(trace.rescales.is_empty());
    }
}
