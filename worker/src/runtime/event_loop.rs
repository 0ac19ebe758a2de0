//! The processing loop of a worker: poll a batch, process it, send what it
//! produced, advance processing time, checkpoint on the interval, serve
//! control commands and refresh the status report.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use weir_crds::job::Guarantee;

use super::dispatch::{dispatch_repartitioned, emit, source_offsets};
use super::input_gate::partition_list;
use super::{
    Destinations, Drain, Running, Task, WorkerError, WorkerExit, duration_ms, lock, task_number,
};
use crate::checkpoint::coordinator::{CoordinatorError, OutputCommitter, TaskCheckpointInput};
use crate::checkpoint::savepoint::SavepointError;
use crate::control::heartbeat::Heartbeat;
use crate::control::http::Command;
use crate::control::progress::Sample;
use crate::control::status::{
    CheckpointStatus, PartitionStatus, Rates, SavepointState, TaskStatus, WorkerPhase,
};
use crate::engine::record::SourceRecord;
use crate::kafka::producer::{OutputProducer, ProduceError};
use crate::kafka::repartition;

/// Most records handed to the tasks between two output flushes.
const MAX_BATCH: usize = 8192;
/// How long a poll waits for input when none is buffered.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often processing time is advanced (idle partitions, timers).
const ADVANCE_EVERY: Duration = Duration::from_millis(100);
/// How often, at most, a changed watermark report is broadcast to the
/// repartition topic under at-least-once.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the status report is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// How often the tasks waiting for other tasks' table reports are named.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

impl Running {
    /// Runs the loop until stopped, killed or failed. A producer waiting on
    /// a full queue gives up when the worker is killed or told to stop, and
    /// the worker then ends as killed, or stopped without a last checkpoint
    /// (its output since the last one is aborted or replayed, as after a
    /// crash).
    pub(super) fn run(&mut self) -> Result<WorkerExit, WorkerError> {
        for producer in self.output.producers() {
            let (kill, cancel) = (self.kill.clone(), self.cancel.clone());
            producer.interrupt_when(move || kill.load(Ordering::SeqCst) || cancel.is_cancelled());
        }
        match self.run_loop() {
            Err(WorkerError::Produce(e @ ProduceError::Interrupted { .. })) => {
                if self.kill.load(Ordering::SeqCst) {
                    tracing::warn!(error = %e, "killed while the output queue was full");
                    Ok(WorkerExit::Killed)
                } else {
                    tracing::warn!(error = %e, "stopping without a last checkpoint");
                    Ok(WorkerExit::Stopped {
                        last_checkpoint: self.last_checkpoint_id,
                    })
                }
            }
            other => other,
        }
    }

