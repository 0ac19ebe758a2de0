//! Per-partition and per-task event-time watermarks.
//!
//! A partition's watermark is the highest event time it has delivered minus
//! `maxOutOfOrderness`. A task's watermark is the minimum over its partitions
//! that are not idle; a partition is idle once no record arrived for
//! `idleTimeout` of processing time (as told by [`WatermarkTracker::advance`]).
//! When every partition is idle the task watermark is the maximum of theirs,
//! so that windows of a drained stream still fire. The task watermark never
//! goes back, even when an idle partition wakes up behind it.
//!
//! After a repartition topic, a task reads records of every upstream task
//! mixed in one partition, so event time cannot be inferred from the records:
//! each upstream task broadcasts its watermark (and whether all its
//! partitions are idle) into every partition of the topic, and
//! [`UpstreamWatermarks`] takes the minimum, as Flink does across a network
//! shuffle.

use serde::{Deserialize, Serialize};

/// One input partition of a task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

#[derive(Clone, Debug, Default)]
struct PartitionClock {
    /// Highest event time delivered.
    max_event_time: Option<i64>,
    /// Processing time of the last record (or of registration).
    last_active: Option<i64>,
    /// Whether the partition no longer holds back the task watermark.
    idle: bool,
}

/// The saved watermark state of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermark {
    /// Which partition.
    pub partition: PartitionId,
    /// Highest event time it delivered before the snapshot.
    pub max_event_time: Option<i64>,
}

/// The saved watermark state of a task, stored in the checkpoint manifest
/// so that a restore resumes event time where it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkSnapshot {
    /// Every partition the task had seen.
    pub partitions: Vec<PartitionWatermark>,
    /// The task watermark at the snapshot.
    pub watermark: Option<i64>,
}

