//! A small SVG writer and the plot of `weir simulate --plot`: per scenario,
//! the load, the parallelism and the lag over time, Weir against KEDA.

use std::fmt::Write as _;

use super::Run;
use super::report::{duration, si};

/// Colour of Weir's lines.
const WEIR: &str = "#1f6fd1";
/// Colour of KEDA's lines.
const KEDA: &str = "#e07b00";
/// Colour of the load.
const LOAD: &str = "#555555";

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const CHART_HEIGHT: f64 = 100.0;
const CHART_GAP: f64 = 34.0;
const TITLE_HEIGHT: f64 = 46.0;
const PANEL_HEIGHT: f64 = TITLE_HEIGHT + 3.0 * (CHART_HEIGHT + CHART_GAP);

/// An SVG document being written.
#[derive(Debug)]
pub struct Svg {
    body: String,
    width: f64,
    height: f64,
}

impl Svg {
    /// An empty document of `width` x `height` pixels on white.
    pub fn new(width: f64, height: f64) -> Self {
        let mut svg = Self {
            body: String::new(),
            width,
            height,
        };
        svg.rect(0.0, 0.0, width, height, "#ffffff");
        svg
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="{fill}"/>"#
        );
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="1"/>"#
        );
    }

    /// A line through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64) {
        let mut coordinates = String::new();
        for (x, y) in points {
            let _ = write!(coordinates, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}" stroke-linejoin="round"/>"#,
            coordinates.trim_end()
        );
    }

    /// Text at `(x, y)`; `anchor` is `start`, `middle` or `end`.
    pub fn text(&mut self, (x, y): (f64, f64), text: &str, size: f64, anchor: &str, fill: &str) {
        let escaped = text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{escaped}</text>"#
        );
    }

    /// The document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// One chart's frame: where it sits and what its axes span.
struct Frame {
    top: f64,
    seconds: usize,
    max: f64,
}

impl Frame {
    fn x(&self, second: usize) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * second as f64 / self.seconds.max(1) as f64
    }

    fn y(&self, value: f64) -> f64 {
        self.top + CHART_HEIGHT * (1.0 - value / self.max.max(1e-9))
    }

    /// Axes, the label and the scale.
    fn draw(&self, svg: &mut Svg, label: &str, max_label: &str) {
        let (left, right) = (LEFT, WIDTH - RIGHT);
        let bottom = self.top + CHART_HEIGHT;
        svg.line((left, bottom), (right, bottom), "#999999");
        svg.line((left, self.top), (left, bottom), "#999999");
        svg.line((left, self.top), (right, self.top), "#eeeeee");
        svg.text(
            (left - 6.0, self.top + 10.0),
            max_label,
            10.0,
            "end",
            "#333333",
        );
        svg.text((left - 6.0, bottom), "0", 10.0, "end", "#333333");
        svg.text((left, self.top - 5.0), label, 11.0, "start", "#333333");
        for i in 1..=4 {
            let second = self.seconds * i / 4;
            svg.text(
                (self.x(second), bottom + 12.0),
                &duration(second as u64),
                10.0,
                "middle",
                "#666666",
            );
        }
    }
}

/// Reduces `values` (one per second) to at most one point per pixel column,
/// keeping each column's highest value so that peaks survive.
fn columns(values: &[f64], frame: &Frame) -> Vec<(f64, f64)> {
    let per_column = (values.len() as f64 / (WIDTH - LEFT - RIGHT))
        .ceil()
        .max(1.0) as usize;
    values
        .chunks(per_column)
        .enumerate()
        .map(|(i, chunk)| {
            let peak = chunk.iter().cloned().fold(f64::MIN, f64::max);
            (frame.x(i * per_column), frame.y(peak))
        })
        .collect()
}

/// Reduces a step series (one value per second) to at most two points per
/// pixel column, its lowest and highest, so that a change back and forth
/// within a column still shows as a vertical stroke.
fn range_columns(values: &[f64], frame: &Frame) -> Vec<(f64, f64)> {
    let per_column = (values.len() as f64 / (WIDTH - LEFT - RIGHT))
        .ceil()
        .max(1.0) as usize;
    let mut points = Vec::new();
    for (i, chunk) in values.chunks(per_column).enumerate() {
        let x = frame.x(i * per_column);
        let low = chunk.iter().cloned().fold(f64::MAX, f64::min);
        let high = chunk.iter().cloned().fold(f64::MIN, f64::max);
        // Enter the column at the end nearest where the series comes from.
        let (first, second) = if chunk[0] > chunk[chunk.len() - 1] {
            (high, low)
        } else {
            (low, high)
        };
        points.push((x, frame.y(first)));
        points.push((x, frame.y(second)));
    }
    points
}

