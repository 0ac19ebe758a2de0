//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! replicas can run with one active.
//!
//! [`decide`] is the pure rule over the observed Lease: acquire a free lease,
//! renew our own, take over one whose holder stopped renewing for longer than
//! its lease duration, otherwise follow. [`Elector`] does the I/O: it reads
//! the Lease, writes the decision with optimistic concurrency (a replace
//! carries the resourceVersion that was read, so of two candidates only one
//! wins), and publishes whether this replica leads. A leader that cannot
//! renew for the renew deadline steps down before anyone can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// Timing of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal; shorter
    /// than the lease duration so it stops before another replica starts.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does about the Lease it observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Write this spec to become the leader (free or expired lease).
    Acquire(LeaseSpec),
    /// Write this spec to stay the leader.
    Renew(LeaseSpec),
    /// Another replica holds the lease until about `until`.
    Follow {
        /// The current holder.
        holder: String,
        /// When the lease expires unless renewed.
        until: Timestamp,
    },
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// When the lease `spec` expires unless renewed, if it is held.
fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed.checked_add(duration).ok()
}

/// The decision of candidate `identity` at `now` about the observed lease
/// spec (`None` when the Lease does not exist).
pub fn decide(
    observed: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Decision {
    let holder = observed
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let transitions = observed.and_then(|s| s.lease_transitions).unwrap_or(0);
    let acquire = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds(lease_duration)),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match (holder, observed) {
        (Some(holder), Some(spec)) if holder == identity => Decision::Renew(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds(lease_duration)),
            ..spec.clone()
        }),
        (Some(holder), Some(spec)) => match expiry(spec) {
            Some(until) if until > now => Decision::Follow { holder, until },
            // Expired, or never renewed: take over.
            _ => Decision::Acquire(acquire(transitions.saturating_add(1))),
        },
        // A free lease: either never held or released.
        _ => Decision::Acquire(acquire(transitions)),
    }
}

/// Why the election could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A request about the Lease failed.
    #[error("cannot {action} Lease {name}: {source}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// The Lease name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// What one attempt concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease.
    Leading,
    /// Another replica holds the lease (or won the race).
    Following,
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// A candidate in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

