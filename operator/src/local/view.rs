//! What `weir run` shows: a status line redrawn every second while the job
//! runs, the events as they happen, and the closing summary.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use serde::Serialize;

use super::controller::{Happening, Rescale};
use super::model::Comparison;

/// One redraw of the live view.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// Seconds since the start.
    pub elapsed_secs: f64,
    /// Seconds the run lasts, when known.
    pub total_secs: Option<f64>,
    /// Events per second into the source.
    pub input_rate: f64,
    /// Events per second the profile asks for now.
    pub target_rate: f64,
    /// Records per second out of the workers.
    pub output_rate: f64,
    /// Records waiting in the source.
    pub lag: i64,
    /// Running workers.
    pub parallelism: i32,
    /// The job's phase (or the operation's stage).
    pub phase: String,
    /// The newest savepoint.
    pub last_savepoint: Option<String>,
}

/// A bar of `width` cells filled to `done` of 1.
pub fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.1}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

/// The status line of a frame.
pub fn line(frame: &Frame) -> String {
    let mut out = String::new();
    if let Some(total) = frame.total_secs {
        let _ = write!(
            out,
            "{} {:>4.0}/{:.0}s ",
            bar(frame.elapsed_secs / total.max(1e-9), 20),
            frame.elapsed_secs,
            total
        );
    } else {
        let _ = write!(out, "{:>5.0}s ", frame.elapsed_secs);
    }
    let _ = write!(
        out,
        "in {:>8} of {:>8}  out {:>8}  lag {:>8}  workers {:>2}  {:<12} last savepoint {}",
        rate(frame.input_rate),
        rate(frame.target_rate),
        rate(frame.output_rate),
        frame.lag,
        frame.parallelism,
        frame.phase,
        frame.last_savepoint.as_deref().unwrap_or("-"),
    );
    out
}

/// Draws frames and events on the terminal (one line per frame when the
/// output is not a terminal).
pub struct LiveView {
    shown: bool,
    terminal: bool,
    shown_events: usize,
}

impl LiveView {
    /// A view on standard error, or none unless `shown`.
    pub fn new(shown: bool) -> LiveView {
        LiveView {
            shown,
            terminal: std::io::stderr().is_terminal(),
            shown_events: 0,
        }
    }

    /// Shows the new `happenings` and then `frame`.
    pub fn draw(&mut self, frame: &Frame, happenings: &[Happening]) {
        if !self.shown {
            return;
        }
        let mut err = std::io::stderr().lock();
        for h in happenings.iter().skip(self.shown_events) {
            let clear = if self.terminal { "\r\x1b[2K" } else { "" };
            let kind = if h.warning { "Warning" } else { "Normal" };
            let _ = writeln!(
                err,
                "{clear}{:>6.1}s  {kind:<7} {:<22} {}",
                h.at_secs, h.reason, h.note
            );
        }
        self.shown_events = happenings.len();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{}", line(frame));
        } else {
            let _ = writeln!(err, "{}", line(frame));
        }
        let _ = err.flush();
    }

    /// Ends the live line.
    pub fn finish(&mut self) {
        if self.shown && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The job.
    pub job: String,
    /// Seconds the run lasted.
    pub duration_secs: f64,
    /// Events produced to the source.
    pub events_in: u64,
    /// Records the job wrote to its sink.
    pub records_out: u64,
    /// Checkpoints the workers completed.
    pub checkpoints: u64,
    /// Every rescale (and the final stop).
    pub rescales: Vec<Rescale>,
    /// The final savepoint, which a later run resumes from.
    pub final_savepoint: Option<String>,
    /// The output against the model.
    pub comparison: Comparison,
    /// Events the model sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Events the model found late.
    pub late: u64,
    /// Why the run ended early, if it did.
    pub failure: Option<String>,
    /// Everything that happened (the events the operator would record).
    pub events: Vec<Happening>,
}

impl Summary {
    /// Whether the run did what it must: no failure, and the output
    /// equals the model.
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.comparison.matches()
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{} ran {:.0}s", self.job, self.duration_secs);
        let _ = writeln!(out, "  events in        {}", self.events_in);
        let _ = writeln!(out, "  records out      {}", self.records_out);
        let _ = writeln!(out, "  checkpoints      {}", self.checkpoints);
        let _ = writeln!(
            out,
            "  dead letters     {} (model), late {} (model)",
            self.dead_letters, self.late
        );
        for r in &self.rescales {
            let _ = writeln!(
                out,
                "  at {:>5.1}s  {} -> {} workers through savepoint {}: processing paused {:.1}s ({})",
                r.at_secs,
                r.from,
                r.to,
                r.savepoint.as_deref().unwrap_or("-"),
                r.pause_secs,
                r.reason
            );
        }
        if let Some(savepoint) = &self.final_savepoint {
            let _ = writeln!(out, "  stopped with savepoint {savepoint}");
        }
        if let Some(failure) = &self.failure {
            let _ = writeln!(out, "  FAILED: {failure}");
        }
        let c = &self.comparison;
        if c.matches() {
            let _ = writeln!(
                out,
                "outputs match the model: {} records, 0 lost, 0 duplicated",
                c.expected
            );
        } else {
            let _ = writeln!(
                out,
                "outputs DIFFER from the model: {} expected, {} written, {} lost, {} duplicated ({} of them not in the model at all)",
                c.expected, c.written, c.lost, c.duplicated, c.unexpected
            );
            for (what, examples) in [
                ("lost", &c.lost_examples),
                ("written beyond the model", &c.duplicated_examples),
            ] {
                for record in examples {
                    let _ = writeln!(out, "  {what}: {record}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar(0.0, 4), "[----]");
        assert_eq!(bar(0.5, 4), "[##--]");
        assert_eq!(bar(2.0, 4), "[####]");
    }

    #[test]
    fn the_last_line_says_whether_the_outputs_match() {
        let mut summary = Summary {
            job: "analytics/clicks".into(),
            comparison: Comparison {
                expected: 10,
                written: 10,
                ..Comparison::default()
            },
            ..Summary::default()
        };
        assert!(summary.ok());
        assert!(summary.text().trim_end().ends_with("0 lost, 0 duplicated"));
        summary.comparison.lost = 2;
        assert!(!summary.ok());
        assert!(summary.text().trim_end().ends_with(
            "10 expected, 10 written, 2 lost, 0 duplicated (0 of them not in the model at all)"
        ));
    }
}
