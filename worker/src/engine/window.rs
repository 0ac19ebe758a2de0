//! Event-time window assignment: which windows an event time belongs to.
//!
//! Windows are half-open intervals `[start, end)` in epoch milliseconds.
//! Tumbling and sliding windows are aligned to the Unix epoch. A tumbling
//! window with a time zone is aligned to that zone's wall clock instead:
//! its boundaries are local times (local midnight for day windows), so a
//! day window lasts 23 or 25 hours on daylight-saving days. A session
//! window starts as `[t, t + gap)` for one event and grows by merging with
//! every session of its key it overlaps (see [`crate::engine::task`]).

use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use weir_crds::job::{WindowKind, WindowStep};
// The shortest window a time zone may align: the loops that find a window
// around a daylight-saving fold or gap then take a few steps.
use weir_crds::validate::{MAX_COUNT_PANES, MIN_ZONED_WINDOW_MS};

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

/// A time zone whose wall clock aligns windows, from the IANA database
/// bundled with the worker (the same rules on every host).
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Zone {
    /// The zone of IANA name `name`, such as `Europe/Berlin`.
    pub fn named(name: &str) -> Result<Zone, WindowError> {
        let tz = TimeZoneDatabase::bundled()
            .get(name)
            .map_err(|_| WindowError::UnknownTimeZone(name.to_owned()))?;
        Ok(Zone {
            name: name.to_owned(),
            tz,
        })
    }

    /// Its IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wall-clock time at instant `t`, as milliseconds since the
    /// wall clock's 1970-01-01T00:00. Outside the calendar's range, `t`.
    fn civil(&self, t: i64) -> i64 {
        match Timestamp::from_millisecond(t) {
            Ok(ts) => t.saturating_add(i64::from(self.tz.to_offset(ts).seconds()) * 1000),
            Err(_) => t,
        }
    }

    /// The instant of wall-clock time `civil` (see [`Zone::civil`]): in a
    /// fold the earlier of the two, in a gap the instant the clock jumps
    /// past it. So later wall-clock times never map to earlier instants,
    /// and the windows of a zone partition the timeline.
    fn instant(&self, civil: i64) -> i64 {
        let Ok(naive) = Timestamp::from_millisecond(civil) else {
            return civil;
        };
        let wall = TimeZone::UTC.to_datetime(naive);
        let at = |offset: jiff::tz::Offset| civil - i64::from(offset.seconds()) * 1000;
        match self.tz.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Unambiguous { offset } => at(offset),
            AmbiguousOffset::Fold { before, .. } => at(before),
            AmbiguousOffset::Gap { before, .. } => {
                // Read with the offset before the gap, the time lies past
                // the jump by as much as it lies into the gap: the jump is
                // the last transition up to there.
                let later = at(before);
                Timestamp::from_millisecond(later.saturating_add(1))
                    .ok()
                    .and_then(|ts| self.tz.preceding(ts).next())
                    .map_or(later, |transition| transition.timestamp().as_millisecond())
            }
        }
    }

    /// The tumbling window of `size` wall-clock milliseconds containing
    /// `t`: from the last aligned local boundary at or before `t` to the
    /// next one after it. Around a fold or gap an aligned local time can
    /// map before or after `t`, hence the steps.
    fn tumbling(&self, t: i64, size: i64) -> Window {
        let civil = self.civil(t);
        let mut start_civil = civil - civil.rem_euclid(size);
        let mut start = self.instant(start_civil);
        while start > t {
            start_civil -= size;
            start = self.instant(start_civil);
        }
        let mut end = self.instant(start_civil.saturating_add(size));
        while end <= t {
            start_civil = start_civil.saturating_add(size);
            start = end;
            end = self.instant(start_civil.saturating_add(size));
        }
        Window { start, end }
    }
}

