//! The numbers of a run, and the table that shows them side by side.

use std::fmt::Write as _;

use serde::Serialize;

use super::model::{JobParams, Rescale, Trace};

/// A backlog is the step's if it forms within this many seconds of it.
const STEP_BACKLOG_SECS: usize = 60;

/// What one autoscaler did to the job over one scenario. "Lag" here is the
/// backlog, events arrived and not yet processed (what delays results); the
/// autoscalers see the committed-offset lag, which also counts events
/// processed since the last commit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Every change of parallelism.
    pub rescales: Vec<Rescale>,
    /// Changes up.
    pub scale_ups: usize,
    /// Changes down.
    pub scale_downs: usize,
    /// Highest backlog, in events.
    pub peak_lag: u64,
    /// Backlog integrated over time, in event-seconds.
    pub lag_seconds: f64,
    /// Seconds spent in rescale pauses (nothing processed).
    pub paused_secs: u64,
    /// Workers integrated over time, in worker-seconds: the bill.
    pub worker_seconds: u64,
    /// Worker-seconds above what the input needed at 100% busy: the sum over
    /// seconds of `max(0, parallelism - ceil(input / capacity))`.
    pub over_provisioning: u64,
    /// For each step up of the load, seconds from the step until the backlog
    /// it caused (one that formed within a minute) is back under one second
    /// of input: 0 if none formed, `None` if it lasted until the next step
    /// or the end.
    pub catch_up_secs: Vec<Option<u64>>,
    /// Events that arrived.
    pub events_in: u64,
    /// Events processed.
    pub events_processed: u64,
    /// Backlog at the end.
    pub final_lag: u64,
}

impl Summary {
    /// The numbers of `trace`, a run of a job made of `params`, whose load
    /// stepped up at the seconds `step_ups`.
    pub fn of(trace: &Trace, params: &JobParams, step_ups: &[u64]) -> Self {
        let ticks = &trace.ticks;
        let worker_seconds = ticks.iter().map(|t| t.parallelism.max(0) as u64).sum();
        let over_provisioning = ticks
            .iter()
            .map(|t| (t.parallelism - params.needed(t.input)).max(0) as u64)
            .sum();
        let catch_up_secs = step_ups
            .iter()
            .enumerate()
            .map(|(i, &step)| {
                let until = step_ups.get(i + 1).copied().unwrap_or(ticks.len() as u64);
                let window = ticks.get(step as usize..until as usize).unwrap_or_default();
                let caught_up = |t: &super::model::Tick| t.backlog <= t.input;
                // A step the job absorbs has no backlog within a minute (0 s);
                // one formed later comes from something else (a rescale).
                match window.iter().position(|t| !caught_up(t)) {
                    Some(behind) if behind < STEP_BACKLOG_SECS => window[behind..]
                        .iter()
                        .position(caught_up)
                        .map(|back| (behind + back + 1) as u64),
                    _ => Some(0),
                }
            })
            .collect();
        Summary {
            rescales: trace.rescales.clone(),
            scale_ups: trace.rescales.iter().filter(|r| r.to > r.from).count(),
            scale_downs: trace.rescales.iter().filter(|r| r.to < r.from).count(),
            peak_lag: ticks.iter().map(|t| t.backlog).max().unwrap_or(0),
            lag_seconds: ticks.iter().map(|t| t.backlog as f64).sum(),
            paused_secs: ticks.iter().filter(|t| t.paused).count() as u64,
            worker_seconds,
            over_provisioning,
            catch_up_secs,
            events_in: ticks.iter().map(|t| t.input).sum(),
            events_processed: ticks.iter().map(|t| t.processed).sum(),
            final_lag: ticks.last().map_or(0, |t| t.backlog),
        }
    }
}

/// One scenario's result, both autoscalers side by side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The scenario's name.
    pub scenario: String,
    /// What its load does.
    pub description: String,
    /// Simulated seconds.
    pub duration_secs: u64,
    /// Weir's autoscaler.
    pub weir: Summary,
    /// KEDA's Kafka scaler under the HPA.
    pub keda: Summary,
}

impl Comparison {
    /// One line on who did better, and at what cost; when Weir has more
    /// lag-seconds, by how much and why.
    pub fn verdict(&self) -> String {
        let (weir, keda) = (&self.weir, &self.keda);
        let secs = self.duration_secs.max(1) as f64;
        let workers = format!(
            "{:.1} workers on average to KEDA's {:.1} ({} worker-seconds)",
            weir.worker_seconds as f64 / secs,
            keda.worker_seconds as f64 / secs,
            percent(weir.worker_seconds as f64, keda.worker_seconds as f64)
        );
        if weir.lag_seconds <= keda.lag_seconds {
            let less = if keda.lag_seconds > 0.0 {
                format!(
                    "{:.0}% fewer lag-seconds",
                    100.0 * (1.0 - weir.lag_seconds / keda.lag_seconds)
                )
            } else {
                "no lag either".to_string()
            };
            format!(
                "Weir: {less}, {} rescales to {}, {workers}",
                weir.rescales.len(),
                keda.rescales.len()
            )
        } else {
            format!(
                "Weir loses: {} more lag-seconds than KEDA, with {workers}. Weir sizes for its target \
                 utilization and scales once the load shows in its samples, then pays a pause per \
                 rescale ({}); KEDA bought less lag with more workers",
                percent(weir.lag_seconds, keda.lag_seconds).trim_start_matches('+'),
                weir.rescales.len()
            )
        }
    }
}

