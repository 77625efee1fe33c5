//! The drill chart: recovery time of each drill of one target over time,
//! as inline SVG. A time axis (dates and times, UTC), a seconds axis with
//! round ticks, the objective as a dashed line, passed drills as dots and
//! failed ones as crosses (over the objective: a ring), each with a tooltip.

use std::fmt::Write as _;

use super::{esc, iso};

/// One drill on the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Drill number.
    pub number: u64,
    /// Start (Unix ms).
    pub at_ms: u64,
    /// Measured recovery time, seconds.
    pub secs: f64,
    /// Passed.
    pub ok: bool,
    /// Slower than the objective.
    pub over_objective: bool,
}

const W: f64 = 860.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 48.0;

/// Round steps for an axis from 0 to `max`: 1, 2 or 5 × 10^n, about
/// `want` of them.
pub fn ticks(max: f64, want: usize) -> Vec<f64> {
    if !max.is_finite() || max <= 0.0 {
        return vec![0.0, 1.0];
    }
    let raw = max / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let n = (max / step).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn label_secs(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A time label: date and time, shortened to what the span needs.
fn label_time(ms: u64, span_ms: u64) -> (String, String) {
    let i = iso(ms);
    let (date, time) = (&i[..10], &i[11..16]);
    if span_ms >= 4 * 86_400_000 {
        (date.to_string(), String::new())
    } else if span_ms >= 2 * 3_600_000 {
        (date[5..].to_string(), format!("{time}Z"))
    } else {
        (date[5..].to_string(), format!("{}Z", &i[11..19]))
    }
}

/// The chart of `points` (any order) for `target`, with `objective` in
/// seconds if one is set.
pub fn svg(target: &str, points: &[Point], objective: Option<u64>) -> String {
    let mut pts: Vec<&Point> = points.iter().collect();
    pts.sort_by_key(|p| p.at_ms);
    let (t0, t1) = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) if b.at_ms >= a.at_ms + 60_000 => (a.at_ms, b.at_ms),
        // drills within a minute: half a minute either side
        (Some(a), Some(b)) if b.at_ms > a.at_ms => {
            (a.at_ms.saturating_sub(30_000), b.at_ms + 30_000)
        }
        // one drill (or all at once): an hour either side
        (Some(a), _) => (a.at_ms.saturating_sub(3_600_000), a.at_ms + 3_600_000),
        _ => (0, 1),
    };
    let top = pts
        .iter()
        .map(|p| p.secs)
        .chain(objective.map(|o| o as f64))
        .fold(0.0_f64, f64::max)
        * 1.1;
    let yt = ticks(top.max(0.001), 5);
    let ymax = yt.last().copied().unwrap_or(1.0).max(0.001);
    let span = (t1 - t0) as f64;
    let x = |ms: u64| LEFT + (W - LEFT - RIGHT) * (ms.saturating_sub(t0)) as f64 / span;
    let y = |v: f64| H - BOTTOM - (H - TOP - BOTTOM) * v / ymax;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" data-target=\"{t}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"recovery time of each drill of {t} over time\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"system-ui,sans-serif\" font-size=\"11\">",
        t = esc(target)
    );
    // seconds axis, with grid lines
    s.push_str("<g class=\"y-axis\">");
    for v in &yt {
        let yy = y(*v);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e3e6ea\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            label_secs(*v)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#445\"/><text class=\"axis-title\" transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">recovery time (s)</text></g>",
        H - BOTTOM,
        (TOP + H - BOTTOM) / 2.0
    );
    // time axis
    s.push_str("<g class=\"x-axis\">");
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#445\"/>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let n = 5u64;
    for i in 0..=n {
        let ms = t0 + (t1 - t0) * i / n;
        let xx = x(ms);
        let (a, b) = label_time(ms, t1 - t0);
        let anchor = match i {
            0 => "start",
            i if i == n => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#445\"/><text class=\"tick\" x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{a}</text>",
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 17.0
        );
        if !b.is_empty() {
            let _ = write!(
                s,
                "<text class=\"tick\" x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{b}</text>",
                H - BOTTOM + 30.0
            );
        }
    }
    let _ = write!(
        s,
        "<text class=\"axis-title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">drill start (UTC)</text></g>",
        W - RIGHT,
        H - 4.0
    );
    if let Some(o) = objective {
        let yy = y(o as f64);
        let _ = write!(
            s,
            "<line class=\"objective\" data-seconds=\"{o}\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#b00020\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#b00020\">objective {o} s</text>",
            W - RIGHT,
            W - RIGHT - 2.0,
            yy - 4.0
        );
    }
    if pts.len() > 1 {
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at_ms), y(p.secs)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#3d6a8a\" stroke-width=\"1.5\" points=\"{}\"/>",
            line.join(" ")
        );
    }
    for p in &pts {
        let (xx, yy) = (x(p.at_ms), y(p.secs));
        let tip = format!(
            "drill #{} at {}: {:.2} s, {}",
            p.number,
            iso(p.at_ms),
            p.secs,
            if p.ok {
                "passed"
            } else if p.over_objective {
                "over the objective"
            } else {
                "FAILED"
            }
        );
        if p.ok {
            let _ = write!(
                s,
                "<circle class=\"point passed\" cx=\"{xx:.1}\" cy=\"{yy:.1}\" r=\"4\" fill=\"#176b2c\"><title>{tip}</title></circle>"
            );
        } else if p.over_objective {
            let _ = write!(
                s,
                "<circle class=\"point failed over-objective\" cx=\"{xx:.1}\" cy=\"{yy:.1}\" r=\"5\" fill=\"#fff\" stroke=\"#9a5b00\" stroke-width=\"2.5\"><title>{tip}</title></circle>"
            );
        } else {
            let _ = write!(
                s,
                "<path class=\"point failed\" d=\"M{:.1} {:.1}l10 10m0 -10l-10 10\" stroke=\"#b00020\" stroke-width=\"2.5\"><title>{tip}</title></path>",
                xx - 5.0,
                yy - 5.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ticks() {
        assert_eq!(ticks(9.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.3, 5), vec![0.0, 0.1, 0.2, 0.30000000000000004]);
        assert_eq!(ticks(120.0, 5), vec![0.0, 50.0, 100.0, 150.0]);
        assert_eq!(ticks(0.0, 5), vec![0.0, 1.0]);
    }

    #[test]
    fn axes_objective_and_failed_drills_marked() {
        let day = 86_400_000;
        let p = |n: u64, d: u64, secs: f64, ok: bool, over: bool| Point {
            number: n,
            at_ms: 1_795_392_000_000 + d * day,
            secs,
            ok,
            over_objective: over,
        };
        let s = svg(
            "mirror<1>",
            &[
                p(2, 1, 30.0, false, false),
                p(1, 0, 3.0, true, false),
                p(3, 9, 70.0, false, true),
            ],
            Some(60),
        );
        assert!(s.contains("data-target=\"mirror&lt;1&gt;\""));
        assert_eq!(s.matches("class=\"point passed\"").count(), 1);
        assert_eq!(s.matches("class=\"point failed\"").count(), 1);
        assert_eq!(
            s.matches("class=\"point failed over-objective\"").count(),
            1
        );
        assert!(s.contains("class=\"objective\" data-seconds=\"60\""));
        assert!(s.contains(">objective 60 s<"));
        // dates on the time axis (nine days: dates only), seconds ticks
        assert!(s.contains(">2026-11-23<"), "{s}");
        assert!(s.contains(">2026-12-02<"), "{s}");
        assert!(s.contains("recovery time (s)"));
        assert!(s.contains(">80<"), "{s}");
        // short spans show times
        let s = svg("m", &[p(1, 0, 1.0, true, false)], None);
        assert!(s.contains(">23:00Z<") && s.contains(">01:00Z<"), "{s}");
        // drills minutes apart: to the second
        let s = svg(
            "m",
            &[
                p(1, 0, 1.0, true, false),
                Point {
                    at_ms: 1_795_392_090_000,
                    ..p(2, 0, 1.0, true, false)
                },
            ],
            None,
        );
        assert!(
            s.contains(">00:00:00Z<") && s.contains(">00:01:30Z<"),
            "{s}"
        );
        assert!(!s.contains("objective"));
    }
}
