//! Monitoring thresholds and alert delivery (`[alerts]`).
//!
//! The agent watches its sources, targets and spool whether or not this
//! table is present (the defaults apply); each condition is a Prometheus
//! metric and a log event, and also a webhook POST when `webhook_url` is set.

use serde::{Deserialize, Serialize};

/// `[alerts]`: thresholds of the monitors, and where alerts go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// An HTTP(S) URL that receives each alert as a JSON POST; the body has a
    /// `text` field, so a Slack or Mattermost incoming webhook works as is.
    /// Absent: alerts are only logged and shown in the metrics.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Seconds allowed per attempt. Default: 10.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts before an alert is given up (logged). Default: 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// How often the monitors look. Default: 30 s.
    #[serde(default = "default_check_interval_secs")]
    pub check_interval_secs: u64,
    /// A target whose oldest undelivered object is older than this is
    /// stuck. Default: 3600 s.
    #[serde(default = "default_queue_stuck_after_secs")]
    pub queue_stuck_after_secs: u64,
    /// Alert when less room than this is left before the spool refuses
    /// stores (A700): the smaller of the disk's free space above
    /// `spool.min_free_bytes` and the room under `spool.max_bytes`.
    /// Default: 10 GiB.
    #[serde(default = "default_spool_headroom_min_bytes")]
    pub spool_headroom_min_bytes: u64,
    /// One calling AE title seen from two addresses within this window is a
    /// duplicate AE title. Default: 86400 s (one day).
    #[serde(default = "default_duplicate_ae_window_secs")]
    pub duplicate_ae_window_secs: u64,
    /// Alert this many days before this device's DICOM TLS certificate
    /// expires (and again once it has expired). Default: 30.
    #[serde(default = "default_certificate_expiry_warning_days")]
    pub certificate_expiry_warning_days: u64,
    /// Sources that must not fall silent, one `[[alerts.silence]]` each.
    #[serde(default)]
    pub silence: Vec<SilenceRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            timeout_secs: default_timeout_secs(),
            attempts: default_attempts(),
            check_interval_secs: default_check_interval_secs(),
            queue_stuck_after_secs: default_queue_stuck_after_secs(),
            spool_headroom_min_bytes: default_spool_headroom_min_bytes(),
            duplicate_ae_window_secs: default_duplicate_ae_window_secs(),
            certificate_expiry_warning_days: default_certificate_expiry_warning_days(),
            silence: Vec::new(),
        }
    }
}

/// `[[alerts.silence]]`: a source (calling AE) that normally sends during
/// its active hours; silence longer than `after_secs` of active time is the
/// first sign of a broken link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRule {
    /// The calling AE title of the source (a modality, the primary PACS).
    pub calling_ae: String,
    /// Active seconds without a stored object before the alert.
    pub after_secs: u64,
    /// When the source is expected to send, local time of the agent's
    /// host, `"HH:MM-HH:MM"` (may span midnight, e.g. `"22:00-06:00"`).
    /// Absent: all day.
    #[serde(default)]
    pub active_hours: Option<String>,
    /// Days the window opens on (`"mon"` … `"sun"`). Absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
}

/// A parsed active window: minutes since local midnight and the days of
/// the week (Monday = 0) on which it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveWindow {
    /// Opens at this minute of the day.
    pub start_min: u32,
    /// Closes at this minute (of the next day when not after `start_min`;
    /// equal to `start_min`: a whole day).
    pub end_min: u32,
    /// Opening days, Monday first.
    pub days: [bool; 7],
}

