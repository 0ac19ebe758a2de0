//! Prometheus metrics of one worker instance, in a registry of its own (not
//! the global one), since several workers can share a process.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Why metrics could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("cannot register metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The metrics of one worker instance.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    records_late: IntCounterVec,
    records_dead_lettered: IntCounterVec,
    records_repartitioned: IntCounterVec,
    partial_matches_dropped: IntCounterVec,
    join_versions_dropped: IntCounterVec,
    partition_lag: IntGaugeVec,
    partition_offset: IntGaugeVec,
    watermark: IntGaugeVec,
    /// Duration of checkpoints, in seconds.
    pub checkpoint_duration: Histogram,
    /// Total size of the state referenced by the latest checkpoint.
    pub checkpoint_size: IntGauge,
    /// Bytes uploaded by checkpoints since start.
    pub checkpoint_uploaded_bytes: IntCounter,
    /// Checkpoints that failed.
    pub checkpoint_failures: IntCounter,
    /// Savepoints completed.
    pub savepoints: IntCounter,
    /// Duration of the restore at start, in seconds.
    pub restore_duration: Gauge,
    /// Share of wall time spent processing rather than waiting for input.
    pub busy_ratio: Gauge,
    /// The processing loop's heartbeat, behind `/healthz` (shared by the
    /// clones the loop and the HTTP handlers hold).
    pub heartbeat: crate::control::heartbeat::Heartbeat,
}

/// The counters of one task, resolved once so the hot path only adds to
/// atomics.
#[derive(Clone)]
pub struct TaskCounters {
    /// Records read.
    pub records_in: IntCounter,
    /// Records written to the sink.
    pub records_out: IntCounter,
    /// Records sent to the late-data topic or dropped as late.
    pub records_late: IntCounter,
    /// Records sent to the dead-letter topic or dropped as undecodable.
    pub records_dead_lettered: IntCounter,
    /// Records sent to the repartition topic.
    pub records_repartitioned: IntCounter,
    /// Partial matches of pattern steps dropped for the per-key bound.
    pub partial_matches_dropped: IntCounter,
    /// Row versions of temporal joins dropped for the per-key history.
    pub join_versions_dropped: IntCounter,
}

