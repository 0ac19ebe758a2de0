//! How a worker is observed and driven: the HTTP control API, the status
//! report, Prometheus metrics and the progress window behind the rates.

pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod progress;
pub mod status;
