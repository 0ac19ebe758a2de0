//! Which of a worker's input partitions the consumer reads. Two things hold
//! a task's sources back:
//!
//! - the task's join table, so that at the job's start a record is joined
//!   with the whole table, not with the rows read by chance before it. The
//!   task first reads its partition of the table to where it stood at
//!   start. When the pipeline has a repartition, rows reach their task
//!   through the repartition topic, from whichever task read them: each
//!   task then also waits until every task has reported on the repartition
//!   topic, since it started, that it read and forwarded its partition of
//!   the table. A task sends that report only after its rows are written,
//!   and its own records only after every report: so after a start of the
//!   whole job, the records tasks send come after every row on every
//!   partition of the repartition topic (records sent before the start,
//!   replayed from it, come before them). A task restarted alone waits for
//!   its peers' reports, not for rows they have not read yet: once
//!   running, rows and records meet in the order they arrive;
//! - a stop-with-savepoint's drain pauses the source and join topics of
//!   the tasks (the repartition topic goes on) until it completes or is
//!   given up.
//!
//! A drain leaves a task still reading its partition of the table alone:
//! its sources are paused already, and pausing its table would stall the
//! load and leave it paused if the drain is given up. Once read, that
//! partition pauses until the drain ends, so the task forwards no row after
//! the report that ends its output for the drain (which it sends only then).
//! The repartition topic is never held: it carries the rows. The gate
//! decides; the event loop pauses and resumes the partitions it names, as
//! (index into the worker's topics, partition).

use rdkafka::TopicPartitionList;

/// A task reading its partition of its join's table up to where it stood
/// at start before its source partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TableLoad {
    /// The task (its partition number).
    pub task: i32,
    /// Index of the table topic in the worker's topics.
    pub topic_index: usize,
    /// The table partition's end offset at start.
    pub until: i64,
}

/// An input partition: (index into the worker's topics, partition).
pub(super) type InputPartition = (usize, i32);

/// `partitions` of the worker's `topics`, as the consumer takes them.
pub(super) fn partition_list(
    topics: &[String],
    partitions: &[InputPartition],
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for &(topic, partition) in partitions {
        list.add_partition(&topics[topic], partition);
    }
    list
}

/// What ending table loads asks of the worker.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LoadsEnded {
    /// With forwarding, the tasks to report their partition of the table
    /// read, once the rows they forwarded are written.
    pub report: Vec<i32>,
    /// Table partitions read during a drain, to pause until it ends.
    pub pause: Vec<InputPartition>,
}

/// Decides which input partitions are paused.
#[derive(Debug)]
pub(super) struct InputGate {
    /// The worker's topics before this index are the source topics.
    sources: usize,
    /// The worker's topics before this index are its inputs: the sources,
    /// then a join's topic.
    inputs: usize,
    /// The worker's tasks.
    tasks: Vec<i32>,
    /// Tasks still reading their partition of the table.
    loading: Vec<TableLoad>,
    /// Tasks that read their partition of the table, not yet reported.
    read: Vec<i32>,
    /// Tasks that read their partition of the table and wait for every
    /// task's rows (with forwarding) before their sources.
    waiting: Vec<i32>,
    /// Whether rows reach their task through the repartition topic.
    forwarded: bool,
    /// A drain paused every input.
    drain_paused: bool,
}

impl InputGate {
    /// A gate for a worker whose first `sources` topics are sources and
    /// first `inputs` topics are inputs, with `tasks`, those in `loading`
    /// still to read their partition of the table. With `forwarded`, every
    /// task waits for the rows forwarded through the repartition topic,
    /// even one with nothing to read itself.
    pub fn new(
        sources: usize,
        inputs: usize,
        tasks: Vec<i32>,
        loading: Vec<TableLoad>,
        forwarded: bool,
    ) -> InputGate {
        let read: Vec<i32> = if forwarded {
            tasks
                .iter()
                .copied()
                .filter(|&task| !loading.iter().any(|load| load.task == task))
                .collect()
        } else {
            Vec::new()
        };
        InputGate {
            sources,
            inputs,
            read,
            waiting: Vec::new(),
            tasks,
            loading,
            forwarded,
            drain_paused: false,
        }
    }

    /// Whether some task still waits for its table.
    pub fn holds_any(&self) -> bool {
        !self.loading.is_empty() || !self.read.is_empty() || !self.waiting.is_empty()
    }

