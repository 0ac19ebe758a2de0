//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! replicas can run with one active.
//!
//! [`decide`] is the pure rule over the observed Lease: acquire a free lease,
//! renew our own, take over one whose record stopped changing for longer
//! than its lease duration, otherwise follow. As in client-go, expiry is
//! judged on this replica's monotonic clock, never by comparing the holder's
//! `renewTime` with the local wall clock: [`Observation`] records when the
//! record (holder, renewTime, resourceVersion) last changed, so clock skew
//! between replicas cannot make a live lease look expired.
//!
//! [`Elector`] does the I/O: it reads the Lease, writes the decision with
//! optimistic concurrency (a replace carries the resourceVersion that was
//! read, so of two candidates only one wins), and publishes whether this
//! replica leads. Every attempt is bounded by a timer ([`budget`]): a leader
//! whose last successful attempt *started* more than the renew deadline ago
//! steps down, even when a request hangs (the client has no read timeout),
//! before any standby can take over.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

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
    /// Another replica holds the lease.
    Follow {
        /// The current holder.
        holder: String,
        /// How long, on the local clock, until the lease expires unless its
        /// record changes.
        remaining: Duration,
    },
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// The fields of a Lease whose change shows that its holder is alive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`.
    pub holder: Option<String>,
    /// `spec.renewTime`.
    pub renew_time: Option<Timestamp>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

impl Record {
    /// The record of `lease`.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// A Lease record and when, on this replica's monotonic clock, it was first
/// seen in that state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The record last observed.
    pub record: Record,
    /// When the record last changed (was first observed as it is).
    pub changed_at: Instant,
}

impl Observation {
    /// The observation after reading `record` at `now`: the time moves only
    /// when the record differs from the previous observation.
    pub fn update(previous: Option<&Observation>, record: Record, now: Instant) -> Observation {
        match previous {
            Some(previous) if previous.record == record => previous.clone(),
            _ => Observation {
                record,
                changed_at: now,
            },
        }
    }
}

/// The decision of candidate `identity` about the observed lease spec
/// (`None` when the Lease does not exist), whose record has not changed for
/// `unchanged_for` on the local clock; `now` is only written into the
/// lease (acquire and renew times), never compared with the holder's times.
pub fn decide(
    observed: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    unchanged_for: Duration,
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
        (Some(holder), Some(spec)) => {
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            match held_for.checked_sub(unchanged_for) {
                Some(remaining) if !remaining.is_zero() => Decision::Follow { holder, remaining },
                // Unchanged for the whole lease duration: take over.
                _ => Decision::Acquire(acquire(transitions.saturating_add(1))),
            }
        }
        // A free lease: either never held or released.
        _ => Decision::Acquire(acquire(transitions)),
    }
}

/// What the election loop does next, given when the last successful attempt
/// of this replica as leader started (`None` when it does not lead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The renew deadline has passed: stop leading now.
    StepDown,
    /// Make an attempt, abandoned after this long.
    Attempt(Duration),
}

