//! The StreamingJob API of Weir (group `weir.dev`, version `v1alpha1`): the
//! resource types, their defaults, the validation every component runs, the
//! expression language of pipelines and the CustomResourceDefinition.

pub mod crd;
pub mod duration;
pub mod expr;
pub mod job;
pub mod quantity;
pub mod schema;
pub mod status;
pub mod validate;

pub use duration::Duration;
pub use job::{StreamingJob, StreamingJobSpec};
pub use status::StreamingJobStatus;
pub use validate::{Problem, validate};
