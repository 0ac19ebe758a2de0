//! Start-up of a worker: storage and Kafka clients, the repartition topic,
//! then the restore through the checkpoint coordinator (fence first), the
//! state compatibility check, and the assignment of every owned task's
//! partitions at the restored offsets.

use std::collections::HashMap;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use weir_crds::job::StartingOffsets;

use super::input_gate::{InputGate, TableLoad, partition_list};
use super::{Destinations, Running, Task, WorkerError, duration_ms, lock, task_number, throttle};
use crate::checkpoint::compatibility::{self, IncompatibleState};
use crate::checkpoint::coordinator::{CheckpointCoordinator, PipelineRecord, RestoreTarget};
use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::restore::{RestoredFrom, RestoredTask};
use crate::checkpoint::savepoint;
use crate::checkpoint::storage::open_store;
use crate::control::progress::ProgressWindow;
use crate::control::status::WorkerPhase;
use crate::engine::pipeline::Pipeline;
use crate::engine::record::{Counters, Outputs};
use crate::engine::task::{TaskProcessor, TaskSnapshot};
use crate::kafka::client::{self, KafkaSetupError};
use crate::kafka::lag::LagMonitor;
use crate::kafka::output::{KafkaGroupOffsets, KafkaOutput};
use crate::kafka::repartition::{self, Purger};
use crate::kafka::source_queue::SourceQueue;
use crate::state::{StateOptions, TaskState};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Timeout of metadata, watermark and committed-offset queries.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Running {
    /// Opens storage and Kafka, restores every owned task and assigns its
    /// partitions.
    pub(super) fn start(
        ctx: super::Context,
        rt: tokio::runtime::Runtime,
    ) -> Result<Self, WorkerError> {
        let started = Instant::now();
        let super::Context {
            config,
            metrics,
            status,
            commands,
            cancel,
            kill,
        } = ctx;
        let spec = &config.spec;
        let (store, base) = open_store(&spec.checkpoint.storage)?;
        let layout = JobLayout::new(&base, &config.namespace, &config.job_name);
        let mut pipeline =
            Pipeline::compile(spec).map_err(|e| WorkerError::Pipeline(e.to_string()))?;

        let base_config =
            client::base_config(&spec.kafka, config.kafka_credentials_dir.as_deref())?;
        let consumer: BaseConsumer =
            BaseConsumer::from_config(&client::consumer_config(&base_config, &config.group_id()))
                .map_err(|source| KafkaSetupError::Client {
                what: "consumer",
                source,
            })?;
        let consumer = Arc::new(consumer);
        // The source topics, then a join's topic: task t reads partition t
        // of each.
        let mut topics = spec.input_topics();
        let partitions = client::source_partitions(&consumer, &topics, QUERY_TIMEOUT)?;
        let source_topics = topics.len();
        let repartition_topic = pipeline.repartition_step().map(|step| {
            repartition::topic_name(
                &config.namespace,
                &config.job_name,
                &pipeline.steps()[step].name,
            )
        });
        if let Some(topic) = &repartition_topic {
            rt.block_on(repartition::ensure_topic(
                &client::metadata_config(&base_config),
                topic,
                partitions,
                QUERY_TIMEOUT,
            ))?;
            topics.push(topic.clone());
        }
        let repartition_input = repartition_topic.as_ref().map(|_| source_topics);
        if repartition_topic.is_some() && pipeline.idle_timeout() == 0 {
            tracing::warn!(
                "source.watermark.idleTimeout is 0s and records go through a repartition topic: a source partition without records holds back every window of the job, not only its own task's"
            );
        }
        // Upstream tasks repeat their watermark report at every checkpoint;
        // one not repeated for three intervals no longer counts as idle.
        let idle_lease_ms = spec
            .checkpoint
            .interval
            .as_millis()
            .saturating_mul(3)
            .max(10_000);
        let owned = client::owned_tasks(partitions, config.ordinal, config.parallelism);
        tracing::info!(
            job = %config.job_name,
            ordinal = config.ordinal,
            parallelism = config.parallelism,
            generation = config.generation,
            partitions,
            tasks = ?owned,
            "starting worker"
        );
        let group = consumer.group_metadata().ok_or(WorkerError::Consumer {
            operation: "group metadata",
            source: rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail),
        })?;

        // Fence, then choose and download every task's restore point.
        let producer_config = match spec.guarantee {
            weir_crds::job::Guarantee::ExactlyOnce => {
                client::with_transaction_timeout(&base_config, spec.checkpoint.interval.as_millis())
            }
            weir_crds::job::Guarantee::AtLeastOnce => base_config.clone(),
        };
        let transactional_id = {
            let config = config.clone();
            move |task: u32| config.transactional_id(task)
        };
        let mut output = KafkaOutput::new(
            spec.guarantee,
            producer_config,
            transactional_id,
            consumer.clone(),
            group,
        );
        let mut coordinator = CheckpointCoordinator::new(
            store,
            layout,
            config.generation,
            config.restore_from.clone(),
            usize::try_from(config.spec.checkpoint.retain).unwrap_or(1),
        );
        let targets: Vec<RestoreTarget> = owned
            .iter()
            .map(|&t| RestoreTarget {
                task: task_number(t),
                partitions: topics.iter().map(|topic| (topic.clone(), t)).collect(),
                db_dir: task_dir(&config.state_dir, t).join("db"),
            })
            .collect();
        for target in &targets {
            let dir = task_dir(&config.state_dir, target.task as i32);
            std::fs::create_dir_all(&dir)
                .map_err(|source| WorkerError::StateDir { dir, source })?;
        }
        let group_offsets = KafkaGroupOffsets {
            consumer: &consumer,
            timeout: QUERY_TIMEOUT,
        };
        let restore = rt.block_on(coordinator.restore(&mut output, &group_offsets, &targets))?;

        let restored_tasks: Vec<&RestoredTask> = restore.tasks.iter().flatten().collect();
        let dropped = bind_restored_state(
            &mut pipeline,
            &restored_tasks,
            u32::try_from(partitions).unwrap_or(0),
            spec.allow_non_restored_state,
        )?;
        let pipeline_record = PipelineRecord {
            steps: pipeline.step_states(),
            source_partitions: u32::try_from(partitions).unwrap_or(0),
        };
        let pipeline = Arc::new(pipeline);

        let state_options = state_options(spec);
        let mut tasks = Vec::with_capacity(owned.len());
        let mut assignment = TopicPartitionList::new();
        let mut restored_from = Vec::new();
        let mut loading_tables = Vec::new();
        let table_join = pipeline.join().is_some_and(|(_, join)| {
            matches!(join.kind, crate::engine::join::JoinKind::Table { .. })
        });
        for (target, restored) in targets.iter().zip(&restore.tasks) {
            let t = target.task as i32;
            if restored.is_none() {
                // Whatever is there is not a committed state: start empty.
                remove_dir(&target.db_dir)?;
            }
            let mut state = TaskState::open(&target.db_dir, &state_options)
                .map_err(|source| WorkerError::State { task: t, source })?;
            for &slot in &dropped {
                state
                    .delete_step_state(slot)
                    .map_err(|source| WorkerError::State { task: t, source })?;
            }
            let task_count = usize::try_from(partitions).unwrap_or(0);
            let mut processor = TaskProcessor::new(pipeline.clone(), state, task_count)
                .with_idle_lease(idle_lease_ms);
            processor.register_inputs(&spec.source.topics, t);
            rt.block_on(coordinator.register(
                target.task,
                task_dir(&config.state_dir, t).join("staging"),
                restored.as_ref().map(|r| &r.manifest),
            ))?;
            let mut offsets = Vec::with_capacity(topics.len());
            let mut fresh_reports_from = 0;
            let manifest_offset = |topic: &str| {
                restored.as_ref().and_then(|r| {
                    r.manifest
                        .offsets
                        .iter()
                        .find(|o| o.topic == topic && o.partition == t)
                        .map(|o| o.offset)
                })
            };
            for (index, topic) in topics.iter().enumerate() {
                // The repartition topic is read from its start: what tasks
                // wrote before this one started is this task's input.
                // A table is read from its start: its rows are the table.
                let table = table_join && pipeline.join_of(topic).is_some();
                let starting = if index < source_topics && !table {
                    spec.source.starting_offsets
                } else {
                    StartingOffsets::Earliest
                };
                let (low, high) =
                    consumer
                        .fetch_watermarks(topic, t, QUERY_TIMEOUT)
                        .map_err(|source| WorkerError::Consumer {
                            operation: "fetch watermarks",
                            source,
                        })?;
                // A table resumes where its restored rows stop; without
                // them (a fresh start, whatever the group committed, or a
                // join added to the pipeline) it is read again from its
                // start.
                let restored_offset = if table {
                    manifest_offset(topic).filter(|_| {
                        restored
                            .as_ref()
                            .is_some_and(|r| restores_join_state(&pipeline, &r.manifest))
                    })
                } else {
                    manifest_offset(topic)
                };
                let group_offset = if table {
                    None
                } else {
                    restore.group.get(&(topic.clone(), t)).map(|g| g.offset)
                };
                if index >= source_topics
                    && let Some(o) = restored_offset.filter(|o| *o < low)
                {
                    return Err(WorkerError::Task {
                        task: t,
                        message: format!(
                            "the restored checkpoint reads {topic} from offset {o}, but its records before {low} were deleted: they were purged after a newer checkpoint committed, so this restore point is too old for a pipeline with a repartition"
                        ),
                    });
                }
                let offset =
                    client::start_offset(restored_offset, group_offset, starting, low, high);
                assignment
                    .add_partition_offset(topic, t, Offset::Offset(offset))
                    .map_err(|source| WorkerError::Consumer {
                        operation: "build assignment",
                        source,
                    })?;
                if Some(index) == repartition_input {
                    fresh_reports_from = high;
                }
                if table && offset < high {
                    loading_tables.push(TableLoad {
                        task: t,
                        topic_index: index,
                        until: high,
                    });
                }
                offsets.push(offset);
            }
            if let Some(restored) = restored {
                let snapshot: TaskSnapshot =
                    serde_json::from_value(restored.manifest.engine.clone()).map_err(|e| {
                        WorkerError::Task {
                            task: t,
                            message: format!(
                                "invalid engine snapshot in the restored manifest: {e}"
                            ),
                        }
                    })?;
                if pipeline.repartition_step().is_some() && snapshot.upstream.is_none() {
                    return Err(WorkerError::Task {
                        task: t,
                        message: "the restored checkpoint was taken without the repartition this pipeline now has (a keyBy that is not sourcePartitioned), so its keyed state is laid out by source partition: restore it with sourcePartitioned: true, or start without state (restore from none)".to_owned(),
                    });
                }
                processor.restore_meta(snapshot);
                restored_from.push(restored.from.clone());
            }
            tasks.push(Task {
                id: t,
                processor,
                offsets,
                outputs: Outputs::default(),
                counters: metrics.task(t),
                reported: Counters::default(),
                unreported_in: 0,
                last_report: None,
                drained: Default::default(),
                table_read: false,
                tables_forwarded: Default::default(),
                fresh_reports_from,
            });
        }
        // Forwarded before the assignment starts fetching: every record
        // reaches the source queue, none the consumer's own.
        let assigned: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let source = SourceQueue::new(consumer.clone(), &assigned)?;
        consumer
            .assign(&assignment)
            .map_err(|source| WorkerError::Consumer {
                operation: "assign",
                source,
            })?;
        // A join's table first: the sources of a task wait until it is
        // read, and behind a repartition until every task forwarded its
        // rows.
        let inputs = InputGate::new(
            spec.source.topics.len(),
            source_topics,
            tasks.iter().map(|task| task.id).collect(),
            loading_tables,
            repartition_input.is_some() && table_join,
        );
        let waiting = partition_list(&topics, &inputs.paused_at_start());
        if waiting.count() > 0 {
            tracing::info!(loading = ?inputs.loading(), "the sources wait for the join's table");
            consumer
                .pause(&waiting)
                .map_err(|source| WorkerError::Consumer {
                    operation: "pause the sources while the table is read",
                    source,
                })?;
        }

        let mut task_of_partition = vec![None; usize::try_from(partitions).unwrap_or(0)];
        for (i, task) in tasks.iter().enumerate() {
            if let Some(slot) = usize::try_from(task.id)
                .ok()
                .and_then(|p| task_of_partition.get_mut(p))
            {
                *slot = Some(i);
            }
        }

        let restore_duration = started.elapsed();
        metrics.restore_duration.set(restore_duration.as_secs_f64());
        {
            let mut s = lock(&status);
            s.restored_from = Some(describe_restore(&restored_from));
            s.restore_duration_ms = Some(duration_ms(restore_duration));
        }
        let lag = LagMonitor::start(
            &base_config,
            targets
                .iter()
                .flat_map(|t| t.partitions.iter().cloned())
                .collect(),
        );
        let destinations = Destinations {
            sink: spec.sink.topic.clone(),
            dead_letter: spec.dead_letter.as_ref().map(|t| t.topic.clone()),
            late_data: spec.late_data.as_ref().map(|t| t.topic.clone()),
            repartition: repartition_topic.map(|t| (t, partitions)),
            max_message_bytes: base_config
                .get("message.max.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        };
        let purge_floor = match &destinations.repartition {
            Some((topic, _)) => purge_floor(&rt, &coordinator, &owned, topic),
            None => HashMap::new(),
        };
        let purger = match &destinations.repartition {
            Some((topic, _)) => Some(Purger::start(
                &client::metadata_config(&base_config),
                topic.clone(),
            )?),
            None => None,
        };
        let checkpoint_interval = Duration::from_millis(
            u64::try_from(spec.checkpoint.interval.as_millis())
                .unwrap_or(10_000)
                .max(1),
        );
        tracing::info!(
            restored = %describe_restore(&restored_from),
            duration_ms = duration_ms(restore_duration),
            "restored"
        );
        let throttle = config
            .max_records_per_second
            .map(|cap| throttle::Throttle::new(cap, Instant::now()));
        let mut running = Self {
            config,
            rt,
            coordinator,
            output,
            pipeline_record,
            consumer,
            source,
            topics,
            repartition_input,
            purger,
            purge_floor,
            partitions,
            tasks,
            task_of_partition,
            destinations,
            metrics,
            status,
            commands,
            cancel,
            kill,
            last_checkpoint_id: None,
            checkpoint_interval,
            dirty: false,
            pending_reports: false,
            stopped: false,
            draining: None,
            output_ended_for: None,
            inputs,
            table_wait_logged: Instant::now(),
            records_in: 0,
            records_out: 0,
            idle: Duration::ZERO,
            throttle,
            progress: ProgressWindow::new(Duration::from_secs(10)),
            lag,
        };
        running.publish(WorkerPhase::Running);
        Ok(running)
    }
}

/// Per owned task, the lowest repartition offset a complete savepoint
/// restores from. When the savepoints cannot be read, nothing is purged (a
/// warning says so): a purge could make a savepoint unrestorable.
fn purge_floor(
    rt: &tokio::runtime::Runtime,
    coordinator: &CheckpointCoordinator,
    owned: &[i32],
    topic: &str,
) -> HashMap<i32, i64> {
    let tasks: Vec<u32> = owned.iter().map(|&t| task_number(t)).collect();
    match rt.block_on(savepoint::lowest_offsets(
        coordinator.store().as_ref(),
        coordinator.layout(),
        &tasks,
        topic,
    )) {
        Ok(lowest) => lowest
            .into_iter()
            .map(|(task, offset)| (task as i32, offset))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the savepoints: the repartition topic is not purged until the worker restarts");
            owned.iter().map(|&t| (t, 0)).collect()
        }
    }
}

