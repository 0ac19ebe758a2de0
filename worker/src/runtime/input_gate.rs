//! Which of a worker's input partitions the consumer reads. Two things hold
//! inputs back:
//!
//! - a stop-with-savepoint's drain pauses every source and join topic of
//!   every task (the repartition topic goes on) until it completes or is
//!   given up;
//! - a task reading its join's table up to where the table stood at start
//!   keeps its source partitions paused until then, so that a record is
//!   joined with the whole table, not with the rows read by chance before it.
//!
//! The two overlap: a drain given up while a table is still being read
//! resumes that table (else it never ends) but not the task's sources. The
//! gate decides; the event loop pauses and resumes the partitions it names,
//! as (index into the worker's topics, partition).

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

/// Decides which input partitions are paused.
#[derive(Debug)]
pub(super) struct InputGate {
    /// The worker's topics before this index are the source topics.
    sources: usize,
    /// The worker's topics before this index are its inputs: the sources,
    /// then a join's topic (the repartition topic, if any, comes after).
    inputs: usize,
    /// Tasks still reading their table.
    loading: Vec<TableLoad>,
    /// A drain paused every input.
    drain_paused: bool,
}

impl InputGate {
    /// A gate for a worker whose first `sources` topics are sources and
    /// first `inputs` topics are inputs, with the tasks in `loading` still
    /// to read their tables.
    pub fn new(sources: usize, inputs: usize, loading: Vec<TableLoad>) -> InputGate {
        InputGate {
            sources,
            inputs,
            loading,
            drain_paused: false,
        }
    }

    /// The tasks still reading their table.
    pub fn loading(&self) -> &[TableLoad] {
        &self.loading
    }

    /// The partitions to pause at start: the sources of the tasks still
    /// reading their table.
    pub fn paused_at_start(&self) -> Vec<InputPartition> {
        self.loading
            .iter()
            .flat_map(|load| (0..self.sources).map(move |topic| (topic, load.task)))
            .collect()
    }

    /// A drain starts: every input partition of `tasks` pauses.
    pub fn pause_for_drain(&mut self, tasks: &[i32]) -> Vec<InputPartition> {
        self.drain_paused = true;
        self.inputs_of(tasks, |_| true)
    }

    /// The drain ended without stopping the worker: every input of the
    /// tasks done with their table resumes, and of the tasks still reading
    /// it, the table. Nothing when no drain paused the inputs.
    pub fn resume_after_drain(&mut self, tasks: &[i32]) -> Vec<InputPartition> {
        if !std::mem::take(&mut self.drain_paused) {
            return Vec::new();
        }
        let loading = &self.loading;
        let sources = self.sources;
        self.inputs_of(tasks, |(topic, task)| {
            loading
                .iter()
                .find(|load| load.task == task)
                .is_none_or(|load| topic >= sources && topic == load.topic_index)
        })
    }

    /// Ends the loads whose table partition `position` has reached the end
    /// it had at start, and returns their tasks' source partitions to
    /// resume (none while a drain holds them: it resumes them when it
    /// ends). `position` is where the consumer stands on a table partition
    /// (`None` if it does not know yet): past the last row read, and past
    /// transaction markers, which are never delivered as rows.
    pub fn finish_loads(
        &mut self,
        position: impl Fn(&TableLoad) -> Option<i64>,
    ) -> Vec<InputPartition> {
        let mut resumed = Vec::new();
        self.loading.retain(|load| {
            let done = position(load).is_some_and(|p| p >= load.until);
            if done {
                tracing::info!(
                    task = load.task,
                    until = load.until,
                    "join table read: the task's sources resume"
                );
                resumed.push(load.task);
            }
            !done
        });
        if self.drain_paused {
            return Vec::new();
        }
        resumed
            .into_iter()
            .flat_map(|task| (0..self.sources).map(move |topic| (topic, task)))
            .collect()
    }

    /// The input partitions of `tasks` that `keep` selects.
    fn inputs_of(
        &self,
        tasks: &[i32],
        keep: impl Fn(InputPartition) -> bool,
    ) -> Vec<InputPartition> {
        tasks
            .iter()
            .flat_map(|&task| (0..self.inputs).map(move |topic| (topic, task)))
            .filter(|&partition| keep(partition))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source topic (0), a table topic (1); tasks 0 and 1, task 1 still
    /// reading rows 0..10 of its table.
    fn gate() -> InputGate {
        InputGate::new(
            1,
            2,
            vec![TableLoad {
                task: 1,
                topic_index: 1,
                until: 10,
            }],
        )
    }

    #[test]
    fn a_task_reading_its_table_starts_with_its_sources_paused() {
        assert_eq!(gate().paused_at_start(), vec![(0, 1)]);
    }

    #[test]
    fn a_drain_given_up_while_a_table_is_read_resumes_the_table_but_not_its_tasks_sources() {
        let mut gate = gate();
        assert_eq!(
            gate.pause_for_drain(&[0, 1]),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
        // Task 0 gets everything back; task 1 its table only, else the
        // table never ends and its sources stay paused for good.
        assert_eq!(
            gate.resume_after_drain(&[0, 1]),
            vec![(0, 0), (1, 0), (1, 1)]
        );
        assert_eq!(
            gate.finish_loads(|_| Some(10)),
            vec![(0, 1)],
            "once the table is read, the task's sources resume"
        );
        assert!(gate.loading().is_empty());
    }

    #[test]
    fn a_table_read_during_a_drain_leaves_its_sources_to_the_drains_end() {
        let mut gate = gate();
        gate.pause_for_drain(&[0, 1]);
        assert_eq!(gate.finish_loads(|_| Some(10)), vec![]);
        assert_eq!(
            gate.resume_after_drain(&[0, 1]),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
        assert_eq!(gate.resume_after_drain(&[0, 1]), vec![], "resumed once");
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
        assert_eq!(gate.finish_loads(|_| Some(10)), vec![(0, 1)]);
    }
}