    fn run_loop(&mut self) -> Result<WorkerExit, WorkerError> {
        let mut next_checkpoint = Instant::now() + self.checkpoint_interval;
        let mut last_advance = Instant::now();
        let mut last_publish = Instant::now();
        loop {
            // Also while stopped after a savepoint: the loop is alive.
            self.metrics.heartbeat.beat();
            if self.kill.load(Ordering::SeqCst) {
                tracing::warn!("killed: stopping without checkpoint");
                return Ok(WorkerExit::Killed);
            }
            if self.cancel.is_cancelled() {
                if self.dirty {
                    self.checkpoint()?;
                }
                self.coordinator.finish_housekeeping();
                self.report_copied_savepoints(true);
                return Ok(WorkerExit::Stopped {
                    last_checkpoint: self.last_checkpoint_id,
                });
            }
            while let Ok(command) = self.commands.try_recv() {
                self.handle(command)?;
                next_checkpoint = Instant::now() + self.checkpoint_interval;
            }
            self.report_copied_savepoints(false);
            if self.stopped {
                std::thread::sleep(POLL_WAIT);
                self.idle += POLL_WAIT;
            } else {
                self.poll_batch()?;
                self.emit_all()?;
                self.finish_table_loads()?;
                self.continue_drain()?;
            }
            let now = Instant::now();
            // While draining, paused sources must not turn idle and move
            // the watermark: processing time stands still.
            let advancing = !self.stopped && self.draining.is_none();
            if now.duration_since(last_advance) >= ADVANCE_EVERY && advancing {
                last_advance = now;
                self.advance_time()?;
            }
            if now >= next_checkpoint && !self.stopped {
                // With a repartition, the checkpoint also carries the tasks'
                // watermark heartbeat, so it runs even when nothing changed.
                if self.dirty || self.destinations.repartition.is_some() {
                    self.checkpoint()?;
                }
                next_checkpoint = Instant::now() + self.checkpoint_interval;
            }
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                last_publish = now;
                let phase = if self.stopped {
                    WorkerPhase::Stopped
                } else {
                    WorkerPhase::Running
                };
                self.publish(phase);
            }
        }
    }

    /// Reads and processes up to [`MAX_BATCH`] records, waiting up to
    /// [`POLL_WAIT`] only when nothing is buffered; first serves the
    /// consumer's events (logs, errors).
    fn poll_batch(&mut self) -> Result<(), WorkerError> {
        for e in self.source.serve_events()? {
            // Broker and transport errors are retried by librdkafka.
            tracing::warn!(error = %e, "consumer error");
        }
        // Records processed, and messages read (records, errors and
        // records skipped): the batch ends on the latter, so that errors
        // alone never keep the loop here.
        let mut processed = 0;
        let mut read_total = 0;
        while read_total < MAX_BATCH {
            let wait = if read_total == 0 {
                POLL_WAIT
            } else {
                Duration::ZERO
            };
            let read = self.source.read(MAX_BATCH - read_total, wait);
            self.idle += read.waited;
            if read.records == 0 {
                break;
            }
            read_total += read.records;
            // Partitions moved back after a consumer error: the rest of
            // their records in this batch come again.
            let mut rewound: Vec<(usize, i32)> = Vec::new();
            for message in self.source.records() {
                let partition = message.partition();
                let index = usize::try_from(partition)
                    .ok()
                    .and_then(|p| self.task_of_partition.get(p).copied().flatten());
                // A consumer of one topic reads only its partitions: the
                // name's lookup (and its UTF-8 check) is needed only among
                // several.
                let topic_index = if self.topics.len() == 1 {
                    Some(0)
                } else {
                    let topic = message.topic();
                    self.topics.iter().position(|t| t == topic)
                };
                let known = index.zip(topic_index);
                if let Some(e) = message.error() {
                    // Broker and transport errors are retried by librdkafka;
                    // a task's partition goes back to its next record.
                    tracing::warn!(error = %e, topic = message.topic(), partition, "consumer error");
                    if let Some((index, topic_index)) = known {
                        let next = self.tasks[index].offsets[topic_index];
                        self.source
                            .rewind(&self.topics[topic_index], partition, next)
                            .map_err(|source| WorkerError::Consumer {
                                operation: "move a partition back to its next record after a consumer error",
                                source,
                            })?;
                        rewound.push((topic_index, partition));
                    }
                    continue;
                }
                let Some((index, topic_index)) = known else {
                    continue;
                };
                if rewound.contains(&(topic_index, partition)) {
                    continue;
                }
                let topic = self.topics[topic_index].as_str();
                let task = &mut self.tasks[index];
                let record = SourceRecord {
                    topic,
                    partition,
                    offset: message.offset(),
                    key: message.key(),
                    value: message.payload(),
                    timestamp_ms: message.timestamp_ms(),
                };
                let result = if Some(topic_index) == self.repartition_input {
                    dispatch_repartitioned(task, &record, repartition::classify(message.headers()))
                } else {
                    task.unreported_in += 1;
                    task.processor.process(&record, &mut task.outputs)
                };
                result.map_err(|e| WorkerError::Task {
                    task: task.id,
                    message: e.to_string(),
                })?;
                // Most records make no timer due: the producer's lookup
                // waits until one does.
                if task.processor.has_due_timers() {
                    let producer = self.output.producer(task_number(task.id));
                    drain_timers(task, producer, &self.destinations, &self.metrics.heartbeat)?;
                }
                task.offsets[topic_index] = message.offset() + 1;
                processed += 1;
            }
        }
        // The last batch's records hold on to their fetch responses.
        self.source.release();
        if processed > 0 {
            self.dirty = true;
            if let Some(throttle) = &mut self.throttle {
                // Waiting on the cap is busy time, not idle time.
                let wait = throttle.record(processed, Instant::now());
                std::thread::sleep(wait.min(Duration::from_secs(1)));
            }
        }
        Ok(())
    }

    /// Gives every task the processing time (idle partitions, timers),
    /// sends what that produced, then broadcasts the source watermarks that
    /// changed to the repartition topic (after the records they cover).
    fn advance_time(&mut self) -> Result<(), WorkerError> {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        for task in &mut self.tasks {
            // Sources held for the join's table must not turn idle (and
            // let the watermark after the repartition run ahead of them):
            // processing time stands still for the task, as in a drain.
            if self.inputs.holds(task.id) {
                continue;
            }
            task.processor
                .advance_time(now_ms, &mut task.outputs)
                .map_err(|e| WorkerError::Task {
                    task: task.id,
                    message: e.to_string(),
                })?;
            let producer = self.output.producer(task_number(task.id));
            if drain_timers(task, producer, &self.destinations, &self.metrics.heartbeat)? {
                self.dirty = true;
            }
        }
        self.emit_all()?;
        // Under at-least-once reports are visible at once: send them when
        // they change, at most every second. Under exactly-once they become
        // visible when the transaction commits: the checkpoint sends them,
        // and one must come soon when they change.
        let at_least_once = self.config.spec.guarantee == Guarantee::AtLeastOnce;
        for task in &self.tasks {
            let report = task.processor.source_report();
            match task.last_report {
                Some((last, _)) if last == report => {}
                Some((_, at)) if at.elapsed() < REPORT_EVERY => {}
                _ if at_least_once => self.pending_reports = true,
                _ => self.dirty = true,
            }
        }
        if std::mem::take(&mut self.pending_reports) {
            self.broadcast_watermarks(false)?;
        }
        Ok(())
    }

    /// Sends the source watermark of every task to every partition of the
    /// repartition topic (after the records it covers, which were sent
    /// first): all of them, or only those that changed. A report also says
    /// whether the task read its partition of the join's table and, during
    /// a drain, that the task's output for it ended.
    fn broadcast_watermarks(&mut self, all: bool) -> Result<(), WorkerError> {
        let Some((topic, partitions)) = &self.destinations.repartition else {
            return Ok(());
        };
        let ended = self.output_ended_for.as_deref();
        for task in &mut self.tasks {
            // A task still reading its partition of the join's table
            // forwards rows yet: its output for the drain ends after it.
            let drained = ended.filter(|_| !self.inputs.is_loading(task.id));
            let report = task.processor.source_report();
            let changed = task.last_report.is_none_or(|(last, _)| last != report);
            let nothing_to_say = report.watermark.is_none() && !report.idle && !task.table_read;
            if drained.is_none() && (!(all || changed) || nothing_to_say) {
                continue;
            }
            let producer = self.output.producer(task_number(task.id));
            for partition in 0..*partitions {
                producer.send_to_partition(
                    topic,
                    partition,
                    None,
                    &[],
                    repartition::watermark_headers(task.id, report, drained, task.table_read),
                )?;
            }
            task.last_report = Some((report, Instant::now()));
        }
        Ok(())
    }

    /// Sends every task's outputs to Kafka and updates the counters.
    fn emit_all(&mut self) -> Result<(), WorkerError> {
        for task in &mut self.tasks {
            let producer = self.output.producer(task_number(task.id));
            let emitted = emit(task, producer, &self.destinations)?;
            if emitted > 0 {
                self.dirty = true;
            }
            let c = task.outputs.counters;
            task.counters.records_in.inc_by(task.unreported_in);
            self.records_in += task.unreported_in;
            task.unreported_in = 0;
            let out = c.records_out.saturating_sub(task.reported.records_out);
            task.counters.records_out.inc_by(out);
            self.records_out += out;
            task.counters
                .records_late
                .inc_by(c.late.saturating_sub(task.reported.late));
            task.counters
                .records_dead_lettered
                .inc_by(c.dead_lettered.saturating_sub(task.reported.dead_lettered));
            task.counters
                .records_repartitioned
                .inc_by(c.repartitioned.saturating_sub(task.reported.repartitioned));
            task.counters.partial_matches_dropped.inc_by(
                c.partial_matches_dropped
                    .saturating_sub(task.reported.partial_matches_dropped),
            );
            task.counters.join_versions_dropped.inc_by(
                c.join_versions_dropped
                    .saturating_sub(task.reported.join_versions_dropped),
            );
            task.reported = c;
        }
        Ok(())
    }

    /// Handles a control command.
    fn handle(&mut self, command: Command) -> Result<(), WorkerError> {
        match command {
            Command::Resume => {
                if self.stopped {
                    tracing::info!("resuming");
                }
                self.stopped = false;
                // A resume gives up a stop still draining: with its sources
                // read again, its savepoint would miss what they send.
                self.give_up_drain(
                    "given up: the worker was asked to resume before the repartition topic was drained",
                )?;
                self.publish(WorkerPhase::Running);
                Ok(())
            }
            Command::Savepoint { id, stop } => {
                tracing::info!(%id, stop, "savepoint requested");
                self.set_savepoint(&id, SavepointState::InProgress, None);
                if stop && self.destinations.repartition.is_some() {
                    self.begin_drain(id)
                } else {
                    self.complete_savepoint(&id, stop)
                }
            }
        }
    }

    /// Starts draining the repartition topic for stop-with-savepoint `id`:
    /// the sources stop, every task tells every partition it wrote its last
    /// record (in the checkpoint that commits them), and the savepoint is
    /// taken once each owned task has read that from every upstream task
    /// ([`Running::continue_drain`]). So a stopped job's savepoint stands
    /// alone: nothing it needs is left in flight on the topic.
    fn begin_drain(&mut self, id: String) -> Result<(), WorkerError> {
        self.pause_sources()?;
        // Reports of this drain read before the request came (another
        // worker was asked first) count: that worker may not repeat them
        // before it completes and stops.
        for task in &mut self.tasks {
            task.drained.retain(|_, drained| *drained == id);
        }
        let timeout = self.config.spec.savepoint.timeout.as_millis();
        self.output_ended_for = Some(id.clone());
        self.draining = Some(Drain {
            deadline: Instant::now()
                + Duration::from_millis(u64::try_from(timeout).unwrap_or(300_000)),
            id,
        });
        if let Err(e) = self.checkpoint() {
            self.fail_drain(&e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Completes the drain when every owned task has read the drained
    /// report of every upstream task; gives up (sources resume, savepoint
    /// failed) at the savepoint timeout.
    fn continue_drain(&mut self) -> Result<(), WorkerError> {
        let Some(drain) = &self.draining else {
            return Ok(());
        };
        let upstreams = self.upstreams();
        let drained = self.tasks.iter().all(|task| {
            (0..upstreams).all(|u| task.drained.get(&u).is_some_and(|id| *id == drain.id))
        });
        if drained {
            let id = drain.id.clone();
            self.draining = None;
            tracing::info!(%id, "repartition topic drained");
            return self.complete_savepoint(&id, true);
        }
        if Instant::now() >= drain.deadline {
            return self.give_up_drain(
                "the repartition topic was not drained within savepoint.timeout: some upstream task did not report its last record; the job goes on",
            );
        }
        Ok(())
    }

    /// Fails the drain in progress, if any, with `message`, and reads the
    /// sources again (after a drain, or after a completed stop).
    fn give_up_drain(&mut self, message: &str) -> Result<(), WorkerError> {
        if let Some(id) = self.fail_drain(message) {
            tracing::warn!(%id, "{message}");
        }
        self.resume_sources()
    }

    /// Ends the drain in progress, if any, its savepoint failed with
    /// `message`; returns the savepoint's id.
    fn fail_drain(&mut self, message: &str) -> Option<String> {
        let drain = self.draining.take()?;
        self.set_savepoint(&drain.id, SavepointState::Failed, Some(message.to_owned()));
        Some(drain.id)
    }

    /// How many tasks the job has, each an upstream of every task's
    /// repartition partition.
    fn upstreams(&self) -> usize {
        usize::try_from(self.partitions).unwrap_or(0)
    }

    /// Takes savepoint `id` and, with `stop`, stops processing after it.
    /// Without `stop` the copy runs off the processing path and
    /// [`Running::report_copied_savepoints`] completes it.
    fn complete_savepoint(&mut self, id: &str, stop: bool) -> Result<(), WorkerError> {
        match self.savepoint(id, stop) {
            Ok(()) if stop => {
                self.savepoint_completed(id);
                Ok(())
            }
            Ok(()) => Ok(()),
            Err(SavepointFailure::Copy(e)) => {
                // The checkpoint committed; only the copy failed: the worker
                // keeps running and the request can be retried.
                self.savepoint_failed(id, &e);
                self.resume_sources()
            }
            Err(SavepointFailure::Checkpoint(e)) => {
                self.set_savepoint(id, SavepointState::Failed, Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Completes or fails the savepoints whose copy ended; with `wait`,
    /// waits for the copies still running.
    fn report_copied_savepoints(&mut self, wait: bool) {
        for copied in self.coordinator.copied_savepoints(wait) {
            match copied.result {
                Ok(()) => self.savepoint_completed(&copied.id),
                Err(e) => self.savepoint_failed(&copied.id, &e),
            }
        }
    }

    fn savepoint_completed(&mut self, id: &str) {
        self.metrics.savepoints.inc();
        self.set_savepoint(id, SavepointState::Completed, None);
        let phase = if self.stopped {
            WorkerPhase::Stopped
        } else {
            WorkerPhase::Running
        };
        self.publish(phase);
        tracing::info!(%id, stopped = self.stopped, "savepoint completed");
    }

    fn savepoint_failed(&self, id: &str, error: &SavepointError) {
        tracing::warn!(%id, %error, "savepoint failed");
        self.set_savepoint(id, SavepointState::Failed, Some(error.to_string()));
    }

    /// Moves the tasks waiting for their join's table on: a task whose
    /// consumer position on its table partition reached where the table
    /// stood at start reports it (with forwarding); a task whose table is
    /// complete reads its sources. The position, not the last row read:
    /// under read_committed a transaction's marker takes the table's last
    /// offset and is never delivered.
    fn finish_table_loads(&mut self) -> Result<(), WorkerError> {
        if !self.inputs.holds_any() {
            return Ok(());
        }
        let read = if self.inputs.loading().is_empty() {
            self.inputs.finish_loads(|_| None)
        } else {
            let positions = self
                .consumer
                .position()
                .map_err(|source| WorkerError::Consumer {
                    operation: "read the positions on the join's table",
                    source,
                })?;
            let topics = &self.topics;
            self.inputs.finish_loads(|load| {
                positions
                    .find_partition(&topics[load.topic_index], load.task)
                    .and_then(|p| p.offset().to_raw())
                    .filter(|offset| *offset >= 0)
            })
        };
        if !read.pause.is_empty() {
            let list = partition_list(&self.topics, &read.pause);
            self.consumer
                .pause(&list)
                .map_err(|source| WorkerError::Consumer {
                    operation: "pause the tables read during the drain",
                    source,
                })?;
        }
        if !read.report.is_empty() {
            self.report_tables_read(&read.report)?;
        }
        let upstreams = self.upstreams();
        let tasks = &self.tasks;
        let resumed = self.inputs.open(|id| {
            tasks
                .iter()
                .find(|task| task.id == id)
                .is_some_and(|task| task.tables_missing(upstreams).next().is_none())
        });
        if !self.inputs.waiting().is_empty() && self.table_wait_logged.elapsed() >= WAIT_LOG_EVERY {
            self.table_wait_logged = Instant::now();
            for task in self
                .tasks
                .iter()
                .filter(|t| self.inputs.waiting().contains(&t.id))
            {
                let missing: Vec<usize> = task.tables_missing(upstreams).collect();
                tracing::info!(
                    task = task.id,
                    ?missing,
                    "the sources wait for these tasks to report their partition of the join's table read (every worker of the job must be up)"
                );
            }
        }
        if resumed.is_empty() {
            return Ok(());
        }
        let list = partition_list(&self.topics, &resumed);
        self.consumer
            .resume(&list)
            .map_err(|source| WorkerError::Consumer {
                operation: "resume the sources held back for the table",
                source,
            })
    }

    /// Tells every task through the repartition topic that tasks `read`
    /// read their partition of the join's table, after the rows they
    /// forwarded: under at-least-once once they are written (a flush),
    /// under exactly-once in the transaction that commits them (a
    /// checkpoint, now rather than at the next interval: sources wait).
    fn report_tables_read(&mut self, read: &[i32]) -> Result<(), WorkerError> {
        let at_least_once = self.config.spec.guarantee == Guarantee::AtLeastOnce;
        if at_least_once {
            self.output
                .flush()
                .map_err(|e| CoordinatorError::output(None, e))?;
        }
        for task in &mut self.tasks {
            task.table_read |= read.contains(&task.id);
        }
        if at_least_once {
            self.broadcast_watermarks(true)
        } else {
            self.checkpoint().map(drop)
        }
    }

    /// Stops reading the source and join topics (the repartition topic
    /// goes on, and so does a table being read).
    fn pause_sources(&mut self) -> Result<(), WorkerError> {
        let paused = self.inputs.pause_for_drain();
        let list = partition_list(&self.topics, &paused);
        self.consumer
            .pause(&list)
            .map_err(|source| WorkerError::Consumer {
                operation: "pause the sources",
                source,
            })
    }

    /// Reads the source and join topics again after a drain; a task still
    /// waiting for its join's table reads its sources once it is complete.
    fn resume_sources(&mut self) -> Result<(), WorkerError> {
        self.output_ended_for = None;
        let resumed = self.inputs.resume_after_drain();
        if resumed.is_empty() {
            return Ok(());
        }
        let list = partition_list(&self.topics, &resumed);
        self.consumer
            .resume(&list)
            .map_err(|source| WorkerError::Consumer {
                operation: "resume the sources",
                source,
            })
    }

    /// Takes a checkpoint (unless nothing changed since the last one) and
    /// copies it into `savepoints/<id>/`: with `stop` before returning (the
    /// worker stops after it), else on a thread of its own while processing
    /// goes on.
    fn savepoint(&mut self, id: &str, stop: bool) -> Result<(), SavepointFailure> {
        let checkpoint_id = match self.last_checkpoint_id {
            Some(last) if !self.dirty => last,
            _ => self.checkpoint().map_err(SavepointFailure::Checkpoint)?,
        };
        let total = task_number(self.partitions);
        if stop {
            self.rt
                .block_on(self.coordinator.savepoint(checkpoint_id, id, total))
                .map_err(|e| SavepointFailure::Copy(Box::new(e)))?;
            self.stopped = true;
        } else {
            self.coordinator.start_savepoint(checkpoint_id, id, total);
        }
        // The savepoint restores from the offsets of that checkpoint, which
        // are the tasks' offsets now: purging stops there.
        if let Some(input) = self.repartition_input {
            for task in &self.tasks {
                self.purge_floor
                    .entry(task.id)
                    .or_insert(task.offsets[input]);
            }
        }
        Ok(())
    }

    /// Takes a checkpoint through the coordinator; returns its id. Any
    /// failure fails the worker, which restarts from the last committed
    /// checkpoint.
    fn checkpoint(&mut self) -> Result<u64, WorkerError> {
        // The batch in hand is processed; the tasks' watermark reports go
        // after the records they cover.
        self.broadcast_watermarks(true)?;
        for task in &mut self.tasks {
            task.processor
                .state_mut()
                .flush_cache()
                .map_err(|source| WorkerError::State {
                    task: task.id,
                    source,
                })?;
        }
        let mut inputs = Vec::with_capacity(self.tasks.len());
        for task in &self.tasks {
            let engine = serde_json::to_value(task.processor.snapshot_meta()).map_err(|e| {
                WorkerError::Task {
                    task: task.id,
                    message: format!("cannot encode the engine snapshot: {e}"),
                }
            })?;
            inputs.push(TaskCheckpointInput {
                task: task_number(task.id),
                db: task.processor.state().db(),
                offsets: source_offsets(&self.topics, task),
                engine,
            });
        }
        let outcome = self
            .rt
            .block_on(
                self.coordinator
                    .checkpoint(&mut self.output, inputs, &self.pipeline_record),
            )
            .inspect_err(|_| self.metrics.checkpoint_failures.inc())?;
        if let (Some(purger), Some(input)) = (&self.purger, self.repartition_input) {
            // Never below what a savepoint restores from.
            purger.purge(
                self.tasks
                    .iter()
                    .map(|t| {
                        let floor = self.purge_floor.get(&t.id).copied();
                        (
                            t.id,
                            floor.map_or(t.offsets[input], |f| f.min(t.offsets[input])),
                        )
                    })
                    .collect(),
            );
        }
        let id = outcome.checkpoint_id;
        self.dirty = false;
        self.last_checkpoint_id = Some(id);
        self.metrics
            .checkpoint_duration
            .observe(outcome.duration.as_secs_f64());
        self.metrics
            .checkpoint_size
            .set(i64::try_from(outcome.state_bytes).unwrap_or(i64::MAX));
        self.metrics
            .checkpoint_uploaded_bytes
            .inc_by(outcome.bytes_uploaded);
        lock(&self.status).last_checkpoint = Some(CheckpointStatus {
            id: id.to_string(),
            time: jiff::Timestamp::now().to_string(),
            duration_ms: duration_ms(outcome.duration),
            bytes_uploaded: outcome.bytes_uploaded,
            size_bytes: outcome.state_bytes,
        });
        tracing::debug!(checkpoint = id, duration = ?outcome.duration, uploaded = outcome.bytes_uploaded, "checkpoint committed");
        Ok(id)
    }

    fn set_savepoint(&self, id: &str, state: SavepointState, error: Option<String>) {
        let mut s = lock(&self.status);
        if let Some(sp) = s.savepoint.as_mut().filter(|sp| sp.id == id) {
            sp.state = state;
            sp.error = error;
            if matches!(state, SavepointState::Completed | SavepointState::Failed) {
                sp.finished_at = Some(jiff::Timestamp::now().to_string());
            }
        }
    }

    /// Refreshes the status report and the gauges.
    pub(super) fn publish(&mut self, phase: WorkerPhase) {
        self.progress.push(Sample {
            at: Instant::now(),
            records_in: self.records_in,
            records_out: self.records_out,
            idle: self.idle,
        });
        let progress = self.progress.progress();
        self.metrics.busy_ratio.set(progress.busy_ratio);
        let high = self.lag.high_watermarks();
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for task in &self.tasks {
            let watermark_ms = task.processor.watermark();
            if let Some(w) = watermark_ms {
                self.metrics.set_watermark(task.id, w);
            }
            let partitions = self
                .topics
                .iter()
                .zip(&task.offsets)
                .map(|(topic, &offset)| {
                    let high_watermark = high.get(&(topic.clone(), task.id)).copied();
                    let lag = high_watermark.map(|h| (h - offset).max(0));
                    self.metrics.set_partition(topic, task.id, offset, lag);
                    PartitionStatus {
                        topic: topic.clone(),
                        partition: task.id,
                        offset,
                        high_watermark,
                        lag,
                    }
                })
                .collect();
            tasks.push(TaskStatus {
                task: task.id,
                partitions,
                watermark_ms,
            });
        }
        let mut s = lock(&self.status);
        s.phase = phase;
        s.stopped = self.stopped;
        s.ready = true;
        s.tasks = tasks;
        s.rates = Rates {
            input_per_sec: progress.input_per_sec,
            output_per_sec: progress.output_per_sec,
        };
        s.busy_ratio = progress.busy_ratio;
        s.records_in = self.records_in;
        s.records_out = self.records_out;
    }
}

/// Fires the task's remaining due timers chunk by chunk, sending each
/// chunk's outputs before the next, so that a watermark jump over many
/// windows never holds all their results in memory. Returns whether it
/// sent anything.
fn drain_timers(
    task: &mut Task,
    producer: &OutputProducer,
    to: &Destinations,
    heartbeat: &Heartbeat,
) -> Result<bool, WorkerError> {
    let mut sent = false;
    while task.processor.has_due_timers() {
        sent |= emit(task, producer, to)? > 0;
        heartbeat.beat();
        task.processor
            .fire_due_timers(&mut task.outputs)
            .map_err(|e| WorkerError::Task {
                task: task.id,
                message: e.to_string(),
            })?;
    }
    Ok(sent)
}

/// Why a savepoint failed.
enum SavepointFailure {
    /// Its checkpoint failed: the worker fails.
    Checkpoint(WorkerError),
    /// Copying the committed checkpoint failed.
    Copy(Box<SavepointError>),
}