/// The directory of task `t` under the worker's state directory.
fn task_dir(state_dir: &LocalPath, task: i32) -> PathBuf {
    state_dir.join(format!("task-{task}"))
}

/// Checks that the restored tasks' state fits this job and moves the
/// pipeline's stateful steps onto the slots their state uses; returns the
/// slots of removed steps, whose state is to be deleted. Format 1 manifests
/// (no steps recorded) keep the positional slots they were written with.
fn bind_restored_state(
    pipeline: &mut Pipeline,
    restored: &[&RestoredTask],
    partitions: u32,
    allow_non_restored_state: bool,
) -> Result<Vec<u8>, WorkerError> {
    let mut layout: Option<&RestoredTask> = None;
    for task in restored {
        compatibility::check_partitions(task.manifest.source_partitions, partitions)?;
        if task.manifest.format < 2 {
            continue;
        }
        match layout {
            Some(first) if first.manifest.steps != task.manifest.steps => {
                return Err(IncompatibleState::Inconsistent {
                    first: first.manifest.task,
                    other: task.manifest.task,
                }
                .into());
            }
            Some(_) => {}
            None => layout = Some(task),
        }
    }
    let Some(first) = layout else {
        return Ok(Vec::new());
    };
    let binding = compatibility::bind(
        &pipeline.step_states(),
        &first.manifest.steps,
        allow_non_restored_state,
    )?;
    pipeline.bind_state(&binding);
    if !binding.dropped.is_empty() {
        tracing::warn!(
            slots = ?binding.dropped,
            "allowNonRestoredState: dropping the state of steps no longer in the pipeline"
        );
    }
    Ok(binding.dropped)
}