    /// The tasks still reading their partition of the table.
    pub fn loading(&self) -> &[TableLoad] {
        &self.loading
    }

    /// The tasks that read their partition of the table and wait for the
    /// other tasks' rows.
    pub fn waiting(&self) -> &[i32] {
        &self.waiting
    }

    /// The partitions to pause at start: the sources of the tasks waiting
    /// for their table.
    pub fn paused_at_start(&self) -> Vec<InputPartition> {
        self.tasks
            .iter()
            .filter(|&&task| self.holds(task))
            .flat_map(|&task| self.sources_of(task))
            .collect()
    }

    /// A drain starts: the source and join topics of the tasks pause, but
    /// for those still reading their partition of the table, and but for
    /// the sources held for a table already.
    pub fn pause_for_drain(&mut self) -> Vec<InputPartition> {
        self.drain_paused = true;
        self.drained_inputs()
    }

    /// The drain ended without stopping the worker: what it paused
    /// resumes, with the table partitions read during it, but for the
    /// sources still held for a table. Nothing when no drain paused them.
    pub fn resume_after_drain(&mut self) -> Vec<InputPartition> {
        if !std::mem::take(&mut self.drain_paused) {
            return Vec::new();
        }
        self.drained_inputs()
    }

    /// Ends the loads whose table partition `position` has reached the end
    /// it had at start. `position` is where the consumer stands on a table
    /// partition (`None` if it does not know yet): past the last row read,
    /// and past transaction markers, which are never delivered as rows.
    /// With forwarding, the tasks with nothing to read at start are
    /// reported read on the first call.
    pub fn finish_loads(&mut self, position: impl Fn(&TableLoad) -> Option<i64>) -> LoadsEnded {
        let mut read = std::mem::take(&mut self.read);
        let mut pause = Vec::new();
        let (sources, inputs, drained) = (self.sources, self.inputs, self.drain_paused);
        self.loading.retain(|load| {
            let done = position(load).is_some_and(|p| p >= load.until);
            if done {
                tracing::info!(
                    task = load.task,
                    until = load.until,
                    "join table partition read"
                );
                read.push(load.task);
                if drained {
                    pause.extend((sources..inputs).map(|topic| (topic, load.task)));
                }
            }
            !done
        });
        self.waiting.extend(&read);
        if !self.forwarded {
            read.clear();
        }
        LoadsEnded {
            report: read,
            pause,
        }
    }

    /// Opens the tasks whose table is complete — without forwarding once
    /// their partition is read, with it once `rows_in` says every task's
    /// rows reached them too — and returns their sources to resume, but
    /// for those a drain holds (it resumes them when it ends).
    pub fn open(&mut self, rows_in: impl Fn(i32) -> bool) -> Vec<InputPartition> {
        let forwarded = self.forwarded;
        let mut opened = Vec::new();
        self.waiting.retain(|&task| {
            let complete = !forwarded || rows_in(task);
            if complete {
                tracing::info!(task, "join table complete: the task's sources resume");
                opened.push(task);
            }
            !complete
        });
        if self.drain_paused {
            return Vec::new();
        }
        opened
            .into_iter()
            .flat_map(|task| self.sources_of(task))
            .collect()
    }

    /// Whether `task` still reads its partition of the table.
    pub fn is_loading(&self, task: i32) -> bool {
        self.loading.iter().any(|load| load.task == task)
    }

    /// Whether `task` waits for its table.
    pub fn holds(&self, task: i32) -> bool {
        self.is_loading(task) || self.read.contains(&task) || self.waiting.contains(&task)
    }

    /// The source partitions of `task`.
    fn sources_of(&self, task: i32) -> impl Iterator<Item = InputPartition> + use<> {
        (0..self.sources).map(move |topic| (topic, task))
    }

