//! Errors of a reconciliation.

use crate::builders::BuildError;

/// Condition and event reason of a child that cannot be applied (the API
/// server rejected it: invalid, forbidden, conflicting).
pub const APPLY_FAILED: &str = "ApplyFailed";
/// Condition and event reason of a child that another controller owns.
pub const CHILD_CONFLICT: &str = "ChildConflict";
/// Condition and event reason of a Secret the spec names that does not exist.
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
/// Event reason of every other failed reconciliation.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

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
        /// What was attempted (get, list, apply, patch status, add finalizer,
        /// remove finalizer, ...).
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
    /// A child object exists but another owner controls it; the operator
    /// does not take it over.
    #[error(
        "{kind} {namespace}/{name} is controlled by {owner}, not by this StreamingJob; rename or delete it"
    )]
    ChildConflict {
        /// Kind of the child.
        kind: &'static str,
        /// Namespace of the child.
        namespace: String,
        /// Name of the child.
        name: String,
        /// The controlling owner, as `Kind/name (uid)`.
        owner: String,
    },
    /// A Secret the spec refers to does not exist.
    #[error("Secret {namespace}/{name} named by {field} does not exist")]
    SecretNotFound {
        /// The field of the spec naming the Secret.
        field: &'static str,
        /// Namespace of the Secret (the job's).
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// The job's checkpoint storage could not be read or written (a
    /// savepoint's manifest, the fence).
    #[error("cannot {action} in {root}: {source}")]
    Storage {
        /// What was attempted.
        action: &'static str,
        /// The job root in object storage.
        root: String,
        /// The storage error.
        #[source]
        source: crate::disposal::DisposeError,
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
}

/// Whether an API status code is the server's verdict on the request itself
/// (invalid, forbidden, conflicting), not a transient condition.
fn rejected(code: u16) -> bool {
    (400..500).contains(&code) && code != 408 && code != 429
}

impl Error {
    /// A short, bounded label for the `reason` of the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingNamespace(_) => "missing_namespace",
            Error::Build(_) => "build",
            Error::Dispose { .. } => "dispose",
            Error::Storage { .. } => "storage",
            Error::ChildConflict { .. } => "child_conflict",
            Error::SecretNotFound { .. } => "secret_not_found",
            Error::Kube { action, .. } => match *action {
                "get" => "kube_get",
                "list" => "kube_list",
                "delete" => "kube_delete",
                "apply" => "kube_apply",
                "scale" => "kube_scale",
                "patch status" => "kube_patch_status",
                "add finalizer" | "remove finalizer" => "finalizer_patch",
                _ => "kube",
            },
        }
    }

    /// The reason and message of the Ready=False / Degraded=True conditions
    /// of an error that needs a human (a child the API server rejects or
    /// another owner controls, a missing Secret); `None` for transient ones,
    /// which are only retried.
    pub fn condition(&self) -> Option<(&'static str, String)> {
        match self {
            Error::Kube {
                action: "apply",
                kind,
                namespace,
                name,
                source: kube::Error::Api(status),
            } if rejected(status.code) => Some((
                APPLY_FAILED,
                format!(
                    "the API server rejected {kind} {namespace}/{name} ({} {}): {}",
                    status.code, status.reason, status.message
                ),
            )),
            Error::ChildConflict { .. } => Some((CHILD_CONFLICT, self.to_string())),
            Error::SecretNotFound { .. } => Some((SECRET_NOT_FOUND, self.to_string())),
            _ => None,
        }
    }

    /// The reason of the Warning event about this error.
    pub fn event_reason(&self) -> &'static str {
        self.condition()
            .map_or(RECONCILE_FAILED, |(reason, _)| reason)
    }
}
