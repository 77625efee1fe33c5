//! Rates shown by `/status` and the console: objects and bytes per unit of
//! time over the last minute, from counters that only grow (ingest since
//! start, deliveries since start).
//!
//! A [`Meter`] keeps a few samples of one counter (at most one per second,
//! none older than the window but the one before it, as the baseline); the
//! admin endpoint samples every few seconds and at each request, so a rate
//! is there from the second sample on. In memory only; after a restart the
//! rates start again (the counters do too).

use std::collections::VecDeque;
use std::sync::Mutex;

/// The window rates are averaged over.
pub const WINDOW_MS: u64 = 60_000;

/// Samples of one counter.
#[derive(Debug, Default)]
pub struct Meter {
    samples: Mutex<VecDeque<(u64, u64)>>,
}

impl Meter {
    /// Record `value` at `now_ms` (ignored within a second of the last
    /// sample; a counter that went back — a restart of what it counts —
    /// starts the meter again).
    pub fn sample(&self, now_ms: u64, value: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(t, v)) = s.back() {
            if value < v || now_ms < t {
                s.clear();
            } else if now_ms < t + 1_000 {
                return;
            }
        }
        s.push_back((now_ms, value));
        // Keep one sample at or before the window's start as the baseline.
        while s.len() > 2 && s.get(1).is_some_and(|&(t, _)| t + WINDOW_MS <= now_ms) {
            s.pop_front();
        }
    }

    /// The increase per second over the samples held (None until two
    /// samples a second apart).
    pub fn per_sec(&self) -> Option<f64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (&(t0, v0), &(t1, v1)) = (s.front()?, s.back()?);
        (t1 >= t0 + 1_000).then(|| (v1 - v0) as f64 * 1000.0 / (t1 - t0) as f64)
    }
}

/// A counter's objects and bytes.
#[derive(Debug, Default)]
pub struct Pair {
    /// Objects.
    pub objects: Meter,
    /// Bytes.
    pub bytes: Meter,
}

impl Pair {
    /// Sample both.
    pub fn sample(&self, now_ms: u64, objects: u64, bytes: u64) {
        self.objects.sample(now_ms, objects);
        self.bytes.sample(now_ms, bytes);
    }

    /// (objects per minute, bytes per second), rounded.
    pub fn rates(&self) -> (Option<u64>, Option<u64>) {
        (
            self.objects.per_sec().map(|r| (r * 60.0).round() as u64),
            self.bytes.per_sec().map(|r| r.round() as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_last_minute() {
        let m = Meter::default();
        assert_eq!(m.per_sec(), None);
        m.sample(0, 0);
        m.sample(500, 50); // within a second: ignored
        assert_eq!(m.per_sec(), None);
        m.sample(2_000, 20);
        assert_eq!(m.per_sec(), Some(10.0));
        // a busy first minute, then a quiet one: the rate falls to the
        // quiet one as the window moves on
        for t in 1..=60 {
            m.sample(2_000 + t * 1_000, 20 + t * 100);
        }
        for t in 1..=61 {
            m.sample(62_000 + t * 1_000, 6_020 + t);
        }
        let r = m.per_sec().unwrap();
        assert!((r - 1.0).abs() < 0.1, "{r}");
        // a counter that went back starts again
        m.sample(200_000, 3);
        assert_eq!(m.per_sec(), None);
    }

    #[test]
    fn pair_in_objects_per_minute_and_bytes_per_second() {
        let p = Pair::default();
        p.sample(0, 0, 0);
        p.sample(10_000, 5, 1_000_000);
        assert_eq!(p.rates(), (Some(30), Some(100_000)));
    }
}
