//! Event-time window assignment: which windows an event time belongs to.
//!
//! Windows are half-open intervals `[start, end)` in epoch milliseconds.
//! Tumbling and sliding windows are aligned to the Unix epoch. A session
//! window starts as `[t, t + gap)` for one event and grows by merging with
//! every session of its key it overlaps (see [`crate::engine::task`]).

use weir_crds::job::{WindowKind, WindowStep};

/// A half-open event-time interval `[start, end)` in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after the window.
    pub end: i64,
}

impl Window {
    /// Whether `t` lies in the window.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the two windows share a millisecond or touch (sessions that
    /// touch merge, as in Flink).
    pub fn touches(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// The most windows a sliding window may assign one event to, which bounds
/// the work per event.
pub const MAX_SLIDING_WINDOWS: i64 = 1000;

/// How events are assigned to windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed-size, non-overlapping windows aligned to the epoch.
    Tumbling {
        /// Window length in milliseconds (> 0).
        size: i64,
    },
    /// Windows of `size` starting every `slide` milliseconds.
    Sliding {
        /// Window length in milliseconds (> 0).
        size: i64,
        /// Distance between window starts in milliseconds (0 < slide <= size).
        slide: i64,
    },
    /// Per-key windows that close after `gap` milliseconds without events.
    Session {
        /// Inactivity gap in milliseconds (> 0).
        gap: i64,
    },
}

/// A window step of the spec is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    /// A duration the window kind needs is missing or not positive.
    #[error("{kind} window needs a positive {field}")]
    MissingDuration {
        /// The window kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A sliding window would put each event in too many windows.
    #[error(
        "sliding window of {size} ms every {slide} ms puts each event in more than {MAX_SLIDING_WINDOWS} windows"
    )]
    TooManyWindows {
        /// The size in milliseconds.
        size: i64,
        /// The slide in milliseconds.
        slide: i64,
    },
    /// A sliding window's slide is longer than its size.
    #[error("sliding window slide {slide} ms is longer than its size {size} ms")]
    SlideLongerThanSize {
        /// The size in milliseconds.
        size: i64,
        /// The slide in milliseconds.
        slide: i64,
    },
}

fn positive(
    d: Option<weir_crds::Duration>,
    kind: &'static str,
    field: &'static str,
) -> Result<i64, WindowError> {
    d.map(|d| d.as_millis())
        .filter(|&ms| ms > 0)
        .ok_or(WindowError::MissingDuration { kind, field })
}

impl WindowAssigner {
    /// The assigner of a window step.
    pub fn from_spec(step: &WindowStep) -> Result<WindowAssigner, WindowError> {
        Ok(match step.kind {
            WindowKind::Tumbling => WindowAssigner::Tumbling {
                size: positive(step.size, "tumbling", "size")?,
            },
            WindowKind::Sliding => {
                let size = positive(step.size, "sliding", "size")?;
                let slide = positive(step.slide, "sliding", "slide")?;
                if slide > size {
                    return Err(WindowError::SlideLongerThanSize { size, slide });
                }
                if size / slide >= MAX_SLIDING_WINDOWS {
                    return Err(WindowError::TooManyWindows { size, slide });
                }
                WindowAssigner::Sliding { size, slide }
            }
            WindowKind::Session => WindowAssigner::Session {
                gap: positive(step.gap, "session", "gap")?,
            },
        })
    }

