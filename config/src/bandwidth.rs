//! Bandwidth caps of a target: `max_bandwidth` (always), and
//! `[[target.bandwidth_schedule]]` windows of the week with another cap,
//! e.g. 30 Mbit/s on weekdays 07:00–19:00 and unlimited otherwise:
//!
//! ```toml
//! [[target]]
//! # …
//! max_bandwidth = "unlimited"            # the default
//! [[target.bandwidth_schedule]]
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! from = "07:00"                         # local time of the agent's host
//! to = "19:00"                           # to < from: past midnight
//! max_bandwidth = "30 Mbit/s"
//! ```
//!
//! The first window that holds wins; outside every window `max_bandwidth`
//! holds. Rates are written with a unit: `bit/s`, `kbit/s`, `Mbit/s`,
//! `Gbit/s` (also `bps`, `kbps`, `Mbps`, `Gbps`), `B/s`, `kB/s`, `MB/s`,
//! `GB/s` (decimal units), or `unlimited`.

use serde::{Deserialize, Serialize};

/// A rate cap as written, and in bytes per second (None: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bandwidth {
    text: String,
    bytes_per_sec: Option<u64>,
}

impl Bandwidth {
    /// No cap.
    pub fn unlimited() -> Self {
        Bandwidth {
            text: "unlimited".into(),
            bytes_per_sec: None,
        }
    }

    /// Bytes per second (None: unlimited).
    pub fn bytes_per_sec(&self) -> Option<u64> {
        self.bytes_per_sec
    }
}

impl Default for Bandwidth {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl std::fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<Bandwidth> for String {
    fn from(b: Bandwidth) -> String {
        b.text
    }
}

impl TryFrom<String> for Bandwidth {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(Self::unlimited());
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let value: f64 = number.parse().map_err(|_| {
            format!("{text:?}: a rate is a number and a unit, e.g. \"30 Mbit/s\" or \"4 MB/s\", or \"unlimited\"")
        })?;
        let bits_per_unit = match unit {
            "bit/s" | "bps" => 1.0,
            "kbit/s" | "kbps" | "Kbit/s" => 1e3,
            "Mbit/s" | "Mbps" | "mbit/s" => 1e6,
            "Gbit/s" | "Gbps" | "gbit/s" => 1e9,
            "B/s" => 8.0,
            "kB/s" | "KB/s" => 8e3,
            "MB/s" => 8e6,
            "GB/s" => 8e9,
            "" => {
                return Err(format!(
                    "{text:?}: the unit is missing (e.g. \"30 Mbit/s\", \"4 MB/s\")"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (bit/s, kbit/s, Mbit/s, Gbit/s, B/s, kB/s, MB/s, GB/s)"
                ));
            }
        };
        let bytes = (value * bits_per_unit / 8.0).round();
        if !(1000.0..1e12).contains(&bytes) {
            return Err(format!(
                "{text:?}: out of range (at least 8 kbit/s, below 8 Tbit/s)"
            ));
        }
        Ok(Bandwidth {
            text: t.to_string(),
            bytes_per_sec: Some(bytes as u64),
        })
    }
}

/// A window of the week with its own cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// Days it applies on: `mon` … `sun`. Default: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Start, `HH:MM` (or `HH:MM:SS`), local time of the agent's host.
    pub from: String,
    /// End, `HH:MM` or `HH:MM:SS` (exclusive); before `from`: the window runs past
    /// midnight (and belongs to the day it starts on).
    pub to: String,
    /// The cap inside the window.
    pub max_bandwidth: Bandwidth,
}