impl WorkerMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let records_in = counter_vec(
            "weir_records_in_total",
            "Records read from the source.",
            &["task"],
        )?;
        let records_out = counter_vec(
            "weir_records_out_total",
            "Records written to the sink.",
            &["task"],
        )?;
        let records_late = counter_vec(
            "weir_records_late_total",
            "Events later than the allowed lateness (sent to lateData or dropped).",
            &["task"],
        )?;
        let records_dead_lettered = counter_vec(
            "weir_records_dead_lettered_total",
            "Records that failed to decode or evaluate (sent to deadLetter or dropped).",
            &["task"],
        )?;
        let partial_matches_dropped = counter_vec(
            "weir_pattern_partial_matches_dropped_total",
            "Partial matches of pattern steps dropped, oldest first, because a key had more than the bound.",
            &["task"],
        )?;
        let join_versions_dropped = counter_vec(
            "weir_join_versions_dropped_total",
            "Row versions of temporal joins dropped, oldest first, before the watermark passed them, because a key had more than join.history: records joined at their time may miss them.",
            &["task"],
        )?;
        let records_repartitioned = counter_vec(
            "weir_records_repartitioned_total",
            "Records sent to the repartition topic (a keyBy not partitioned like the source).",
            &["task"],
        )?;
        let partition_lag = gauge_vec(
            "weir_partition_lag",
            "High watermark minus the next offset to process, per source partition.",
            &["topic", "partition"],
        )?;
        let partition_offset = gauge_vec(
            "weir_partition_offset",
            "Next offset to process, per source partition.",
            &["topic", "partition"],
        )?;
        let watermark = gauge_vec(
            "weir_task_watermark_milliseconds",
            "Event-time watermark of each task, in milliseconds since the epoch.",
            &["task"],
        )?;
        let checkpoint_duration = Histogram::with_opts(
            HistogramOpts::new(
                "weir_checkpoint_duration_seconds",
                "Duration of checkpoints.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(checkpoint_duration.clone()))?;
        let checkpoint_size = IntGauge::new(
            "weir_checkpoint_size_bytes",
            "Total size of the state referenced by the latest checkpoint.",
        )?;
        registry.register(Box::new(checkpoint_size.clone()))?;
        let checkpoint_uploaded_bytes = IntCounter::new(
            "weir_checkpoint_uploaded_bytes_total",
            "Bytes uploaded to object storage by checkpoints.",
        )?;
        registry.register(Box::new(checkpoint_uploaded_bytes.clone()))?;
        let checkpoint_failures =
            IntCounter::new("weir_checkpoint_failures_total", "Checkpoints that failed.")?;
        registry.register(Box::new(checkpoint_failures.clone()))?;
        let savepoints = IntCounter::new("weir_savepoints_total", "Savepoints completed.")?;
        registry.register(Box::new(savepoints.clone()))?;
        let restore_duration = Gauge::new(
            "weir_restore_duration_seconds",
            "Duration of the restore at start-up.",
        )?;
        registry.register(Box::new(restore_duration.clone()))?;
        let busy_ratio = Gauge::new(
            "weir_busy_ratio",
            "Share of wall time spent processing rather than waiting for input.",
        )?;
        registry.register(Box::new(busy_ratio.clone()))?;
        Ok(Self {
            registry,
            records_in,
            records_out,
            records_late,
            records_dead_lettered,
            records_repartitioned,
            partial_matches_dropped,
            join_versions_dropped,
            partition_lag,
            partition_offset,
            watermark,
            checkpoint_duration,
            checkpoint_size,
            checkpoint_uploaded_bytes,
            checkpoint_failures,
            savepoints,
            restore_duration,
            busy_ratio,
            heartbeat: crate::control::heartbeat::Heartbeat::new(),
        })
    }

    /// The counters of a task.
    pub fn task(&self, task: i32) -> TaskCounters {
        let label = task.to_string();
        let l = [label.as_str()];
        TaskCounters {
            records_in: self.records_in.with_label_values(&l),
            records_out: self.records_out.with_label_values(&l),
            records_late: self.records_late.with_label_values(&l),
            records_dead_lettered: self.records_dead_lettered.with_label_values(&l),
            records_repartitioned: self.records_repartitioned.with_label_values(&l),
            partial_matches_dropped: self.partial_matches_dropped.with_label_values(&l),
            join_versions_dropped: self.join_versions_dropped.with_label_values(&l),
        }
    }

    /// Records a source partition's next offset and lag.
    pub fn set_partition(&self, topic: &str, partition: i32, offset: i64, lag: Option<i64>) {
        let p = partition.to_string();
        let l = [topic, p.as_str()];
        self.partition_offset.with_label_values(&l).set(offset);
        if let Some(lag) = lag {
            self.partition_lag.with_label_values(&l).set(lag);
        }
    }

    /// Records a task's watermark.
    pub fn set_watermark(&self, task: i32, watermark_ms: i64) {
        self.watermark
            .with_label_values(&[task.to_string().as_str()])
            .set(watermark_ms);
    }

    /// Records read from the sources by all tasks so far: the sum of
    /// `weir_records_in_total`, which grows at the end of each batch.
    pub fn records_in_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.records_in
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding text into a Vec cannot fail for well-formed metrics.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_do_not_share_a_registry() {
        let a = WorkerMetrics::new().unwrap();
        let b = WorkerMetrics::new().unwrap();
        a.task(3).records_in.inc_by(5);
        a.set_partition("orders", 3, 42, Some(7));
        a.set_watermark(3, 1000);
        a.busy_ratio.set(0.5);
        let text = a.render();
        assert!(
            text.contains("weir_records_in_total{task=\"3\"} 5"),
            "{text}"
        );
        assert!(text.contains("weir_partition_lag{partition=\"3\",topic=\"orders\"} 7"));
        assert!(text.contains("weir_task_watermark_milliseconds{task=\"3\"} 1000"));
        assert!(text.contains("weir_busy_ratio 0.5"));
        assert!(!b.render().contains("weir_records_in_total{"));
    }

    #[test]
    fn records_in_total_sums_the_records_read_by_every_task() {
        let metrics = WorkerMetrics::new().unwrap();
        assert_eq!(metrics.records_in_total(), 0);
        metrics.task(0).records_in.inc_by(5);
        metrics.task(7).records_in.inc_by(3);
        metrics.task(0).records_out.inc_by(100);
        assert_eq!(metrics.records_in_total(), 8);
    }
}
