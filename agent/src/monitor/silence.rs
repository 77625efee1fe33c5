//! How long a source has been silent *during its active hours*: the overlap
//! of `[last store, now]` with the rule's daily windows in local time.
//! Nights and weekends outside the window do not count, so a CT that stops
//! at 19:00 on Friday is not "silent for 60 hours" at 07:00 on Monday.

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime, TimeZone};
use pacs_mirror_config::ActiveWindow;

const DAY_MS: u64 = 86_400_000;

/// Milliseconds of `[from_ms, to_ms]` inside `w`'s windows, in the time zone
/// `tz`. Counts at most 32 days back: four whole weeks, over which
/// validation checks that a rule's threshold can accrue.
pub fn active_ms<Tz: TimeZone>(tz: &Tz, w: &ActiveWindow, from_ms: u64, to_ms: u64) -> u64 {
    let from_ms = from_ms.max(to_ms.saturating_sub(32 * DAY_MS));
    if from_ms >= to_ms {
        return 0;
    }
    if w.start_min == w.end_min && w.days.iter().all(|d| *d) {
        return to_ms - from_ms;
    }
    let (Some(first), Some(last)) = (local_date(tz, from_ms), local_date(tz, to_ms)) else {
        return to_ms - from_ms;
    };
    // A window may open the day before `from` and span midnight.
    let mut day = first.checked_sub_days(Days::new(1)).unwrap_or(first);
    let mut total = 0;
    while day <= last {
        if w.days[day.weekday().num_days_from_monday() as usize] {
            let open = at(tz, day, w.start_min);
            let close_day = if w.end_min > w.start_min {
                Some(day)
            } else {
                day.checked_add_days(Days::new(1))
            };
            if let (Some(open), Some(close)) = (open, close_day.and_then(|d| at(tz, d, w.end_min)))
            {
                let (a, b) = (open.max(from_ms), close.min(to_ms));
                total += b.saturating_sub(a);
            }
        }
        match day.checked_add_days(Days::new(1)) {
            Some(d) => day = d,
            None => break,
        }
    }
    total
}

fn local_date<Tz: TimeZone>(tz: &Tz, ms: u64) -> Option<NaiveDate> {
    let ms = i64::try_from(ms).ok()?;
    Some(tz.timestamp_millis_opt(ms).single()?.date_naive())
}

/// Unix ms of `minute` past local midnight of `day`. In a DST gap the
/// minute does not exist: the same wall-clock time an hour later is used
/// (the window opens up to an hour late once a year); in the autumn fold
/// the earlier of the two instants.
fn at<Tz: TimeZone>(tz: &Tz, day: NaiveDate, minute: u32) -> Option<u64> {
    let naive: NaiveDateTime = day.and_hms_opt(minute / 60, minute % 60, 0)?;
    let local = tz.from_local_datetime(&naive).earliest().or_else(|| {
        tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
    })?;
    u64::try_from(local.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    const H: u64 = 3_600_000;

    fn window(start: u32, end: u32, days: [bool; 7]) -> ActiveWindow {
        ActiveWindow {
            start_min: start * 60,
            end_min: end * 60,
            days,
        }
    }

    fn ms(y: i32, m: u32, d: u32, h: u32) -> u64 {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn weekday_daytime_window() {
        let weekdays = [true, true, true, true, true, false, false];
        let w = window(7, 19, weekdays);
        // 2026-11-20 is a Friday, 2026-11-23 a Monday.
        let friday_18 = ms(2026, 11, 20, 18);
        let monday_09 = ms(2026, 11, 23, 9);
        assert_eq!(active_ms(&Utc, &w, friday_18, monday_09), 3 * H);
        // Within one window.
        assert_eq!(active_ms(&Utc, &w, ms(2026, 11, 23, 8), monday_09), H);
        // Entirely outside.
        assert_eq!(
            active_ms(&Utc, &w, ms(2026, 11, 21, 8), ms(2026, 11, 21, 20)),
            0
        );
    }

    #[test]
    fn night_window_spans_midnight() {
        let w = window(22, 6, [true; 7]);
        assert_eq!(
            active_ms(&Utc, &w, ms(2026, 11, 23, 12), ms(2026, 11, 24, 12)),
            8 * H
        );
        assert_eq!(
            active_ms(&Utc, &w, ms(2026, 11, 24, 1), ms(2026, 11, 24, 3)),
            2 * H
        );
    }

    #[test]
    fn whole_days_and_time_zones() {
        assert_eq!(
            active_ms(&Utc, &window(0, 0, [true; 7]), 5, 5 + 7 * H),
            7 * H
        );
        // Local 07:00-19:00 at UTC+2 is 05:00-17:00 UTC.
        let tz = FixedOffset::east_opt(2 * 3600).unwrap();
        let w = window(7, 19, [true; 7]);
        assert_eq!(
            active_ms(&tz, &w, ms(2026, 11, 23, 0), ms(2026, 11, 23, 6)),
            H
        );
        // Nothing counts further back than 32 days.
        assert_eq!(
            active_ms(&Utc, &window(0, 0, [true; 7]), 0, 40 * 24 * H),
            32 * 24 * H
        );
        assert_eq!(active_ms(&Utc, &w, 10, 5), 0);
    }
}
