//! The Weir operator: reconciles StreamingJobs into StatefulSets of workers.
//!
//! The reconcile shape is dereference (read the children and pods) ->
//! validate (pure, [`mod@weir_crds::validate`]) -> build the desired objects
//! (pure, [`builders`]) -> server-side apply -> compute the status (pure,
//! [`status`]) -> patch the status. Changes that stop the workers
//! (rescale, suspend, resume) and savepoints go through the state machine
//! of [`operation`], kept in `status.operation`, which talks to the workers
//! through [`control`]. Children are applied with the field
//! manager `weir-operator`, the status with its own, `weir-operator-status`
//! ([`reconciler::STATUS_MANAGER`]). A failure that needs a human (a child
//! the API server rejects or another owner controls, a missing Secret) is
//! reported as Ready=False / Degraded=True before it is retried with backoff;
//! a deleted job is cleaned up under a finalizer ([`finalizer`]). Leader
//! election ([`leader`]) lets two replicas run with one active; [`rbac`]
//! lists every permission the code needs, and [`metrics`] serves `/metrics`
//! and `/healthz`.

#![warn(missing_docs)]

pub mod autoscaler;
pub mod backoff;
pub mod builders;
pub mod control;
pub mod controller;
pub mod disposal;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod lag;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod operation;
pub mod rbac;
pub mod reconciler;
pub mod render;
pub mod restart;
pub mod simulate;
pub mod status;

#[cfg(test)]
mod testing;

pub use error::Error;
