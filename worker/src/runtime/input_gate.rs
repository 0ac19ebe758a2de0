//! Which of a worker's input partitions the consumer reads. Two things hold
//! inputs back:
//!
//! - a task reading its join's table up to where the table stood at start
//!   reads nothing else until then (its sources, and its repartition
//!   partition when the join comes after the repartition), so that a record
//!   is joined with the whole table, not with the rows read by chance
//!   before it;
//! - a stop-with-savepoint's drain pauses the source and join topics of
//!   the other tasks (the repartition topic goes on) until it completes or
//!   is given up.
//!
//! A drain leaves a table being read alone: the task's sources are paused
//! already, and its repartition partition, which the drain must read to
//! complete, waits for the table. Pausing the table too would stall both
//! until the drain is given up, and a drain given up must not leave it
//! paused. The gate decides; the event loop pauses and resumes the
//! partitions it names, as (index into the worker's topics, partition).

use rdkafka::TopicPartitionList;

/// A task reading its join's table up to where it stood at start before its
/// source partitions.
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

/// Decides which input partitions are paused.
#[derive(Debug)]
pub(super) struct InputGate {
    /// The worker's topics before this index are the source topics.
    sources: usize,
    /// The worker's topics before this index are its inputs: the sources,
    /// then a join's topic.
    inputs: usize,
    /// The index of the repartition topic, if the pipeline has one.
    repartition: Option<usize>,
    /// The worker's tasks.
    tasks: Vec<i32>,
    /// Tasks still reading their table.
    loading: Vec<TableLoad>,
    /// A drain paused every input.
    drain_paused: bool,
}

impl InputGate {
    /// A gate for a worker whose first `sources` topics are sources and
    /// first `inputs` topics are inputs, the repartition topic (if any) at
    /// `repartition`, and `tasks`, those in `loading` still to read their
    /// tables.
    pub fn new(
        sources: usize,
        inputs: usize,
        repartition: Option<usize>,
        tasks: Vec<i32>,
        loading: Vec<TableLoad>,
    ) -> InputGate {
        InputGate {
            sources,
            inputs,
            repartition,
            tasks,
            loading,
            drain_paused: false,
        }
    }

    /// The tasks still reading their table.
    pub fn loading(&self) -> &[TableLoad] {
        &self.loading
    }

    /// The partitions to pause at start: all but the table of the tasks
    /// still reading their table.
    pub fn paused_at_start(&self) -> Vec<InputPartition> {
        self.loading
            .iter()
            .flat_map(|load| self.held_for_table(load.task))
            .collect()
    }

    /// A drain starts: the source and join topics of the tasks pause, but
    /// for those reading their table (already held back but for it).
    pub fn pause_for_drain(&mut self) -> Vec<InputPartition> {
        self.drain_paused = true;
        self.inputs_of_tasks()
    }

    /// The drain ended without stopping the worker: the source and join
    /// topics of the tasks resume, but for those still reading their table
    /// (whose sources wait for it). Nothing when no drain paused them.
    pub fn resume_after_drain(&mut self) -> Vec<InputPartition> {
        if !std::mem::take(&mut self.drain_paused) {
            return Vec::new();
        }
        self.inputs_of_tasks()
    }

    /// Ends the loads whose table partition `position` has reached the end
    /// it had at start, and returns what their tasks read again: their
    /// repartition partition, and their sources unless a drain holds them
    /// (it resumes them when it ends). `position` is where the consumer
    /// stands on a table partition (`None` if it does not know yet): past
    /// the last row read, and past transaction markers, which are never
    /// delivered as rows.
    pub fn finish_loads(
        &mut self,
        position: impl Fn(&TableLoad) -> Option<i64>,
    ) -> Vec<InputPartition> {
        let mut finished = Vec::new();
        self.loading.retain(|load| {
            let done = position(load).is_some_and(|p| p >= load.until);
            if done {
                tracing::info!(
                    task = load.task,
                    until = load.until,
                    "join table read: the task's other inputs resume"
                );
                finished.push(load.task);
            }
            !done
        });
        let drained = self.drain_paused;
        finished
            .into_iter()
            .flat_map(|task| self.held_for_table(task))
            .filter(|&(topic, _)| !drained || Some(topic) == self.repartition)
            .collect()
    }

    /// What task `task` does not read while it reads its table: its
    /// sources and its repartition partition.
    fn held_for_table(&self, task: i32) -> impl Iterator<Item = InputPartition> + use<> {
        (0..self.sources)
            .chain(self.repartition)
            .map(move |topic| (topic, task))
    }

    /// The source and join partitions of the tasks but those still reading
    /// their table.
    fn inputs_of_tasks(&self) -> Vec<InputPartition> {
        self.tasks
            .iter()
            .filter(|&&task| !self.loading.iter().any(|load| load.task == task))
            .flat_map(|&task| (0..self.inputs).map(move |topic| (topic, task)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source topic (0), a table topic (1), the repartition topic (2);
    /// tasks 0 and 1, task 1 still reading rows 0..10 of its table.
    fn gate() -> InputGate {
        InputGate::new(
            1,
            2,
            Some(2),
            vec![0, 1],
            vec![TableLoad {
                task: 1,
                topic_index: 1,
                until: 10,
            }],
        )
    }

    #[test]
    fn a_task_reading_its_table_reads_nothing_else() {
        assert_eq!(gate().paused_at_start(), vec![(0, 1), (2, 1)]);
        let without_repartition = InputGate::new(1, 2, None, vec![0, 1], gate().loading().to_vec());
        assert_eq!(without_repartition.paused_at_start(), vec![(0, 1)]);
    }

    #[test]
    fn a_drain_leaves_a_table_being_read_alone() {
        let mut gate = gate();
        // Task 1's table goes on: the drain needs its repartition
        // partition, which waits for the table.
        assert_eq!(gate.pause_for_drain(), vec![(0, 0), (1, 0)]);
        // Given up: task 0 reads again; task 1's sources still wait.
        assert_eq!(gate.resume_after_drain(), vec![(0, 0), (1, 0)]);
        assert_eq!(gate.resume_after_drain(), vec![], "resumed once");
        assert_eq!(
            gate.finish_loads(|_| Some(10)),
            vec![(0, 1), (2, 1)],
            "once the table is read, the task's sources and repartition partition resume"
        );
        assert!(gate.loading().is_empty());
    }

    #[test]
    fn a_table_read_during_a_drain_leaves_its_sources_to_the_drains_end() {
        let mut gate = gate();
        gate.pause_for_drain();
        // The repartition partition resumes (the drain must read it), the
        // sources stay paused until the drain ends.
        assert_eq!(gate.finish_loads(|_| Some(10)), vec![(2, 1)]);
        assert_eq!(
            gate.resume_after_drain(),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
    }

    #[test]
    fn a_load_ends_when_the_position_reaches_the_start_time_end() {
        let mut gate = gate();
        // The last row is at offset 8 and a transaction's commit marker at
        // 9: the consumer's position (10) is past both, although no row
        // at 9 is ever delivered.
        assert_eq!(gate.finish_loads(|_| Some(9)), vec![]);
        assert_eq!(gate.finish_loads(|_| None), vec![]);
        assert_eq!(gate.loading().len(), 1);
        assert_eq!(gate.finish_loads(|_| Some(10)), vec![(0, 1), (2, 1)]);
    }
}