    /// Appends to `out` every window containing event time `t`, latest start
    /// first. Times are expected within a few thousand years of the epoch
    /// (see [`crate::engine::event_time`]); arithmetic saturates rather than wraps.
    pub fn assign(&self, t: i64, out: &mut Vec<Window>) {
        match *self {
            WindowAssigner::Tumbling { size } => {
                let start = t - t.rem_euclid(size);
                out.push(Window {
                    start,
                    end: start.saturating_add(size),
                });
            }
            WindowAssigner::Sliding { size, slide } => {
                let mut start = t - t.rem_euclid(slide);
                while start > t.saturating_sub(size) {
                    out.push(Window {
                        start,
                        end: start.saturating_add(size),
                    });
                    start = start.saturating_sub(slide);
                }
            }
            WindowAssigner::Session { gap } => out.push(Window {
                start: t,
                end: t.saturating_add(gap),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUND: i64 = 253_402_300_799_999;

    #[test]
    fn tumbling_is_aligned_to_the_epoch() {
        let a = WindowAssigner::Tumbling { size: 60_000 };
        let mut out = Vec::new();
        a.assign(1_732_176_012_345, &mut out);
        assert_eq!(
            out,
            vec![Window {
                start: 1_732_176_000_000,
                end: 1_732_176_060_000
            }]
        );
        out.clear();
        a.assign(-1, &mut out);
        assert_eq!(
            out,
            vec![Window {
                start: -60_000,
                end: 0
            }]
        );
    }

    #[test]
    fn from_spec_checks_durations() {
        let step: WindowStep =
            serde_json::from_str(r#"{"type":"sliding","size":"10s","slide":"20s"}"#).unwrap();
        assert_eq!(
            WindowAssigner::from_spec(&step),
            Err(WindowError::SlideLongerThanSize {
                size: 10_000,
                slide: 20_000
            })
        );
        let step: WindowStep = serde_json::from_str(r#"{"type":"session"}"#).unwrap();
        assert!(WindowAssigner::from_spec(&step).is_err());
        let step: WindowStep =
            serde_json::from_str(r#"{"type":"sliding","size":"1m","slide":"15s"}"#).unwrap();
        assert_eq!(
            WindowAssigner::from_spec(&step),
            Ok(WindowAssigner::Sliding {
                size: 60_000,
                slide: 15_000
            })
        );
    }

    proptest! {
        #[test]
        fn tumbling_assigns_exactly_the_containing_window(t in -BOUND..BOUND, size in 1i64..10_000_000) {
            let mut out = Vec::new();
            WindowAssigner::Tumbling { size }.assign(t, &mut out);
            prop_assert_eq!(out.len(), 1);
            prop_assert!(out[0].contains(t));
            prop_assert_eq!(out[0].start.rem_euclid(size), 0);
            prop_assert_eq!(out[0].end - out[0].start, size);
        }

        #[test]
        fn sliding_assigns_every_containing_window(
            t in -BOUND..BOUND,
            slide in 1i64..100_000,
            factor in 1i64..20,
            extra in 0i64..100_000,
        ) {
            let size = slide * factor + extra % slide;
            let mut out = Vec::new();
            WindowAssigner::Sliding { size, slide }.assign(t, &mut out);
            // Every assigned window contains t, is aligned and has the size.
            for w in &out {
                prop_assert!(w.contains(t));
                prop_assert_eq!(w.start.rem_euclid(slide), 0);
                prop_assert_eq!(w.end - w.start, size);
            }
            // And every aligned window containing t is assigned: the aligned
            // starts in (t - size, t] number exactly this many.
            let first = t - t.rem_euclid(slide);
            let expected = (0..).map(|i| first - i * slide).take_while(|s| *s > t - size).count();
            prop_assert_eq!(out.len(), expected);
            if extra % slide == 0 {
                prop_assert_eq!(out.len() as i64, size / slide);
            }
            let mut starts: Vec<_> = out.iter().map(|w| w.start).collect();
            starts.dedup();
            prop_assert_eq!(starts.len(), out.len());
        }

        #[test]
        fn session_window_starts_at_the_event(t in -BOUND..BOUND, gap in 1i64..10_000_000) {
            let mut out = Vec::new();
            WindowAssigner::Session { gap }.assign(t, &mut out);
            prop_assert_eq!(out, vec![Window { start: t, end: t + gap }]);
        }
    }
}
