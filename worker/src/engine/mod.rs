//! The stream-processing engine: compiled pipelines and the operators that
//! run them over one task's records, with no I/O besides the task's state.

pub mod aggregate;
pub mod event_time;
mod flat_json;
pub mod hll;
pub mod join;
pub mod pattern;
pub mod pipeline;
pub mod record;
pub mod result_text;
pub mod task;
pub mod watermark;
pub mod window;