/// Day names, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Seconds since midnight of `HH:MM` or `HH:MM:SS`.
pub fn seconds(time: &str) -> Option<u32> {
    let t = time.trim();
    let mut parts = t.split(':');
    let (h, m) = (parts.next()?, parts.next()?);
    let s = parts.next().unwrap_or("00");
    if parts.next().is_some() || [h, m, s].iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, m, s): (u32, u32, u32) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    (h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

impl BandwidthWindow {
    /// What is wrong with it, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.days {
            if !DAYS.contains(&d.as_str()) {
                out.push(format!("day {d:?} is not one of {}", DAYS.join(", ")));
            }
        }
        for (k, v) in [("from", &self.from), ("to", &self.to)] {
            if seconds(v).is_none() {
                out.push(format!(
                    "{k} = {v:?} is not a time HH:MM or HH:MM:SS (00:00 to 23:59:59)"
                ));
            }
        }
        if seconds(&self.from).is_some() && self.from == self.to {
            out.push("from and to are the same time: the window is empty".into());
        }
        out
    }

    /// Whether the window holds on `weekday` (0 = Monday) at `second` of
    /// the day.
    pub fn holds(&self, weekday: u32, second: u32) -> bool {
        let (Some(from), Some(to)) = (seconds(&self.from), seconds(&self.to)) else {
            return false;
        };
        let on = |day: u32| {
            self.days.is_empty()
                || self
                    .days
                    .iter()
                    .any(|d| DAYS.get(day as usize % 7) == Some(&d.as_str()))
        };
        if from < to {
            on(weekday) && (from..to).contains(&second)
        } else {
            // past midnight: the evening of its day, the morning after it
            (on(weekday) && second >= from) || (on((weekday + 6) % 7) && second < to)
        }
    }
}

/// The cap at `weekday` (0 = Monday) and `second` of the day, in bytes per
/// second (None: unlimited).
pub fn cap_at(
    max_bandwidth: &Bandwidth,
    schedule: &[BandwidthWindow],
    weekday: u32,
    second: u32,
) -> Option<u64> {
    schedule
        .iter()
        .find(|w| w.holds(weekday, second))
        .map_or(max_bandwidth, |w| &w.max_bandwidth)
        .bytes_per_sec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn bw(s: &str) -> Result<Bandwidth, String> {
        Bandwidth::try_from(s.to_string())
    }

    #[test]
    fn rates_with_units() {
        assert_eq!(bw("30 Mbit/s").unwrap().bytes_per_sec(), Some(3_750_000));
        assert_eq!(bw("100Mbps").unwrap().bytes_per_sec(), Some(12_500_000));
        assert_eq!(bw("4 MB/s").unwrap().bytes_per_sec(), Some(4_000_000));
        assert_eq!(bw("1.5 Gbit/s").unwrap().bytes_per_sec(), Some(187_500_000));
        assert_eq!(bw("unlimited").unwrap().bytes_per_sec(), None);
        assert!(bw("30").unwrap_err().contains("unit is missing"));
        assert!(bw("30 Mb").unwrap_err().contains("unknown unit"));
        assert!(bw("fast").unwrap_err().contains("a number and a unit"));
        assert!(bw("1 bit/s").unwrap_err().contains("out of range"));
    }

    #[test]
    fn windows_of_the_week() {
        let day = BandwidthWindow {
            days: ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec(),
            from: "07:00".into(),
            to: "19:00".into(),
            max_bandwidth: bw("30 Mbit/s").unwrap(),
        };
        let night = BandwidthWindow {
            days: vec!["fri".into()],
            from: "22:00".into(),
            to: "02:00".into(),
            max_bandwidth: bw("1 MB/s").unwrap(),
        };
        let all = bw("100 Mbit/s").unwrap();
        let s = [day.clone(), night];
        assert_eq!(cap_at(&all, &s, 0, 7 * 3600), Some(3_750_000)); // Monday 07:00
        assert_eq!(cap_at(&all, &s, 0, 19 * 3600), Some(12_500_000)); // 19:00 ends it
        assert_eq!(cap_at(&all, &s, 5, 12 * 3600), Some(12_500_000)); // Saturday noon
        assert_eq!(cap_at(&all, &s, 4, 23 * 3600), Some(1_000_000)); // Friday 23:00
        assert_eq!(cap_at(&all, &s, 5, 3600), Some(1_000_000)); // its Saturday 01:00
        assert_eq!(cap_at(&all, &s, 5, 3 * 3600), Some(12_500_000));
        assert_eq!(cap_at(&Bandwidth::unlimited(), &[], 2, 0), None);
        // to the second
        let short = BandwidthWindow {
            days: Vec::new(),
            from: "10:00:00".into(),
            to: "10:00:15".into(),
            max_bandwidth: bw("1 MB/s").unwrap(),
        };
        let s = [short];
        assert_eq!(cap_at(&all, &s, 3, 36_014), Some(1_000_000));
        assert_eq!(cap_at(&all, &s, 3, 36_015), Some(12_500_000));
        assert!(day.problems().is_empty());
        let bad = BandwidthWindow {
            days: vec!["monday".into()],
            from: "7:00".into(),
            to: "24:00".into(),
            ..day
        };
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
    }
}
