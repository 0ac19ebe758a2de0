//! Count windows: every `slide` events of a key close a window over its
//! last `size` events (`size == slide`: tumbling), in the order the task
//! reads them. A key keeps the accumulators of `size / slide` panes of
//! `slide` events each; a window's result merges them, so an event costs
//! one accumulator update however many windows it falls into.

use super::windows::{Emitted, Form, empty_accumulators, result, update};
use super::*;
use crate::engine::result_text::COUNT_WINDOW_COLUMNS;

impl TaskProcessor {
    /// Adds a record's `inputs` to the count windows of `key` and, when
    /// that makes a window full, appends its result to `emitted`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn count_update(
        &mut self,
        step: u8,
        key: &[u8],
        form: Form,
        (size, slide): (u64, u64),
        fields: &[AggregateField],
        inputs: &[Input],
        time: Option<i64>,
        emitted: &mut Vec<(Emitted, Option<i64>)>,
    ) -> Result<(), TaskError> {
        self.payload.clear();
        keyed_payload(&mut self.payload, key, None);
        state_key(&mut self.scratch, step, &self.payload);
        let slot = self.state.get_mut(&self.scratch)?;
        let (mut events, mut panes) = match slot.take() {
            Some(StateValue::CountPanes { events, panes }) => (events, panes),
            _ => (0, Vec::new()),
        };
        if events.is_multiple_of(slide) || panes.is_empty() {
            panes.push(empty_accumulators(fields));
        }
        if let Some(pane) = panes.last_mut() {
            update(pane, inputs, time.unwrap_or(i64::MIN));
        }
        events += 1;
        if events.is_multiple_of(slide) {
            let mut window = empty_accumulators(fields);
            for pane in &panes {
                window.merge(pane);
            }
            let seq = i64::try_from(events / slide).unwrap_or(i64::MAX);
            emitted.push((
                result(
                    form,
                    key,
                    &[(COUNT_WINDOW_COLUMNS[0], seq)],
                    &window,
                    fields,
                ),
                time,
            ));
            // The next window covers the newest size/slide - 1 full panes.
            let per_window = usize::try_from(size / slide).unwrap_or(usize::MAX);
            if panes.len() >= per_window {
                panes.remove(0);
            }
        }
        *slot = Some(StateValue::CountPanes { events, panes });
        Ok(())
    }
}