/// Tracks the event-time progress of the partitions of one task.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    max_out_of_orderness: i64,
    /// Idle timeout in milliseconds; 0 disables idleness.
    idle_timeout: i64,
    /// A task reads few partitions: a vector searched linearly beats a map
    /// and needs no owned key per lookup.
    partitions: Vec<(PartitionId, PartitionClock)>,
    /// Latest processing time given to [`WatermarkTracker::advance`].
    now: Option<i64>,
    watermark: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker with no partitions yet.
    pub fn new(max_out_of_orderness_ms: i64, idle_timeout_ms: i64) -> WatermarkTracker {
        WatermarkTracker {
            max_out_of_orderness: max_out_of_orderness_ms.max(0),
            idle_timeout: idle_timeout_ms.max(0),
            partitions: Vec::new(),
            now: None,
            watermark: None,
        }
    }

    /// Declares a partition the task reads, so that it holds back the task
    /// watermark until it delivers records or turns idle.
    pub fn register(&mut self, partition: PartitionId) {
        if self
            .position(&partition.topic, partition.partition)
            .is_none()
        {
            let clock = PartitionClock {
                last_active: self.now,
                ..PartitionClock::default()
            };
            self.partitions.push((partition, clock));
        }
    }

    fn position(&self, topic: &str, partition: i32) -> Option<usize> {
        self.partitions
            .iter()
            .position(|(id, _)| id.partition == partition && id.topic == topic)
    }

    /// Records an event of partition `partition` of `topic` at `event_time`;
    /// returns the task watermark after it.
    pub fn observe(&mut self, topic: &str, partition: i32, event_time: i64) -> Option<i64> {
        let index = match self.position(topic, partition) {
            Some(i) => i,
            None => {
                let id = PartitionId {
                    topic: topic.to_owned(),
                    partition,
                };
                self.partitions.push((id, PartitionClock::default()));
                self.partitions.len() - 1
            }
        };
        let clock = &mut self.partitions[index].1;
        let previous = clock.max_event_time;
        // Active as of the next `advance`: `now` may be stale after a long
        // pause of the caller (a checkpoint), and must not make a partition
        // that just delivered look idle.
        clock.last_active = None;
        clock.idle = false;
        let max = previous.map_or(event_time, |m| m.max(event_time));
        clock.max_event_time = Some(max);
        // A partition already ahead of the watermark is not the minimum of
        // the active ones (nor, were it idle, what all of them being idle
        // gave: the watermark would be at least its value): moving it
        // further changes nothing, and the other partitions need not be
        // looked at.
        let ahead = previous
            .zip(self.watermark)
            .is_some_and(|(previous, watermark)| {
                previous.saturating_sub(self.max_out_of_orderness) > watermark
            });
        if previous == Some(max) || ahead {
            return self.watermark;
        }
        let moved = max.saturating_sub(self.max_out_of_orderness);
        if self.partitions.len() == 1 {
            // The only partition, active now: its watermark is the task's.
            self.watermark = self.watermark.max(Some(moved));
        } else if self.watermark.is_none_or(|w| moved > w) {
            // Otherwise the minimum of the active partitions, this one
            // among them, stays at most the watermark.
            self.recompute();
        }
        self.watermark
    }

    /// Marks partitions without records for the idle timeout as idle, given
    /// the processing time `now_ms`; returns the task watermark after it.
    ///
    /// A gap since the previous call of half the idle timeout or more means
    /// the caller was not reading (a checkpoint, a stall): that time does
    /// not count towards idleness.
    pub fn advance(&mut self, now_ms: i64) -> Option<i64> {
        let previous = self.now;
        self.now = Some(previous.map_or(now_ms, |n| n.max(now_ms)));
        let now = self.now.unwrap_or(now_ms);
        if self.idle_timeout > 0 {
            let stalled = previous
                .is_some_and(|p| now.saturating_sub(p).saturating_mul(2) >= self.idle_timeout);
            for (_, clock) in &mut self.partitions {
                match clock.last_active {
                    None => clock.last_active = Some(now),
                    Some(_) if stalled && !clock.idle => clock.last_active = Some(now),
                    Some(last) if now.saturating_sub(last) >= self.idle_timeout => {
                        clock.idle = true;
                    }
                    Some(_) => {}
                }
            }
        }
        self.recompute();
        self.watermark
    }

    fn recompute(&mut self) {
        let ooo = self.max_out_of_orderness;
        let candidate = combine(
            self.partitions
                .iter()
                .map(|(_, c)| (c.max_event_time.map(|m| m.saturating_sub(ooo)), c.idle)),
        );
        self.watermark = self.watermark.max(candidate);
    }

    /// The task watermark: no event at or before it is expected any more.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Whether no partition holds back the watermark any more: every one
    /// is idle (or the task reads none).
    pub fn is_idle(&self) -> bool {
        self.partitions.iter().all(|(_, c)| c.idle)
    }

    /// The latest processing time seen.
    pub fn now(&self) -> Option<i64> {
        self.now
    }

    /// Starts the processing-time clock at `now_ms`, also backwards (a
    /// replay of recorded time in a test): partitions count as active from
    /// then on. [`WatermarkTracker::advance`] moves it forward only.
    pub fn start_at(&mut self, now_ms: i64) {
        self.now = Some(now_ms);
        for (_, clock) in &mut self.partitions {
            if clock.last_active.is_some() {
                clock.last_active = Some(now_ms);
            }
        }
    }

    /// The state to keep in a checkpoint.
    pub fn snapshot(&self) -> WatermarkSnapshot {
        WatermarkSnapshot {
            partitions: self
                .partitions
                .iter()
                .map(|(id, c)| PartitionWatermark {
                    partition: id.clone(),
                    max_event_time: c.max_event_time,
                })
                .collect(),
            watermark: self.watermark,
        }
    }

    /// Resumes from a checkpoint. Partitions start active and turn idle
    /// again after the timeout.
    pub fn restore(&mut self, snapshot: WatermarkSnapshot) {
        self.partitions.clear();
        for p in snapshot.partitions {
            let clock = PartitionClock {
                max_event_time: p.max_event_time,
                last_active: self.now,
                idle: false,
            };
            self.partitions.push((p.partition, clock));
        }
        self.watermark = snapshot.watermark;
    }
}

/// The watermark of several inputs, each given as its own watermark and
/// whether it is idle: the minimum over the inputs that are not idle (none
/// while one of them has no watermark yet), or the maximum when all are
/// idle, so that a drained stream still fires its windows.
fn combine(inputs: impl Iterator<Item = (Option<i64>, bool)>) -> Option<i64> {
    let mut any_active = false;
    let mut blocked = false;
    let mut min_active: Option<i64> = None;
    let mut max_all: Option<i64> = None;
    for (w, idle) in inputs {
        if !idle {
            any_active = true;
            match w {
                None => blocked = true,
                Some(w) => min_active = Some(min_active.map_or(w, |m| m.min(w))),
            }
        }
        max_all = max_all.max(w);
    }
    match (any_active, blocked) {
        (false, _) => max_all,
        (true, true) => None,
        (true, false) => min_active,
    }
}

