//! The StreamingJob API of Weir (group `weir.dev`, version `v1alpha1`): the
//! resource types, their defaults, the validation every component runs, the
//! expression language of pipelines and the CustomResourceDefinition.

pub mod crd;
pub mod duration;
pub mod job;
pub mod status;

pub use duration::Duration;
pub use job::{StreamingJob, StreamingJobSpec};
pub use status::StreamingJobStatus;