/// Whether `manifest` holds the state of the pipeline's join step (a
/// manifest from before step ids were recorded holds every step's).
fn restores_join_state(
    pipeline: &Pipeline,
    manifest: &crate::checkpoint::manifest::TaskManifest,
) -> bool {
    let Some(id) = pipeline
        .join()
        .and_then(|(index, _)| pipeline.steps()[index].state_id.as_ref())
    else {
        return false;
    };
    manifest.format < 2 || manifest.steps.iter().any(|s| &s.id == id)
}

/// The state options from the spec (block cache and write buffer sizes).
fn state_options(spec: &weir_crds::StreamingJobSpec) -> StateOptions {
    let bytes =
        |q: Option<u64>, default: usize| q.and_then(|b| usize::try_from(b).ok()).unwrap_or(default);
    let block_cache = spec
        .state
        .block_cache_size
        .as_ref()
        .and_then(|q| weir_crds::quantity::to_bytes(q).ok());
    let write_buffer = spec
        .state
        .write_buffer_size
        .as_ref()
        .and_then(|q| weir_crds::quantity::to_bytes(q).ok());
    StateOptions::new(bytes(block_cache, 128 << 20), bytes(write_buffer, 16 << 20))
}

/// How the status report names what the worker restored.
fn describe_restore(from: &[RestoredFrom]) -> String {
    if let Some(RestoredFrom::Savepoint(id)) = from
        .iter()
        .find(|f| matches!(f, RestoredFrom::Savepoint(_)))
    {
        return format!("savepoint:{id}");
    }
    from.iter()
        .filter_map(|f| match f {
            RestoredFrom::Checkpoint(id) => Some(*id),
            RestoredFrom::Savepoint(_) => None,
        })
        .max()
        .map_or_else(|| "none".to_owned(), |id| format!("checkpoint:{id}"))
}