/// What an upstream task last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamReport {
    /// Its watermark, `None` until it has one.
    pub watermark: Option<i64>,
    /// Whether all its partitions were idle.
    pub idle: bool,
}

/// The saved state of [`UpstreamWatermarks`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSnapshot {
    /// The last report of each upstream task, indexed by task.
    pub upstreams: Vec<UpstreamReport>,
    /// The combined watermark at the snapshot.
    pub watermark: Option<i64>,
}

/// The watermark of the records read from a repartition topic: the minimum
/// over the upstream tasks that are not idle, each as it last reported; the
/// maximum when all are idle. Until every active upstream task has
/// reported, there is none. It never goes back.
///
/// Idleness is a lease: upstream tasks repeat their report at every
/// checkpoint, and an idle report not repeated within the lease (the
/// upstream's worker is down or restarting, and its partitions may be
/// filling up) holds the watermark back again. A restore starts every
/// upstream as not idle, for the same reason.
#[derive(Clone, Debug)]
pub struct UpstreamWatermarks {
    upstreams: Vec<UpstreamReport>,
    /// Processing time until which each upstream's idle report holds.
    idle_until: Vec<i64>,
    /// How long an idle report holds, in milliseconds.
    idle_lease: i64,
    watermark: Option<i64>,
}

impl UpstreamWatermarks {
    /// Expects reports from `upstreams` tasks, numbered from 0, whose idle
    /// reports hold for `idle_lease_ms` of processing time.
    pub fn new(upstreams: usize, idle_lease_ms: i64) -> UpstreamWatermarks {
        UpstreamWatermarks {
            upstreams: vec![UpstreamReport::default(); upstreams],
            idle_until: vec![i64::MIN; upstreams],
            idle_lease: idle_lease_ms.max(0),
            watermark: None,
        }
    }

    /// Takes the report of upstream task `upstream` at processing time
    /// `now_ms`; returns `false` when no such task is expected (the report
    /// is ignored). An upstream's watermark never goes back either: a report
    /// older than the last one (a replay) keeps the newer value.
    pub fn report(&mut self, upstream: usize, report: UpstreamReport, now_ms: i64) -> bool {
        let Some(slot) = self.upstreams.get_mut(upstream) else {
            return false;
        };
        slot.watermark = slot.watermark.max(report.watermark);
        slot.idle = report.idle;
        self.idle_until[upstream] = now_ms.saturating_add(self.idle_lease);
        self.recompute();
        true
    }

    /// Expires the idle reports not repeated within the lease by `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let mut expired = false;
        for (u, until) in self.upstreams.iter_mut().zip(&self.idle_until) {
            if u.idle && *until <= now_ms {
                u.idle = false;
                expired = true;
            }
        }
        if expired {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let candidate = combine(self.upstreams.iter().map(|u| (u.watermark, u.idle)));
        self.watermark = self.watermark.max(candidate);
    }

    /// The combined watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The state to keep in a checkpoint.
    pub fn snapshot(&self) -> UpstreamSnapshot {
        UpstreamSnapshot {
            upstreams: self.upstreams.clone(),
            watermark: self.watermark,
        }
    }

