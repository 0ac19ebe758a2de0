//! The Weir operator: reconciles StreamingJobs into StatefulSets of workers.
//!
//! The reconcile shape is dereference (read the children and pods) ->
//! validate (pure, [`weir_crds::validate`]) -> build the desired objects
//! (pure, [`builders`]) -> server-side apply -> compute the status (pure,
//! [`status`]) -> patch the status. Leader election ([`leader`]) lets two
//! replicas run with one active; [`rbac`] lists every permission the code
//! needs, and [`metrics`] serves `/metrics` and `/healthz`.

#![warn(missing_docs)]

pub mod autoscaler;
pub mod backoff;
pub mod builders;
pub mod controller;
pub mod disposal;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconciler;
pub mod render;
pub mod restart;
pub mod status;

#[cfg(test)]
mod testing;

pub use error::Error;
