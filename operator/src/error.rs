//! Errors of a reconciliation.

use crate::builders::BuildError;

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The StreamingJob has no namespace (it is a namespaced resource, so the
    /// API server never sends one without).
    #[error("StreamingJob {0} has no namespace")]
    MissingNamespace(String),
    /// The desired objects could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A request to the API server failed.
    #[error("cannot {action} {kind} {namespace}/{name}: {source}")]
    Kube {
        /// What was attempted (get, list, apply, patch status).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object (or label selector of a list).
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The job's checkpoints and savepoints could not be deleted.
    #[error("cannot dispose of {root}: {source}")]
    Dispose {
        /// The job root in object storage.
        root: String,
        /// The storage error.
        #[source]
        source: crate::disposal::DisposeError,
    },
    /// Adding or removing the finalizer, or the cleanup, failed.
    #[error("finalizer {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, bounded label for the `reason` of the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingNamespace(_) => "missing_namespace",
            Error::Build(_) => "build",
            Error::Dispose { .. } => "dispose",
            Error::Kube { action, .. } => match *action {
                "get" => "kube_get",
                "list" => "kube_list",
                "delete" => "kube_delete",
                "apply" => "kube_apply",
                "patch status" => "kube_patch_status",
                _ => "kube",
            },
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => "finalizer_patch",
                _ => "finalizer",
            },
        }
    }
}