    /// Resumes from a checkpoint with every upstream not idle; reports of
    /// tasks beyond the expected count are dropped.
    pub fn restore(&mut self, snapshot: UpstreamSnapshot) {
        for (slot, saved) in self.upstreams.iter_mut().zip(snapshot.upstreams) {
            *slot = UpstreamReport {
                watermark: saved.watermark,
                idle: false,
            };
        }
        self.watermark = self.watermark.max(snapshot.watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn pid(partition: i32) -> PartitionId {
        PartitionId {
            topic: "in".into(),
            partition,
        }
    }

    #[test]
    fn minimum_over_partitions_minus_out_of_orderness() {
        let mut t = WatermarkTracker::new(5_000, 30_000);
        t.register(pid(0));
        t.register(pid(1));
        assert_eq!(t.observe("in", 0, 100_000), None, "partition 1 holds back");
        assert_eq!(t.observe("in", 1, 50_000), Some(45_000));
        assert_eq!(t.observe("in", 1, 40_000), Some(45_000), "max event time");
        assert_eq!(t.observe("in", 1, 200_000), Some(95_000));
    }

    #[test]
    fn idle_partitions_stop_holding_back() {
        let mut t = WatermarkTracker::new(1_000, 30_000);
        t.advance(0);
        t.register(pid(0));
        t.register(pid(1));
        t.observe("in", 0, 10_000);
        assert_eq!(t.watermark(), None);
        for now in (1_000..30_000).step_by(1_000) {
            assert_eq!(t.advance(now), None, "at {now}");
        }
        // Partition 1, silent since its registration at 0, is idle at 30 s:
        // partition 0 alone sets the watermark.
        assert_eq!(t.advance(30_000), Some(9_000));
        // Partition 0 delivered last at 1 s (its first advance after the
        // record): both idle at 31 s, and the maximum wins.
        assert_eq!(t.advance(31_000), Some(9_000));
        assert!(t.is_idle());
        t.advance(40_000);
        // Partition 0 wakes up.
        assert_eq!(t.observe("in", 0, 20_000), Some(19_000));
        // Partition 1 wakes up behind: the watermark does not go back.
        assert_eq!(t.observe("in", 1, 1_000), Some(19_000));
        assert_eq!(t.observe("in", 0, 30_000), Some(19_000));
        assert_eq!(t.observe("in", 1, 25_000), Some(24_000));
    }

    #[test]
    fn zero_idle_timeout_disables_idleness() {
        let mut t = WatermarkTracker::new(0, 0);
        t.register(pid(0));
        t.register(pid(1));
        t.observe("in", 0, 10);
        assert_eq!(t.advance(i64::MAX), None);
    }

    #[test]
    fn snapshot_restores_watermarks() {
        let mut t = WatermarkTracker::new(0, 30_000);
        t.observe("in", 0, 10);
        t.observe("in", 1, 20);
        let snap = t.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let mut u = WatermarkTracker::new(0, 30_000);
        u.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(u.watermark(), Some(10));
        assert_eq!(u.observe("in", 0, 30), Some(20));
    }

    #[test]
    fn all_idle_is_idle() {
        let mut t = WatermarkTracker::new(0, 1_000);
        assert!(t.is_idle(), "no partitions: nothing holds back");
        t.advance(0);
        t.register(pid(0));
        t.register(pid(1));
        assert!(!t.is_idle());
        t.observe("in", 0, 5);
        for now in (100..=1_100).step_by(100) {
            t.advance(now);
        }
        assert!(t.is_idle());
        t.observe("in", 1, 7);
        assert!(!t.is_idle());
    }

    fn active(w: i64) -> UpstreamReport {
        UpstreamReport {
            watermark: Some(w),
            idle: false,
        }
    }

    #[test]
    fn upstream_watermark_waits_for_every_active_upstream() {
        let mut u = UpstreamWatermarks::new(3, 60_000);
        u.report(0, active(100), 0);
        u.report(2, active(50), 0);
        assert_eq!(u.watermark(), None, "upstream 1 has not reported");
        u.report(1, active(70), 0);
        assert_eq!(u.watermark(), Some(50));
        u.report(2, active(300), 0);
        assert_eq!(u.watermark(), Some(70));
        // A replayed older report changes nothing.
        u.report(2, active(10), 0);
        assert_eq!(u.watermark(), Some(70));
        assert!(!u.report(3, active(1), 0), "no upstream 3");
    }

    #[test]
    fn idle_upstreams_do_not_hold_back() {
        let mut u = UpstreamWatermarks::new(2, 60_000);
        u.report(
            1,
            UpstreamReport {
                watermark: None,
                idle: true,
            },
            0,
        );
        assert_eq!(u.watermark(), None);
        u.report(0, active(40), 0);
        assert_eq!(u.watermark(), Some(40));
        u.report(
            0,
            UpstreamReport {
                watermark: Some(60),
                idle: true,
            },
            0,
        );
        assert_eq!(u.watermark(), Some(60), "all idle: the maximum");
        // Upstream 1 wakes up behind: the watermark does not go back.
        u.report(1, active(20), 0);
        assert_eq!(u.watermark(), Some(60));
    }

    #[test]
    fn idle_reports_expire_without_a_heartbeat() {
        let mut u = UpstreamWatermarks::new(2, 1_000);
        let idle = UpstreamReport {
            watermark: Some(10),
            idle: true,
        };
        u.report(0, active(50), 0);
        u.report(1, idle, 0);
        assert_eq!(u.watermark(), Some(50));
        // Upstream 0 moves on; upstream 1 is still idle and repeats it.
        u.expire(900);
        u.report(1, idle, 900);
        u.report(0, active(80), 1_500);
        assert_eq!(u.watermark(), Some(80));
        // Upstream 1 fell silent: its idleness lapses and it holds back.
        u.expire(1_900);
        u.report(0, active(120), 1_950);
        assert_eq!(u.watermark(), Some(80), "held at the lapsed upstream's 10");
    }

    #[test]
    fn restored_upstreams_are_not_idle() {
        let mut u = UpstreamWatermarks::new(2, 60_000);
        u.report(0, active(5), 0);
        u.report(
            1,
            UpstreamReport {
                watermark: Some(3),
                idle: true,
            },
            0,
        );
        let mut v = UpstreamWatermarks::new(2, 60_000);
        v.restore(u.snapshot());
        v.report(0, active(100), 0);
        assert_eq!(v.watermark(), Some(5), "upstream 1 must report again");
        v.report(1, active(40), 0);
        assert_eq!(v.watermark(), Some(40));
    }

    #[test]
    fn a_stall_of_the_caller_does_not_make_partitions_idle() {
        let mut t = WatermarkTracker::new(0, 30_000);
        t.advance(0);
        t.register(pid(0));
        t.register(pid(1));
        t.observe("in", 0, 100);
        t.observe("in", 1, 200);
        t.advance(100);
        // A 40 s checkpoint, then a batch from partition 0 only.
        t.observe("in", 0, 300);
        t.advance(40_100);
        assert!(!t.is_idle());
        assert_eq!(t.watermark(), Some(200));
        // Reading again, partition 1 stays silent for the timeout.
        for now in (41_100..=70_100).step_by(1_000) {
            t.observe("in", 0, 300);
            t.advance(now);
        }
        assert_eq!(
            t.watermark(),
            Some(300),
            "partition 1 idle after 30 s of reading"
        );
    }

    #[test]
    fn upstream_snapshot_round_trips() {
        let mut u = UpstreamWatermarks::new(2, 60_000);
        u.report(0, active(5), 0);
        u.report(1, active(9), 0);
        let json = serde_json::to_string(&u.snapshot()).unwrap();
        let mut v = UpstreamWatermarks::new(2, 60_000);
        v.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(v.watermark(), Some(5));
        v.report(0, active(20), 0);
        assert_eq!(v.watermark(), Some(9));
    }

    proptest! {
        /// Whatever the partitions deliver and however time advances
        /// (partitions turning idle and back), the watermark is what
        /// combining every partition's clock gives, never lower than
        /// before: observing a partition ahead of the watermark without
        /// looking at the others loses nothing.
        #[test]
        fn the_watermark_is_always_that_of_every_partition(
            steps in proptest::collection::vec(
                prop_oneof![
                    3 => (0i32..4, 0i64..100_000).prop_map(|(p, ts)| (Some(p), ts)),
                    1 => (0i64..5_000).prop_map(|gap| (None, gap)),
                ],
                1..200,
            )
        ) {
            let mut t = WatermarkTracker::new(100, 1_000);
            for p in 0..4 {
                t.register(pid(p));
            }
            let mut now = 0;
            let mut last = None;
            for (partition, value) in steps {
                match partition {
                    Some(p) => {
                        t.observe("in", p, value);
                    }
                    None => {
                        now += value;
                        t.advance(now);
                    }
                }
                let ooo = t.max_out_of_orderness;
                let full = combine(t.partitions.iter().map(|(_, c)| {
                    (c.max_event_time.map(|m| m.saturating_sub(ooo)), c.idle)
                }));
                prop_assert_eq!(t.watermark(), last.max(full));
                last = t.watermark();
            }
        }

        #[test]
        fn watermark_is_the_min_of_active_partitions_and_monotone(
            events in proptest::collection::vec((0i32..4, 0i64..1_000_000), 1..200)
        ) {
            let mut t = WatermarkTracker::new(100, 0);
            let mut max = BTreeMap::new();
            let mut last = None;
            for (p, ts) in events {
                let wm = t.observe("in", p, ts);
                let m = max.entry(p).or_insert(ts);
                *m = (*m).max(ts);
                let min = max.values().min().map(|m| m - 100);
                prop_assert_eq!(wm, last.max(min));
                last = wm;
            }
        }
    }
}