    /// What a drain holds: the source and join partitions of the open
    /// tasks, and the join partitions of those that read their partition
    /// of the table and wait for the rest (their sources are held).
    fn drained_inputs(&self) -> Vec<InputPartition> {
        self.tasks
            .iter()
            .filter(|&&task| !self.is_loading(task))
            .flat_map(|&task| {
                let first = if self.holds(task) { self.sources } else { 0 };
                (first..self.inputs).map(move |topic| (topic, task))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source topic (0), a table topic (1); tasks 0 and 1, task 1
    /// still reading rows 0..10 of its partition of the table.
    fn gate(forwarded: bool) -> InputGate {
        InputGate::new(
            1,
            2,
            vec![0, 1],
            vec![TableLoad {
                task: 1,
                topic_index: 1,
                until: 10,
            }],
            forwarded,
        )
    }

    fn report(tasks: &[i32]) -> LoadsEnded {
        LoadsEnded {
            report: tasks.to_vec(),
            pause: Vec::new(),
        }
    }

    #[test]
    fn without_forwarding_a_task_reads_its_sources_once_its_partition_is_read() {
        let mut gate = gate(false);
        assert_eq!(gate.paused_at_start(), vec![(0, 1)]);
        assert_eq!(
            gate.finish_loads(|_| Some(10)),
            report(&[]),
            "nothing to report"
        );
        assert_eq!(gate.open(|_| false), vec![(0, 1)]);
        assert!(!gate.holds_any());
    }

    #[test]
    fn with_forwarding_every_task_waits_for_every_tasks_rows() {
        let mut gate = gate(true);
        // Task 0 has nothing to read itself, but rows for it may still
        // come from task 1.
        assert_eq!(gate.paused_at_start(), vec![(0, 0), (0, 1)]);
        assert_eq!(
            gate.finish_loads(|_| None),
            report(&[0]),
            "task 0 reports at once"
        );
        assert_eq!(gate.finish_loads(|_| None), report(&[]), "and once");
        assert!(gate.open(|_| false).is_empty());
        assert_eq!(gate.finish_loads(|_| Some(10)), report(&[1]));
        // Task 0 has every task's report; task 1 not yet.
        assert_eq!(gate.open(|task| task == 0), vec![(0, 0)]);
        assert!(gate.holds_any());
        assert_eq!(gate.open(|_| true), vec![(0, 1)]);
        assert!(!gate.holds_any());
    }

    #[test]
    fn a_drain_given_up_leaves_a_table_being_read_alone() {
        let mut gate = gate(true);
        assert_eq!(gate.finish_loads(|_| None), report(&[0]));
        // Task 0 waits for task 1's rows: its table pauses (its sources
        // are held already); task 1's table goes on.
        assert_eq!(gate.pause_for_drain(), vec![(1, 0)]);
        // Given up: task 0's table reads again; the sources still wait.
        assert_eq!(gate.resume_after_drain(), vec![(1, 0)]);
        assert!(gate.resume_after_drain().is_empty(), "resumed once");
        assert_eq!(
            gate.finish_loads(|_| Some(10)),
            report(&[1]),
            "nothing paused"
        );
        assert_eq!(
            gate.open(|_| true),
            vec![(0, 0), (0, 1)],
            "once the table is complete, the sources resume"
        );
    }

    #[test]
    fn a_table_read_during_a_drain_pauses_until_the_drains_end() {
        let mut gate = gate(true);
        gate.finish_loads(|_| None);
        // Task 0 waits for task 1's rows: its sources are held, its table
        // pauses.
        assert_eq!(gate.pause_for_drain(), vec![(1, 0)]);
        // Task 1's table, read now, pauses too: it forwards nothing after
        // its report ending the drain.
        assert_eq!(
            gate.finish_loads(|_| Some(10)),
            LoadsEnded {
                report: vec![1],
                pause: vec![(1, 1)],
            }
        );
        assert!(
            gate.open(|_| true).is_empty(),
            "the drain holds the sources"
        );
        assert!(!gate.holds_any());
        assert_eq!(
            gate.resume_after_drain(),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
    }

    #[test]
    fn a_drain_does_not_resume_sources_still_held_for_a_table() {
        let mut gate = gate(true);
        gate.finish_loads(|_| None);
        gate.pause_for_drain();
        gate.finish_loads(|_| Some(10));
        assert_eq!(
            gate.resume_after_drain(),
            vec![(1, 0), (1, 1)],
            "the tables resume, the sources wait for every task's rows"
        );
        assert_eq!(gate.open(|_| true), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn a_load_ends_when_the_position_reaches_the_start_time_end() {
        let mut gate = gate(false);
        // The last row is at offset 8 and a transaction's commit marker at
        // 9: the consumer's position (10) is past both, although no row
        // at 9 is ever delivered.
        gate.finish_loads(|_| Some(9));
        gate.finish_loads(|_| None);
        assert_eq!(gate.loading().len(), 1);
        gate.finish_loads(|_| Some(10));
        assert!(gate.loading().is_empty());
        assert_eq!(gate.open(|_| false), vec![(0, 1)]);
    }
}
