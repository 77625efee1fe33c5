//! Pacing what an SCU sends: a token bucket shared by every association
//! (and upload) of one target, so that a target's `max_bandwidth` caps the
//! bytes it puts on the link in all.
//!
//! The bucket runs on debt: a write of n bytes takes n tokens at once and
//! the writer then sleeps for as long as the bucket is below zero, so a
//! large block is never split and the average over any few seconds is the
//! rate. Tokens accrue at the current rate up to [`BURST`] worth of it. The
//! rate is asked of a function each time (a schedule by time of day); None
//! means unlimited, and then the bucket is kept full.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much sending the bucket may store up while idle.
pub const BURST: Duration = Duration::from_millis(100);

/// The rate now, in bytes per second (None: unlimited).
pub type RateFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// A shared token bucket.
pub struct Pacer {
    rate: RateFn,
    state: Mutex<(f64, Instant)>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("rate", &(self.rate)())
            .finish()
    }
}

impl Pacer {
    /// A bucket whose rate `rate` says.
    pub fn new(rate: RateFn) -> Arc<Self> {
        Arc::new(Pacer {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        })
    }

    /// The rate now (bytes per second; None: unlimited).
    pub fn rate(&self) -> Option<u64> {
        (self.rate)()
    }

    /// Take `bytes`; how long the caller must wait before sending more.
    pub fn take_at(&self, bytes: usize, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rate) = self.rate().filter(|r| *r > 0) else {
            *s = (0.0, now);
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let (tokens, at) = *s;
        let cap = rate * BURST.as_secs_f64();
        let tokens = (tokens + rate * now.saturating_duration_since(at).as_secs_f64()).min(cap)
            - bytes as f64;
        *s = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / rate)
        }
    }

    /// Take `bytes`, and sleep while the bucket is in debt.
    pub async fn take(&self, bytes: usize) {
        let wait = self.take_at(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_is_the_rate_and_none_is_unlimited() {
        let p = Pacer::new(Arc::new(|| Some(1_000_000)));
        let t0 = Instant::now();
        // 10 MB in 64 KiB writes, each sent when the bucket says: 10 s.
        let mut now = t0;
        let mut sent = 0usize;
        while sent < 10_000_000 {
            now += p.take_at(65_536, now);
            sent += 65_536;
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((9.9..10.1).contains(&secs), "{secs}");
        let free = Pacer::new(Arc::new(|| None));
        assert_eq!(free.take_at(1 << 30, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn idle_time_stores_at_most_a_burst() {
        let p = Pacer::new(Arc::new(|| Some(1_000_000)));
        let t0 = Instant::now();
        p.take_at(1, t0);
        // an hour idle: only 100 ms worth (100 kB) may go at once
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(p.take_at(100_000, later), Duration::ZERO);
        let w = p.take_at(100_000, later);
        assert!((w.as_secs_f64() - 0.1).abs() < 0.01, "{w:?}");
    }
}