/// The plot of every run, one panel per scenario.
pub fn plot(runs: &[Run]) -> String {
    let mut svg = Svg::new(WIDTH, PANEL_HEIGHT * runs.len().max(1) as f64);
    for (i, run) in runs.iter().enumerate() {
        let top = PANEL_HEIGHT * i as f64;
        let c = &run.comparison;
        svg.text(
            (LEFT, top + 20.0),
            &format!("{}: {}", c.scenario, c.description),
            14.0,
            "start",
            "#000000",
        );
        svg.text((LEFT, top + 36.0), "Weir", 12.0, "start", WEIR);
        svg.text((LEFT + 40.0, top + 36.0), "KEDA + HPA", 12.0, "start", KEDA);
        svg.text(
            (LEFT + 120.0, top + 36.0),
            &format!(
                "rescales {} vs {}, lag-seconds {} vs {}",
                c.weir.rescales.len(),
                c.keda.rescales.len(),
                si(c.weir.lag_seconds),
                si(c.keda.lag_seconds)
            ),
            12.0,
            "start",
            "#333333",
        );
        let seconds = run.input.len();
        let chart_top =
            |k: f64| top + TITLE_HEIGHT + CHART_GAP * 0.5 + k * (CHART_HEIGHT + CHART_GAP);

        let load: Vec<f64> = run.input.iter().map(|&r| r as f64).collect();
        let frame = Frame {
            top: chart_top(0.0),
            seconds,
            max: load.iter().cloned().fold(0.0, f64::max),
        };
        frame.draw(&mut svg, "load (events/s)", &si(frame.max));
        svg.polyline(&columns(&load, &frame), LOAD, 1.0);

        let weir: Vec<f64> = run
            .weir
            .ticks
            .iter()
            .map(|t| f64::from(t.parallelism))
            .collect();
        let keda: Vec<f64> = run
            .keda
            .ticks
            .iter()
            .map(|t| f64::from(t.parallelism))
            .collect();
        let frame = Frame {
            top: chart_top(1.0),
            seconds,
            max: weir.iter().chain(&keda).cloned().fold(1.0, f64::max),
        };
        frame.draw(
            &mut svg,
            "parallelism (workers)",
            &format!("{:.0}", frame.max),
        );
        svg.polyline(&range_columns(&keda, &frame), KEDA, 1.5);
        svg.polyline(&range_columns(&weir, &frame), WEIR, 1.5);

        let weir: Vec<f64> = run.weir.ticks.iter().map(|t| t.backlog as f64).collect();
        let keda: Vec<f64> = run.keda.ticks.iter().map(|t| t.backlog as f64).collect();
        let frame = Frame {
            top: chart_top(2.0),
            seconds,
            max: weir.iter().chain(&keda).cloned().fold(1.0, f64::max),
        };
        frame.draw(&mut svg, "lag: events not yet processed", &si(frame.max));
        svg.polyline(&columns(&keda, &frame), KEDA, 1.2);
        svg.polyline(&columns(&weir, &frame), WEIR, 1.2);
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_document_is_closed() {
        let mut svg = Svg::new(10.0, 10.0);
        svg.text((1.0, 1.0), "a < b & c", 10.0, "start", "#000");
        let doc = svg.finish();
        assert!(doc.contains("a &lt; b &amp; c"));
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(doc.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn long_series_are_reduced_to_one_point_per_column_keeping_peaks() {
        let frame = Frame {
            top: 0.0,
            seconds: 86_400,
            max: 100.0,
        };
        let mut values = vec![0.0; 86_400];
        values[40_000] = 100.0;
        let points = columns(&values, &frame);
        assert!(points.len() <= (WIDTH - LEFT - RIGHT) as usize + 1);
        assert!(points.iter().any(|&(_, y)| y == frame.y(100.0)));
    }

    #[test]
    fn a_dip_within_one_column_still_shows() {
        let frame = Frame {
            top: 0.0,
            seconds: 86_400,
            max: 12.0,
        };
        let mut parallelism = vec![12.0; 86_400];
        parallelism[50_000..50_030].fill(3.0);
        let points = range_columns(&parallelism, &frame);
        assert!(points.iter().any(|&(_, y)| y == frame.y(3.0)));
        assert!(points.len() <= 2 * ((WIDTH - LEFT - RIGHT) as usize + 1));
    }
}