/// How events are assigned to windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed-size, non-overlapping windows aligned to the epoch, or to the
    /// wall clock of `zone`.
    Tumbling {
        /// Window length in milliseconds (> 0); wall-clock milliseconds
        /// with a zone.
        size: i64,
        /// The time zone whose local times bound the windows.
        zone: Option<Zone>,
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
    /// Windows of `size` events of a key, one ending every `slide` events,
    /// in the order the task reads them: no event time, no timers, so
    /// [`WindowAssigner::assign`] gives no time window for them (see
    /// [`crate::engine::task`]'s count windows).
    Count {
        /// Events per window (> 0).
        size: u64,
        /// Events between two windows' ends (divides `size`).
        slide: u64,
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
    /// A count window without a positive count.
    #[error("count window needs a count of at least 1")]
    MissingCount,
    /// A count window's slide does not divide its count, or puts each
    /// event in too many windows.
    #[error(
        "count window of {size} events every {slide} events: slideCount must divide count, at most {MAX_COUNT_PANES} times"
    )]
    CountSlide {
        /// Events per window.
        size: u32,
        /// Events between windows.
        slide: u32,
    },
    /// The time zone is not in the IANA time zone database.
    #[error("unknown time zone {0:?}: give an IANA name such as Europe/Berlin")]
    UnknownTimeZone(String),
    /// A time zone is set on a window kind that does not take one.
    #[error("timeZone applies to tumbling windows only, not to {0} windows")]
    ZoneOnWrongKind(&'static str),
    /// A window with a time zone is shorter than an hour.
    #[error("a window with a timeZone lasts at least 1h, not {0} ms")]
    ZonedWindowTooShort(i64),
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
        let zone = step.time_zone.as_deref().map(Zone::named).transpose()?;
        if zone.is_some() && step.kind != WindowKind::Tumbling {
            return Err(WindowError::ZoneOnWrongKind(match step.kind {
                WindowKind::Sliding => "sliding",
                WindowKind::Count => "count",
                _ => "session",
            }));
        }
        Ok(match step.kind {
            WindowKind::Tumbling => {
                let size = positive(step.size, "tumbling", "size")?;
                if zone.is_some() && size < MIN_ZONED_WINDOW_MS {
                    return Err(WindowError::ZonedWindowTooShort(size));
                }
                WindowAssigner::Tumbling { size, zone }
            }
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
            WindowKind::Count => {
                let size = step
                    .count
                    .filter(|&c| c > 0)
                    .ok_or(WindowError::MissingCount)?;
                let slide = step.slide_count.unwrap_or(size);
                if slide == 0 || !size.is_multiple_of(slide) || size / slide > MAX_COUNT_PANES {
                    return Err(WindowError::CountSlide { size, slide });
                }
                WindowAssigner::Count {
                    size: u64::from(size),
                    slide: u64::from(slide),
                }
            }
        })
    }

    /// Appends to `out` every window containing event time `t`, latest start
    /// first. Times are expected within a few thousand years of the epoch
    /// (see [`crate::engine::event_time`]); arithmetic saturates rather than wraps.
    pub fn assign(&self, t: i64, out: &mut Vec<Window>) {
        match *self {
            WindowAssigner::Tumbling {
                size,
                zone: Some(ref zone),
            } => out.push(zone.tumbling(t, size)),
            WindowAssigner::Tumbling { size, zone: None } => {
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
            WindowAssigner::Count { .. } => {}
        }
    }

    /// The tumbling or sliding window that starts at `start` (a window this
    /// assigner made); `None` for sessions, which have no fixed end.
    pub fn window_starting_at(&self, start: i64) -> Option<Window> {
        match *self {
            WindowAssigner::Tumbling {
                size,
                zone: Some(ref zone),
            } => Some(zone.tumbling(start, size)),
            WindowAssigner::Tumbling { size, zone: None }
            | WindowAssigner::Sliding { size, .. } => Some(Window {
                start,
                end: start.saturating_add(size),
            }),
            WindowAssigner::Session { .. } | WindowAssigner::Count { .. } => None,
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
        let a = WindowAssigner::Tumbling {
            size: 60_000,
            zone: None,
        };
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

    /// Epoch milliseconds of a zoned time such as
    /// `2026-03-29T00:00[Europe/Berlin]`.
    fn ms(zoned: &str) -> i64 {
        zoned
            .parse::<jiff::Zoned>()
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    fn zoned(size: i64, zone: &str) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size,
            zone: Some(Zone::named(zone).unwrap()),
        }
    }

    fn only(assigner: &WindowAssigner, t: i64) -> Window {
        let mut out = Vec::new();
        assigner.assign(t, &mut out);
        assert_eq!(out.len(), 1);
        out[0]
    }

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    #[test]
    fn day_windows_in_a_zone_run_from_local_midnight_to_local_midnight() {
        let days = zoned(DAY, "Europe/Berlin");
        // An ordinary day: 24 hours from local midnight (23:00 UTC).
        let w = only(&days, ms("2026-07-14T12:00[Europe/Berlin]"));
        assert_eq!(w.start, ms("2026-07-14T00:00[Europe/Berlin]"));
        assert_eq!(w.end - w.start, DAY);
        // Clocks go forward on 29 March 2026: a day of 23 hours.
        let spring = only(&days, ms("2026-03-29T12:00[Europe/Berlin]"));
        assert_eq!(spring.start, ms("2026-03-29T00:00[Europe/Berlin]"));
        assert_eq!(spring.end, ms("2026-03-30T00:00[Europe/Berlin]"));
        assert_eq!(spring.end - spring.start, 23 * HOUR);
        // And back on 25 October 2026: 25 hours, both 02:30s in it.
        let autumn = only(&days, ms("2026-10-25T02:30+02:00[Europe/Berlin]"));
        assert_eq!(autumn.end - autumn.start, 25 * HOUR);
        assert_eq!(
            only(&days, ms("2026-10-25T02:30+01:00[Europe/Berlin]")),
            autumn
        );
        // Just before midnight belongs to the day before.
        let before = only(&days, ms("2026-03-29T00:00[Europe/Berlin]") - 1);
        assert_eq!(before.end, spring.start);
    }

    #[test]
    fn hour_windows_in_a_zone_skip_the_missing_hour_and_hold_the_repeated_one() {
        let hours = zoned(HOUR, "Europe/Berlin");
        // 02:00 to 03:00 does not exist on 29 March: 01:xx is followed by 03:xx.
        let one = only(&hours, ms("2026-03-29T01:30[Europe/Berlin]"));
        let three = only(&hours, ms("2026-03-29T03:30[Europe/Berlin]"));
        assert_eq!(one.end, three.start);
        assert_eq!(three.end - three.start, HOUR);
        // 02:00 to 03:00 happens twice on 25 October: one window of two hours.
        let first = only(&hours, ms("2026-10-25T02:10+02:00[Europe/Berlin]"));
        assert_eq!(first.end - first.start, 2 * HOUR);
        assert_eq!(
            only(&hours, ms("2026-10-25T02:50+01:00[Europe/Berlin]")),
            first
        );
    }

    #[test]
    fn a_zone_is_checked_and_only_tumbling_windows_of_an_hour_or_more_take_one() {
        let step = |json: &str| WindowAssigner::from_spec(&serde_json::from_str(json).unwrap());
        assert_eq!(
            step(r#"{"type":"tumbling","size":"24h","timeZone":"Europe/Berlinn"}"#),
            Err(WindowError::UnknownTimeZone("Europe/Berlinn".into()))
        );
        assert_eq!(
            step(r#"{"type":"sliding","size":"24h","slide":"1h","timeZone":"Europe/Berlin"}"#),
            Err(WindowError::ZoneOnWrongKind("sliding"))
        );
        assert_eq!(
            step(r#"{"type":"tumbling","size":"30m","timeZone":"Europe/Berlin"}"#),
            Err(WindowError::ZonedWindowTooShort(1_800_000))
        );
        assert_eq!(
            step(r#"{"type":"tumbling","size":"24h","timeZone":"Asia/Tokyo"}"#),
            Ok(zoned(DAY, "Asia/Tokyo"))
        );
    }

    #[test]
    fn count_windows_slide_by_a_divisor_of_their_count() {
        let step = |json: &str| WindowAssigner::from_spec(&serde_json::from_str(json).unwrap());
        assert_eq!(
            step(r#"{"type":"count","count":100,"slideCount":20}"#),
            Ok(WindowAssigner::Count {
                size: 100,
                slide: 20
            })
        );
        assert_eq!(
            step(r#"{"type":"count","count":7}"#),
            Ok(WindowAssigner::Count { size: 7, slide: 7 })
        );
        assert_eq!(
            step(r#"{"type":"count","count":100,"slideCount":30}"#),
            Err(WindowError::CountSlide {
                size: 100,
                slide: 30
            })
        );
        assert_eq!(step(r#"{"type":"count"}"#), Err(WindowError::MissingCount));
        assert_eq!(
            step(r#"{"type":"count","count":10,"timeZone":"Europe/Berlin"}"#),
            Err(WindowError::ZoneOnWrongKind("count"))
        );
    }

    proptest! {
        #[test]
        fn tumbling_assigns_exactly_the_containing_window(t in -BOUND..BOUND, size in 1i64..10_000_000) {
            let mut out = Vec::new();
            WindowAssigner::Tumbling { size, zone: None }.assign(t, &mut out);
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

        /// In any zone (daylight saving of an hour, of half an hour at Lord
        /// Howe, of two hours at Troll, at midnight in Santiago) windows
        /// contain their events, follow one another without gap or
        /// overlap, and are found again from their start (as timers do).
        #[test]
        fn zoned_windows_partition_the_timeline(
            from in 1_577_836_800_000i64..1_893_456_000_000,
            near in -3 * DAY..3 * DAY,
            zone in prop::sample::select(vec![
                "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                "Antarctica/Troll", "America/Santiago", "Asia/Kolkata",
            ]),
            hours in prop::sample::select(vec![1i64, 2, 3, 6, 24, 48, 168]),
        ) {
            // Near the zone's next transition, where the trouble is.
            let tz = Zone::named(zone).unwrap().tz;
            let transition = tz
                .following(Timestamp::from_millisecond(from).unwrap())
                .next()
                .map_or(from, |t| t.timestamp().as_millisecond());
            let t = transition + near;
            let assigner = zoned(hours * HOUR, zone);
            let w = only(&assigner, t);
            prop_assert!(w.contains(t), "{w:?} does not contain {t}");
            prop_assert_eq!(only(&assigner, w.end).start, w.end);
            prop_assert_eq!(only(&assigner, w.start - 1).end, w.start);
            prop_assert_eq!(assigner.window_starting_at(w.start), Some(w));
            // A wall-clock window is never more than two hours off its size.
            prop_assert!((w.end - w.start - hours * HOUR).abs() <= 2 * HOUR);
        }
    }
}