impl ActiveWindow {
    /// Seconds the window is open in one week.
    pub fn active_secs_per_week(&self) -> u64 {
        let minutes = if self.end_min > self.start_min {
            self.end_min - self.start_min
        } else {
            24 * 60 - self.start_min + self.end_min
        };
        u64::from(minutes) * 60 * self.days.iter().filter(|d| **d).count() as u64
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// What is wrong with a silence rule's `active_hours` or `days`
/// ([`SilenceRule::window`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// `active_hours` is not `HH:MM-HH:MM`.
    #[error("{hours:?} is not \"HH:MM-HH:MM\" (e.g. \"07:00-19:00\")")]
    Hours {
        /// The value as written.
        hours: String,
    },
    /// `days` is an empty list.
    #[error("days is empty: list at least one of mon … sun")]
    NoDays,
    /// An element of `days` that is not a day name.
    #[error("{day:?} is not a day: write mon, tue … sun")]
    Day {
        /// The element as written.
        day: String,
    },
}

impl SilenceRule {
    /// The window, or what is wrong with `active_hours` / `days`.
    pub fn window(&self) -> Result<ActiveWindow, WindowError> {
        let (start_min, end_min) = match &self.active_hours {
            None => (0, 0),
            Some(h) => parse_hours(h)?,
        };
        let days = match &self.days {
            None => [true; 7],
            Some(list) => {
                if list.is_empty() {
                    return Err(WindowError::NoDays);
                }
                let mut days = [false; 7];
                for d in list {
                    let i = DAY_NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(d.trim()))
                        .ok_or_else(|| WindowError::Day { day: d.clone() })?;
                    days[i] = true;
                }
                days
            }
        };
        Ok(ActiveWindow {
            start_min,
            end_min,
            days,
        })
    }
}

fn parse_hours(h: &str) -> Result<(u32, u32), WindowError> {
    let bad = || WindowError::Hours {
        hours: h.to_string(),
    };
    let (a, b) = h.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u32> {
        let (hh, mm) = t.trim().split_once(':')?;
        let (hh, mm): (u32, u32) = (hh.parse().ok()?, mm.parse().ok()?);
        (hh < 24 && mm < 60).then_some(hh * 60 + mm)
    };
    let start = minute(a).ok_or_else(bad)?;
    // "24:00" is a natural way to write the end of the day.
    let end = if b.trim() == "24:00" {
        0
    } else {
        minute(b).ok_or_else(bad)?
    };
    Ok((start, end))
}

fn default_timeout_secs() -> u64 {
    10
}
fn default_attempts() -> u32 {
    5
}
fn default_check_interval_secs() -> u64 {
    30
}
fn default_queue_stuck_after_secs() -> u64 {
    3600
}
fn default_spool_headroom_min_bytes() -> u64 {
    10 << 30
}
fn default_certificate_expiry_warning_days() -> u64 {
    30
}

fn default_duplicate_ae_window_secs() -> u64 {
    86_400
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rule(hours: Option<&str>, days: Option<&[&str]>) -> SilenceRule {
        SilenceRule {
            calling_ae: "CT1".into(),
            after_secs: 10_800,
            active_hours: hours.map(Into::into),
            days: days.map(|d| d.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn windows_parse() {
        let w = rule(Some("07:00-19:30"), Some(&["mon", "Fri"]))
            .window()
            .unwrap();
        assert_eq!((w.start_min, w.end_min), (420, 1170));
        assert_eq!(w.days, [true, false, false, false, true, false, false]);
        let w = rule(Some("22:00-06:00"), None).window().unwrap();
        assert_eq!((w.start_min, w.end_min, w.days), (1320, 360, [true; 7]));
        let w = rule(Some("00:00-24:00"), None).window().unwrap();
        assert_eq!((w.start_min, w.end_min), (0, 0));
        assert_eq!(rule(None, None).window().unwrap().start_min, 0);
    }

    #[test]
    fn active_time_per_week() {
        let w = |h: &str, d: Option<&[&str]>| rule(Some(h), d).window().unwrap();
        assert_eq!(w("07:00-19:00", None).active_secs_per_week(), 7 * 12 * 3600);
        assert_eq!(
            w("22:00-06:00", Some(&["sat"])).active_secs_per_week(),
            8 * 3600
        );
        assert_eq!(
            w("00:00-24:00", Some(&["mon", "tue"])).active_secs_per_week(),
            2 * 86_400
        );
        assert_eq!(
            rule(None, None).window().unwrap().active_secs_per_week(),
            7 * 86_400
        );
    }

    #[test]
    fn bad_windows_say_why() {
        for h in ["7-19", "07:00", "25:00-26:00", "07:60-08:00", "a:b-c:d"] {
            let e = rule(Some(h), None).window().unwrap_err().to_string();
            assert!(e.contains("HH:MM-HH:MM"), "{h}: {e}");
        }
        assert!(
            rule(None, Some(&["monday"]))
                .window()
                .unwrap_err()
                .to_string()
                .contains("not a day")
        );
        assert!(
            rule(None, Some(&[]))
                .window()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