/// `a` relative to `b` as a signed percentage.
fn percent(a: f64, b: f64) -> String {
    if b == 0.0 {
        return if a == 0.0 {
            "the same".into()
        } else {
            "more".into()
        };
    }
    let change = 100.0 * (a / b - 1.0);
    if change.abs() < 0.5 {
        "the same".into()
    } else {
        format!("{change:+.0}%")
    }
}

/// A number with a k/M/G suffix.
pub fn si(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e9 {
        format!("{:.2}G", value / 1e9)
    } else if magnitude >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if magnitude >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if magnitude >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Seconds as `1h02m`, `3m05s` or `40s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn rescales(s: &Summary) -> String {
    format!(
        "{} ({} up, {} down)",
        s.rescales.len(),
        s.scale_ups,
        s.scale_downs
    )
}

fn catch_up(s: &Summary) -> String {
    if s.catch_up_secs.is_empty() {
        return "no step".into();
    }
    s.catch_up_secs
        .iter()
        .map(|c| c.map_or_else(|| "never".to_string(), duration))
        .collect::<Vec<_>>()
        .join(", ")
}

fn path(s: &Summary, initial: i32) -> String {
    let mut text = initial.to_string();
    for r in s.rescales.iter().take(8) {
        let _ = write!(text, "→{}", r.to);
    }
    if s.rescales.len() > 8 {
        text.push_str("→…");
    }
    text
}

/// A row of the table: its label and how to show one side's value (given
/// the initial parallelism).
type Row = (&'static str, fn(&Summary, i32) -> String);

/// The table of one comparison, for a terminal. `initial` is the parallelism
/// both started with.
pub fn table(c: &Comparison, initial: i32) -> String {
    let rows: [Row; 9] = [
        ("rescales", |s, _| rescales(s)),
        ("parallelism", path),
        ("peak lag (events)", |s, _| si(s.peak_lag as f64)),
        ("lag-seconds", |s, _| si(s.lag_seconds)),
        ("paused by rescales", |s, _| duration(s.paused_secs)),
        ("worker-seconds", |s, _| si(s.worker_seconds as f64)),
        ("over-provisioning", |s, _| si(s.over_provisioning as f64)),
        ("catch-up after steps", |s, _| catch_up(s)),
        ("final lag (events)", |s, _| si(s.final_lag as f64)),
    ];
    let mut out = format!(
        "{} ({}): {}\n",
        c.scenario,
        duration(c.duration_secs),
        c.description
    );
    let _ = writeln!(out, "  {:<22} {:<26} KEDA + HPA", "", "Weir");
    for (label, value) in rows {
        let _ = writeln!(
            out,
            "  {label:<22} {:<26} {}",
            value(&c.weir, initial),
            value(&c.keda, initial)
        );
    }
    let _ = writeln!(out, "  {}", c.verdict());
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::Tick;
    use super::*;

    fn params() -> JobParams {
        JobParams {
            capacity: 10_000.0,
            partitions: 12,
            pause_secs: 30,
            commit_interval_secs: 0,
        }
    }

    fn tick(input: u64, backlog: u64, parallelism: i32) -> Tick {
        Tick {
            input,
            processed: 0,
            backlog,
            lag: backlog,
            parallelism,
            paused: false,
        }
    }

    #[test]
    fn catch_up_counts_from_the_step_to_the_end_of_the_backlog() {
        let mut ticks = vec![tick(10_000, 0, 2); 5];
        // The step at second 5; behind from the 2nd second, caught up by the
        // end of the 5th.
        ticks.extend([
            tick(30_000, 0, 2),
            tick(30_000, 50_000, 2),
            tick(30_000, 90_000, 2),
            tick(30_000, 40_000, 2),
            tick(30_000, 0, 2),
        ]);
        let trace = Trace {
            ticks,
            rescales: vec![],
        };
        let summary = Summary::of(&trace, &params(), &[5]);
        assert_eq!(summary.catch_up_secs, [Some(5)]);
        assert_eq!(summary.peak_lag, 90_000);
        assert_eq!(summary.lag_seconds, 180_000.0);
        // 10k/s needs 1 worker and 30k/s 3: one spare worker for 5 s.
        assert_eq!(summary.over_provisioning, 5);
        assert_eq!(summary.worker_seconds, 20);
        let never = Summary::of(
            &Trace {
                ticks: trace.ticks[..8].to_vec(),
                rescales: vec![],
            },
            &params(),
            &[5],
        );
        assert_eq!(never.catch_up_secs, [None]);
        let mut absorbed = vec![tick(30_000, 0, 4); 70];
        absorbed.push(tick(30_000, 90_000, 4));
        let late = Summary::of(
            &Trace {
                ticks: absorbed,
                rescales: vec![],
            },
            &params(),
            &[0],
        );
        assert_eq!(
            late.catch_up_secs,
            [Some(0)],
            "a backlog a minute later is not the step's"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(si(1_234.0), "1.2k");
        assert_eq!(si(45_000.0), "45k");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(duration(3_725), "1h02m");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(40), "40s");
    }
}