fn remove_dir(dir: &LocalPath) -> Result<(), WorkerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WorkerError::StateDir {
            dir: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::{MANIFEST_FORMAT, StepState, TaskManifest};

    fn restored(task: u32, format: u32, partitions: u32, steps: Vec<StepState>) -> RestoredTask {
        RestoredTask {
            manifest: TaskManifest {
                format,
                checkpoint_id: 1,
                generation: 1,
                task,
                incarnation: "inc".into(),
                created_at: String::new(),
                offsets: Vec::new(),
                engine: serde_json::Value::Null,
                files: Vec::new(),
                origin: "latest".into(),
                steps,
                source_partitions: partitions,
            },
            from: RestoredFrom::Checkpoint(1),
            evidence: None,
            bytes_downloaded: 0,
            files_downloaded: 0,
            duration: Duration::ZERO,
        }
    }

    fn pipeline(steps: &str) -> Pipeline {
        let yaml = format!(
            r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in], eventTime: {{field: ts}}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {steps}
"#
        );
        Pipeline::compile(&serde_yaml::from_str(&yaml).unwrap()).unwrap()
    }

    const COUNTS: &str = r#"[{keyBy: {expr: record.user, sourcePartitioned: true}},
        {window: {type: tumbling, size: 10s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#;

    #[test]
    fn restored_state_follows_its_step_across_an_inserted_filter() {
        let old = pipeline(COUNTS).step_states();
        let mut new = pipeline(&COUNTS.replacen('[', r#"[{filter: "true"}, "#, 1));
        let tasks = [restored(0, MANIFEST_FORMAT, 4, old.clone())];
        let dropped =
            bind_restored_state(&mut new, &tasks.iter().collect::<Vec<_>>(), 4, false).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(new.step_states()[0].slot, old[0].slot);
    }

    #[test]
    fn incompatible_restores_are_refused_with_the_reason() {
        let steps = pipeline(COUNTS).step_states();
        let refuse = |tasks: Vec<RestoredTask>, partitions| {
            let mut p = pipeline(COUNTS);
            bind_restored_state(&mut p, &tasks.iter().collect::<Vec<_>>(), partitions, false)
                .unwrap_err()
                .to_string()
        };
        let err = refuse(vec![restored(0, MANIFEST_FORMAT, 4, steps.clone())], 8);
        assert!(err.contains("written for 4 source partitions"), "{err}");
        let mut other = steps.clone();
        other[0].slot += 1;
        let err = refuse(
            vec![
                restored(0, MANIFEST_FORMAT, 4, steps.clone()),
                restored(1, MANIFEST_FORMAT, 4, other),
            ],
            4,
        );
        assert!(err.contains("tasks 0 and 1"), "{err}");
        // A format 1 manifest keeps its positional slots.
        let mut p = pipeline(COUNTS);
        let legacy = [restored(0, 1, 0, Vec::new())];
        assert!(
            bind_restored_state(&mut p, &legacy.iter().collect::<Vec<_>>(), 4, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(p.step_states(), steps);
    }

    #[test]
    fn restore_descriptions() {
        assert_eq!(describe_restore(&[]), "none");
        assert_eq!(
            describe_restore(&[RestoredFrom::Checkpoint(3), RestoredFrom::Checkpoint(7)]),
            "checkpoint:7"
        );
        assert_eq!(
            describe_restore(&[RestoredFrom::Savepoint("sp".into())]),
            "savepoint:sp"
        );
    }
}