impl Elector {
    /// A candidate `identity` for the Lease `name` reachable through `api`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    fn error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Kube {
            action,
            name: self.name.clone(),
            source,
        }
    }

    /// One round: read the Lease, decide, write. Losing a write race
    /// (409 Conflict) is following, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaderError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.error("get"))?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            Timestamp::now(),
            self.timing.lease_duration,
        );
        let spec = match decision {
            Decision::Follow { .. } => return Ok(Attempt::Following),
            Decision::Acquire(spec) | Decision::Renew(spec) => spec,
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err(error) if is_conflict(&error) => Ok(Attempt::Following),
            Err(error) => Err(self.error("write")(error)),
        }
    }

    /// Gives the lease up (on shutdown) so that a standby takes over at once.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.error("get"))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(self.error("release")(error)),
        }
    }

    /// Runs the election forever, publishing on `leading` whether this replica
    /// leads. Leadership is dropped when renewal fails for the renew deadline.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        let mut last_success: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    last_success = Some(tokio::time::Instant::now());
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(Attempt::Following) => {
                    last_success = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
                Err(error) => {
                    tracing::warn!(%error, "leader election round failed");
                    let expired =
                        last_success.is_none_or(|t| t.elapsed() >= self.timing.renew_deadline);
                    if expired {
                        leading.send_if_modified(|l| std::mem::replace(l, false));
                    }
                }
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held(holder: &str, renewed: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        let Decision::Acquire(spec) = decide(None, "a", at(100), DURATION) else {
            panic!("expected Acquire");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.renew_time, Some(MicroTime(at(100))));
        assert_eq!(spec.lease_transitions, Some(0));

        let released = LeaseSpec {
            holder_identity: None,
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        };
        let Decision::Acquire(spec) = decide(Some(&released), "b", at(100), DURATION) else {
            panic!("expected Acquire");
        };
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let Decision::Renew(spec) = decide(Some(&held("a", 90, 2)), "a", at(100), DURATION) else {
            panic!("expected Renew");
        };
        assert_eq!(spec.renew_time, Some(MicroTime(at(100))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_live_lease_of_another_holder_is_followed() {
        assert_eq!(
            decide(Some(&held("a", 90, 2)), "b", at(100), DURATION),
            Decision::Follow {
                holder: "a".into(),
                until: at(105)
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let Decision::Acquire(spec) = decide(Some(&held("a", 80, 2)), "b", at(100), DURATION)
        else {
            panic!("expected takeover");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(100))));
        // Exactly at expiry the lease is over.
        assert!(matches!(
            decide(Some(&held("a", 85, 2)), "b", at(100), DURATION),
            Decision::Acquire(_)
        ));
    }

    #[test]
    fn a_held_lease_without_times_is_taken_over() {
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            ..LeaseSpec::default()
        };
        assert!(matches!(
            decide(Some(&spec), "b", at(1), DURATION),
            Decision::Acquire(_)
        ));
    }

    mod io {
        use std::pin::pin;

        use http::{Method, Request, Response, StatusCode};
        use kube::Client;
        use kube::client::Body;
        use serde_json::{Value, json};
        use tower_test::mock;

        use super::super::*;

        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weir-system/leases";

        /// Serves `(method, path, status, reply)` in order, returning the bodies.
        async fn attempt(steps: Vec<(Method, String, StatusCode, Value)>) -> (Attempt, Vec<Value>) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                let mut handle = pin!(handle);
                let mut bodies = Vec::new();
                for (method, path, status, reply) in steps {
                    let (request, send) = handle.next_request().await.expect("a request");
                    assert_eq!(request.method(), method);
                    assert_eq!(request.uri().path(), path);
                    let bytes = request.into_body().collect_bytes().await.unwrap();
                    bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                    let response = Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap();
                    send.send_response(response);
                }
                bodies
            });
            let api = Api::namespaced(Client::new(service, "default"), "weir-system");
            let elector = Elector::new(api, "weir-operator", "a", Timing::default());
            let result = elector.try_acquire_or_renew().await.unwrap();
            (result, server.await.unwrap())
        }

        fn status(code: u16, reason: &str) -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": reason, "reason": reason, "code": code})
        }

        fn lease(holder: &str, renewed: Timestamp) -> Value {
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "weir-operator", "namespace": "weir-system", "resourceVersion": "41"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                         "acquireTime": renewed, "renewTime": renewed, "leaseTransitions": 4}
            })
        }

        #[tokio::test]
        async fn creates_a_missing_lease() {
            let path = format!("{LEASES}/weir-operator");
            let (result, bodies) = attempt(vec![
                (
                    Method::GET,
                    path,
                    StatusCode::NOT_FOUND,
                    status(404, "NotFound"),
                ),
                (
                    Method::POST,
                    LEASES.to_owned(),
                    StatusCode::CREATED,
                    lease("a", Timestamp::now()),
                ),
            ])
            .await;
            assert_eq!(result, Attempt::Leading);
            assert_eq!(bodies[1]["spec"]["holderIdentity"], "a");
            assert_eq!(bodies[1]["metadata"]["name"], "weir-operator");
        }

        #[tokio::test]
        async fn follows_a_live_holder_without_writing() {
            let path = format!("{LEASES}/weir-operator");
            let (result, bodies) = attempt(vec![(
                Method::GET,
                path,
                StatusCode::OK,
                lease("b", Timestamp::now()),
            )])
            .await;
            assert_eq!(result, Attempt::Following);
            assert_eq!(bodies.len(), 1);
        }

        #[tokio::test]
        async fn takes_over_an_expired_lease_and_loses_a_race_gracefully() {
            let path = format!("{LEASES}/weir-operator");
            let stale = Timestamp::now() - SignedDuration::from_secs(60);
            let (result, bodies) = attempt(vec![
                (Method::GET, path.clone(), StatusCode::OK, lease("b", stale)),
                (
                    Method::PUT,
                    path,
                    StatusCode::CONFLICT,
                    status(409, "Conflict"),
                ),
            ])
            .await;
            assert_eq!(result, Attempt::Following);
            let written = &bodies[1];
            assert_eq!(written["spec"]["holderIdentity"], "a");
            assert_eq!(written["spec"]["leaseTransitions"], 5);
            // Optimistic concurrency: the write carries the version read.
            assert_eq!(written["metadata"]["resourceVersion"], "41");
        }
    }
}