/// The time left to the next attempt of a replica whose last successful
/// attempt as leader started at `renewed_at`, at `now`. A standby's attempt
/// is bounded by the renew deadline too, so that no request hangs forever.
pub fn budget(renewed_at: Option<Instant>, now: Instant, timing: &Timing) -> Budget {
    let Some(renewed_at) = renewed_at else {
        return Budget::Attempt(timing.renew_deadline);
    };
    match timing
        .renew_deadline
        .checked_sub(now.saturating_duration_since(renewed_at))
    {
        Some(left) if !left.is_zero() => Budget::Attempt(left),
        _ => Budget::StepDown,
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
    /// The Lease record as last read, and since when it has not changed.
    observed: Mutex<Option<Observation>>,
}

impl Elector {
    /// A candidate `identity` for the Lease `name` reachable through `api`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Mutex::new(None),
        }
    }

    fn error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Kube {
            action,
            name: self.name.clone(),
            source,
        }
    }

    /// Records the Lease as read (or written) now; returns for how long its
    /// record has been unchanged.
    fn observe(&self, lease: Option<&Lease>) -> Duration {
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        *observed =
            lease.map(|lease| Observation::update(observed.as_ref(), Record::of(lease), now));
        observed.as_ref().map_or(Duration::ZERO, |o| {
            now.saturating_duration_since(o.changed_at)
        })
    }

    /// One round: read the Lease, decide, write. Losing a write race
    /// (409 Conflict) is following, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaderError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.error("get"))?;
        let unchanged_for = self.observe(current.as_ref());
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            Timestamp::now(),
            unchanged_for,
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
            Ok(lease) => {
                self.observe(Some(&lease));
                Ok(Attempt::Leading)
            }
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

    /// Runs the election, publishing on `leading` whether this replica
    /// leads, until it has led and lost the lease; then it returns with
    /// `false` published (as in client-go, a replica that stopped leading
    /// does not campaign again: the operator exits and restarts as a
    /// standby). Every attempt runs under a timeout, and a leader steps down
    /// on a timer once the renew deadline has passed since the start of its
    /// last successful attempt, whether its requests fail or hang.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        // Start of the last successful attempt while leading.
        let mut renewed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let limit = match budget(renewed_at, started, &self.timing) {
                Budget::Attempt(limit) => limit,
                Budget::StepDown => {
                    tracing::warn!(lease = %self.name, "renew deadline passed; stepping down");
                    leading.send_replace(false);
                    return;
                }
            };
            match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {
                    renewed_at = Some(started);
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(Ok(Attempt::Following)) if renewed_at.is_some() => {
                    tracing::warn!(lease = %self.name, "another replica took the lease; stepping down");
                    leading.send_replace(false);
                    return;
                }
                Ok(Ok(Attempt::Following)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "leader election round failed"),
                Err(_) => tracing::warn!(
                    lease = %self.name,
                    timeout = ?limit,
                    "leader election round timed out"
                ),
            }
            // Wait for the next round, but wake at a leader's renew deadline.
            let mut wake = Instant::now() + self.timing.retry_period;
            if let Some(renewed_at) = renewed_at {
                wake = wake.min(renewed_at + self.timing.renew_deadline);
            }
            tokio::time::sleep_until(wake).await;
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

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
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
        let Decision::Acquire(spec) = decide(None, "a", at(100), secs(0), DURATION) else {
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
        let Decision::Acquire(spec) = decide(Some(&released), "b", at(100), secs(0), DURATION)
        else {
            panic!("expected Acquire");
        };
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let Decision::Renew(spec) =
            decide(Some(&held("a", 90, 2)), "a", at(100), secs(0), DURATION)
        else {
            panic!("expected Renew");
        };
        assert_eq!(spec.renew_time, Some(MicroTime(at(100))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    /// Expiry depends only on how long the record has been unchanged on the
    /// local clock, whatever the holder's renewTime says about its clock.
    #[test]
    fn expiry_is_judged_on_the_local_clock_table() {
        // (case, holder's renewTime, local now, unchanged for, expected)
        let cases: [(&str, i64, i64, u64, Option<u64>); 6] = [
            ("fresh lease", 100, 100, 0, Some(15)),
            ("renewed 5s ago", 95, 100, 5, Some(10)),
            // The holder's clock is an hour behind: its renewTime looks
            // ancient, but the record keeps changing, so it is alive.
            (
                "holder clock behind, record changing",
                100 - 3600,
                100,
                3,
                Some(12),
            ),
            // The holder's clock is ahead: its renewTime is in the future,
            // but the record has not changed for the lease duration.
            (
                "holder clock ahead, record stuck",
                100 + 3600,
                100,
                15,
                None,
            ),
            ("stuck for longer", 100, 100, 60, None),
            ("one second before expiry", 0, 100, 14, Some(1)),
        ];
        for (case, renewed, now, unchanged, expected) in cases {
            let decision = decide(
                Some(&held("a", renewed, 2)),
                "b",
                at(now),
                secs(unchanged),
                DURATION,
            );
            match (expected, decision) {
                (Some(left), Decision::Follow { holder, remaining }) => {
                    assert_eq!(holder, "a", "{case}");
                    assert_eq!(remaining, secs(left), "{case}");
                }
                (None, Decision::Acquire(spec)) => {
                    assert_eq!(spec.holder_identity.as_deref(), Some("b"), "{case}");
                    assert_eq!(spec.lease_transitions, Some(3), "{case}");
                    assert_eq!(spec.acquire_time, Some(MicroTime(at(now))), "{case}");
                }
                (expected, decision) => panic!("{case}: expected {expected:?}, got {decision:?}"),
            }
        }
    }

    #[test]
    fn a_held_lease_without_a_duration_is_taken_over() {
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            ..LeaseSpec::default()
        };
        assert!(matches!(
            decide(Some(&spec), "b", at(1), secs(0), DURATION),
            Decision::Acquire(_)
        ));
    }

    #[test]
    fn the_observation_time_moves_only_when_the_record_changes_table() {
        let t0 = Instant::now();
        let record = |holder: &str, renewed: i64, version: &str| Record {
            holder: Some(holder.into()),
            renew_time: Some(at(renewed)),
            resource_version: Some(version.into()),
        };
        let first = Observation::update(None, record("a", 1, "7"), t0);
        assert_eq!(first.changed_at, t0);
        // (case, record read at t0 + 5s, whether changed_at moves)
        let cases = [
            ("same record", record("a", 1, "7"), false),
            ("renewTime changed", record("a", 2, "7"), true),
            ("resourceVersion changed", record("a", 1, "8"), true),
            ("holder changed", record("b", 1, "7"), true),
        ];
        for (case, next, moves) in cases {
            let later = t0 + secs(5);
            let updated = Observation::update(Some(&first), next.clone(), later);
            assert_eq!(updated.record, next, "{case}");
            let expected = if moves { later } else { t0 };
            assert_eq!(updated.changed_at, expected, "{case}");
        }
    }

    #[test]
    fn the_budget_runs_from_the_start_of_the_last_success() {
        let timing = Timing::default();
        let t0 = Instant::now();
        assert_eq!(
            budget(None, t0, &timing),
            Budget::Attempt(timing.renew_deadline)
        );
        assert_eq!(
            budget(Some(t0), t0 + secs(3), &timing),
            Budget::Attempt(secs(7))
        );
        assert_eq!(budget(Some(t0), t0 + secs(10), &timing), Budget::StepDown);
        assert_eq!(budget(Some(t0), t0 + secs(30), &timing), Budget::StepDown);
    }

    mod io {
        use std::pin::pin;

        use http::{Method, Request, Response, StatusCode};
        use k8s_openapi::jiff::SignedDuration;
        use kube::Client;
        use kube::client::Body;
        use serde_json::{Value, json};
        use tower_test::mock;

        use super::super::*;

        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weir-system/leases";

        fn respond(status: StatusCode, reply: &Value) -> Response<Body> {
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(reply).unwrap()))
                .unwrap()
        }

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
                    send.send_response(respond(status, &reply));
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
        async fn follows_a_held_lease_without_writing_even_if_its_renew_time_is_old() {
            // A renewTime an hour old (a skewed holder clock) is not expiry:
            // this replica has only just seen the record.
            let path = format!("{LEASES}/weir-operator");
            let old = Timestamp::now() - SignedDuration::from_secs(3600);
            let (result, bodies) =
                attempt(vec![(Method::GET, path, StatusCode::OK, lease("b", old))]).await;
            assert_eq!(result, Attempt::Following);
            assert_eq!(bodies.len(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn takes_over_a_stuck_lease_and_loses_a_race_gracefully() {
            let path = format!("{LEASES}/weir-operator");
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let renewed = Timestamp::now();
            let server = tokio::spawn(async move {
                let mut handle = pin!(handle);
                // The same record twice, 15s apart: the holder stopped.
                for _ in 0..2 {
                    let (request, send) = handle.next_request().await.expect("a GET");
                    assert_eq!(request.method(), Method::GET);
                    send.send_response(respond(StatusCode::OK, &lease("b", renewed)));
                }
                let (request, send) = handle.next_request().await.expect("a PUT");
                assert_eq!(request.method(), Method::PUT);
                assert_eq!(request.uri().path(), path);
                let bytes = request.into_body().collect_bytes().await.unwrap();
                send.send_response(respond(StatusCode::CONFLICT, &status(409, "Conflict")));
                serde_json::from_slice::<Value>(&bytes).unwrap()
            });
            let api = Api::namespaced(Client::new(service, "default"), "weir-system");
            let elector = Elector::new(api, "weir-operator", "a", Timing::default());
            assert_eq!(
                elector.try_acquire_or_renew().await.unwrap(),
                Attempt::Following
            );
            tokio::time::advance(Duration::from_secs(15)).await;
            assert_eq!(
                elector.try_acquire_or_renew().await.unwrap(),
                Attempt::Following,
                "a lost race is following"
            );
            let written = server.await.unwrap();
            assert_eq!(written["spec"]["holderIdentity"], "a");
            assert_eq!(written["spec"]["leaseTransitions"], 5);
            // Optimistic concurrency: the write carries the version read.
            assert_eq!(written["metadata"]["resourceVersion"], "41");
        }

        /// The API server answers the first round (the lease is created),
        /// then never answers again: the leader must step down at the renew
        /// deadline, counted from the start of its last successful round.
        #[tokio::test(start_paused = true)]
        async fn a_hung_renewal_steps_down_at_the_renew_deadline() {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                let mut handle = pin!(handle);
                let (_, send) = handle.next_request().await.expect("a GET");
                send.send_response(respond(StatusCode::NOT_FOUND, &status(404, "NotFound")));
                let (_, send) = handle.next_request().await.expect("a POST");
                send.send_response(respond(StatusCode::CREATED, &lease("a", Timestamp::now())));
                // Hold every later request unanswered.
                let mut held = Vec::new();
                while let Some(pending) = handle.next_request().await {
                    held.push(pending);
                }
            });
            let api = Api::namespaced(Client::new(service, "default"), "weir-system");
            let timing = Timing::default();
            let elector = Elector::new(api, "weir-operator", "a", timing);
            let (tx, mut leading) = watch::channel(false);
            let started = Instant::now();
            let campaign = tokio::spawn(async move { elector.run(tx).await });
            let limit = Duration::from_secs(60);
            tokio::time::timeout(limit, leading.wait_for(|l| *l))
                .await
                .expect("elected")
                .unwrap();
            tokio::time::timeout(limit, leading.wait_for(|l| !*l))
                .await
                .expect("a hung renewal must step down")
                .unwrap();
            assert_eq!(started.elapsed(), timing.renew_deadline);
            // Having lost the lease, the replica stops campaigning.
            tokio::time::timeout(limit, campaign)
                .await
                .expect("the campaign ends after stepping down")
                .unwrap();
            server.abort();
        }
    }
}
